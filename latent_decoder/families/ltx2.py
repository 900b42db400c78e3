"""LTX-2 (``AutoencoderKLLTX2Video`` under the LTX-2 pipelines).

Mirrors ``pipelines/ltx2/pipeline_ltx2.py`` (and ``pipeline_ltx2_image2video.py``,
``pipeline_ltx2_condition.py``, ``pipeline_ltx2_ic_lora.py``, whose decode lines are the same): the
loop's float32 latents are packed tokens ``[B, T*H*W, C*p_t*p*p]`` (``p``, ``p_t``: the transformer's
patch sizes, 1 in the released models); the condition and IC-LoRA pipelines append keyframe/reference
tokens and drop them first (``latents[:, :base_token_count]``); ``_unpack_latents``; then
``latents.to(prompt_embeds.dtype)`` (the VAE's, as pipelines are loaded) BEFORE the rest; with
``timestep_conditioning`` the noise mix ``(1 - s) * latents + s * noise`` comes BEFORE de-normalising
(LTX-Video mixes after); ``_denormalize_latents`` (``latents * latents_std / scaling_factor +
latents_mean``, VAE buffers); ``vae.decode(latents, timestep)``. Sana-Video decodes this VAE otherwise.
The modular ``LTX2ModularPipeline`` (``modular_pipelines/ltx2/decoders.py``: ``LTX2TrimConditionTokensStep``,
``LTX2VaeDecoderStep``) decodes with the same lines.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..latents import BSC
from .base import DecodeContext, Family, TinySpace, causal_grid, latent_channels, spatial_ratio, temporal_ratio
from .ltx_video import buffer_denormalize, decode_timestep, mix_decode_noise, unpack

if TYPE_CHECKING:
    import torch

# The packed channel counts C * p_t * p * p a stored latent may have; the transformer config picks one.
PATCH_VOLUMES = tuple(sorted({t * p * p for t in (1, 2, 4) for p in (1, 2, 4)}))


def _patches(ctx: DecodeContext) -> tuple[int, int]:
    """The transformer's ``(patch_size, patch_size_t)``, 1 without a transformer config (as the pipeline)."""
    t = ctx.pipeline.transformer
    return int(t.get("patch_size") or 1), int(t.get("patch_size_t") or 1)


def token_grid(ctx: DecodeContext) -> tuple[int, int, int]:
    """The token grid ``_pack_latents`` makes of the pipeline's latent grid."""
    t, h, w = causal_grid(ctx, ctx.vae.temporal_compression_ratio, ctx.vae.spatial_compression_ratio)
    p, p_t = _patches(ctx)
    return t // p_t, h // p, w // p


def to_grid(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """Drop appended condition tokens, then ``_unpack_latents`` (the inverse of ``_pack_latents``)."""
    t, h, w = token_grid(ctx)
    p, p_t = _patches(ctx)
    return unpack(z[:, :t * h * w], (t, h, w), p, p_t)


def denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """The decode-noise mix (timestep-conditioned VAEs), then ``_denormalize_latents``."""
    if ctx.config.timestep_conditioning:
        z = mix_decode_noise(z, ctx)
    return buffer_denormalize(z, ctx)


def decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``vae.decode(latents, timestep)``: ``decode_timestep`` per video, or ``None`` without timestep conditioning."""
    timestep = decode_timestep(z, ctx) if ctx.config.timestep_conditioning else None
    return ctx.vae.decode(z, timestep, return_dict=False)[0]


LTX2 = Family(
    name="ltx2",
    label="LTX-2",
    mirrors="diffusers.LTX2Pipeline (pipelines/ltx2/pipeline_ltx2.py: _unpack_latents, decode noise, "
            "_denormalize_latents, decode_timestep)",
    vae_classes=("AutoencoderKLLTX2Video",),
    pipelines=("LTX2Pipeline", "LTX2ImageToVideoPipeline"),
    layout=BSC,
    channels=latent_channels,
    temporal_factor=temporal_ratio,
    spatial_factor=spatial_ratio,
    denormalize=denormalize,
    to_grid=to_grid,
    decode=decode,
    token_grid=token_grid,
    needs=("frames", "height", "width"),
    stored_channels=lambda c: tuple(c * v for v in PATCH_VOLUMES),
    flow_matching=True,
    reads=("decode_timestep", "decode_noise_scale"),
    model_ids=("ltx-?2",),  # another VAE than LTX-Video's, without published preview factors
    # LTX-2.3 retrained the VAE: its own files (taeltx2_3_wide: less blurry, larger)
    tiny=(TinySpace(("taeltx2_3", "taeltx2_3_wide"), 128, model_ids=(r"ltx-?2\.3",)), TinySpace(("taeltx_2",), 128)),
)

LTX2_CONDITIONED = replace(
    LTX2, name="ltx2-conditioned", label="LTX-2 (keyframe/IC-LoRA conditions)",
    mirrors="diffusers.LTX2ConditionPipeline, LTX2InContextPipeline (pipelines/ltx2/pipeline_ltx2_condition.py, "
            "pipeline_ltx2_ic_lora.py): LTX2Pipeline's decode after latents[:, :base_token_count]",
    pipelines=("LTX2ConditionPipeline", "LTX2InContextPipeline", "LTX2ModularPipeline"),
    extra_tokens=True,
    note="tokens past the video's T*H*W (appended keyframe/reference conditions) are dropped, as the pipeline does",
)
