"""End-to-end runs of the HunyuanVideo and Mochi pipelines, whose family rules were written by reading
their sources.

A tiny HunyuanVideoPipeline and a tiny MochiPipeline (random transformers, no text encoders: the
prompt embeddings, pooled embeddings and attention masks are passed in) run 3 steps on CPU; each
step's latent is captured by ``callback_on_step_end`` and stored as experiments store it, the real
CLI decodes them, and the last step must give back the pipeline's own output frames while the first
(noisier) step must not. Mochi's VAE has random per-channel ``latents_mean``/``latents_std`` and a
scaling factor far from 1, so its de-normalisation is exercised in full.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from latent_decoder.experiment import VideoSettings

from family_harness import FPS, assert_run_decodes_to_its_own_frames, capture, tiny_hunyuan_vae, tiny_mochi_vae

STEPS = 3








def test_tiny_hunyuan_video_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """HunyuanVideoPipeline: float32 loop latents ``[1, C, T, H, W]``, ``latents.to(vae.dtype) /
    scaling_factor`` (guidance-distilled: ``guidance_scale`` goes into the transformer)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    vae = tiny_hunyuan_vae(21)
    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    video = VideoSettings(width=48, height=32, fps=FPS, frames=9)
    g = torch.Generator().manual_seed(1)
    captured: list[np.ndarray] = []
    with torch.inference_mode():
        out = pipe(prompt_embeds=torch.randn(1, 8, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 8, generator=g),
                   prompt_attention_mask=torch.ones(1, 8), height=video.height, width=video.width,
                   num_frames=video.frames, num_inference_steps=STEPS, callback_on_step_end=capture(captured),
                   output_type="np", generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in captured] == [(1, 4, 3, 4, 6)] * STEPS
    assert_run_decodes_to_its_own_frames(tmp_path, vae, "HunyuanVideoPipeline", captured, video, out, "hunyuanvideo")


def test_tiny_mochi_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """MochiPipeline: loop latents in ``prompt_embeds.dtype``, ``latents * latents_std / scaling_factor
    + latents_mean`` from the VAE config."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    vae = tiny_mochi_vae(22)
    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1, pooled_projection_dim=16,
        in_channels=12, text_embed_dim=32, time_embed_dim=4, activation_fn="swiglu", max_sequence_length=16,
    ).eval()
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    video = VideoSettings(width=48, height=32, fps=FPS, frames=7)
    captured: list[np.ndarray] = []
    with torch.inference_mode():
        out = pipe(prompt_embeds=torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1)),
                   prompt_attention_mask=torch.ones(1, 16), height=video.height, width=video.width,
                   num_frames=video.frames, num_inference_steps=STEPS, guidance_scale=1.0,
                   callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in captured] == [(1, 12, 2, 4, 6)] * STEPS
    assert_run_decodes_to_its_own_frames(tmp_path, vae, "MochiPipeline", captured, video, out, "mochi")
