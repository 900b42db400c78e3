"""AnimateDiff, AnimateDiff-SDXL and PIA (``AutoencoderKL`` per frame).

Mirrors ``pipelines/animatediff/pipeline_animatediff.py`` (and the ControlNet, video-to-video and
video-to-video ControlNet pipelines, whose ``decode_latents`` is the same): loop latents
``[B, C, F, H, W]`` in the UNet's dtype, ``1 / scaling_factor * latents``, the frames decoded 16 at
a time (``decode_chunk_size``). ``pipeline_animatediff_sparsectrl.py`` and
``deprecated/pia/pipeline_pia.py`` decode all frames in one call (TextToVideoSDPipeline's lines).
These pipelines load a Stable Diffusion 1.5 checkpoint with a motion adapter, so the model folder
usually names ``StableDiffusionPipeline``.

``pipeline_animatediff_sdxl.py`` decodes all frames in one call too, after ``needs_upcasting``: a
float16 VAE whose config says ``force_upcast`` (the SDXL VAE's, not the fp16-fix one's) is upcast,
the latents cast to ``post_quant_conv``'s dtype, and the VAE cast back to float16 after decoding.
Its own ``upcast_vae`` keeps ``post_quant_conv``, ``decoder.conv_in`` and ``decoder.mid_block`` in
float16, which diffusers 0.42.1's decoder no longer casts out of (the float32 up-blocks then fail on
a float16 input); the rule does what ``StableDiffusionXLPipeline.upcast_vae`` now does instead, the
whole VAE in float32, so the latents are scaled and decoded in float32.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..latents import BCTHW
from .base import DecodeContext, Family, latent_channels
from .image_vae import (SD15_SPACE, SDXL_SPACE, TAESD, TAESDXL, decode_per_frame, image_spatial_ratio, one_frame_per_latent_frame,
                        times_inverse_scaling_factor)

if TYPE_CHECKING:
    import torch

DECODE_CHUNK_SIZE = 16  # AnimateDiffPipeline.__call__'s default
ONE_CALL = ("AnimateDiffSparseControlNetPipeline", "PIAPipeline")  # decode_latents without a chunk size


def _decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    chunk = None if ctx.pipeline.class_name in ONE_CALL else DECODE_CHUNK_SIZE
    return decode_per_frame(z, ctx, chunk)


def needs_upcasting(ctx: DecodeContext) -> bool:
    import torch

    return ctx.dtype == torch.float16 and bool(ctx.config.force_upcast)


def _upcast_denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents.to(post_quant_conv's dtype)`` (float32 once upcast), then ``1 / scaling_factor *``."""
    return times_inverse_scaling_factor(z.float() if needs_upcasting(ctx) else z, ctx)


def upcast_decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """The one-call decode, on the VAE upcast to float32 and cast back after when it needs upcasting."""
    if not needs_upcasting(ctx):
        return decode_per_frame(z, ctx)
    ctx.vae.float()  # ModelMixin.float: .to(dtype) logs a warning on every call
    try:
        return decode_per_frame(z, ctx)
    finally:
        ctx.vae.half()


ANIMATEDIFF = Family(
    name="animatediff",
    label="AnimateDiff",
    mirrors="diffusers.AnimateDiffPipeline (pipelines/animatediff/pipeline_animatediff.py: decode_latents)",
    vae_classes=("AutoencoderKL",),
    pipelines=("AnimateDiffPipeline", "AnimateDiffControlNetPipeline", "AnimateDiffSparseControlNetPipeline",
               "AnimateDiffVideoToVideoPipeline", "AnimateDiffVideoToVideoControlNetPipeline", "PIAPipeline",
               # pipelines/pag/pipeline_pag_sd_animatediff.py: the same decode_latents (16 frames a call)
               "AnimateDiffPAGPipeline",
               "StableDiffusionPipeline"),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=one_frame_per_latent_frame,
    spatial_factor=image_spatial_ratio,
    denormalize=times_inverse_scaling_factor,
    decode=_decode,
    reads=("decode_chunk_size",),
    previews=(SD15_SPACE,),
    model_ids=("animatediff", r"(^|/)pia\b", "stable-diffusion-v1"),
    tiny=(TAESD,),
)

ANIMATEDIFF_SDXL = replace(
    ANIMATEDIFF, name="animatediff-sdxl", label="AnimateDiff-SDXL",
    mirrors="diffusers.AnimateDiffSDXLPipeline (pipelines/animatediff/pipeline_animatediff_sdxl.py: upcast_vae, "
            "decode_latents)",
    pipelines=("AnimateDiffSDXLPipeline", "StableDiffusionXLPipeline"),
    denormalize=_upcast_denormalize,
    decode=upcast_decode,
    note="with --dtype float16 and the VAE's force_upcast (the SDXL VAE's) the latents are scaled and decoded "
         "in float32, as StableDiffusionXLPipeline's upcast_vae does (AnimateDiffSDXLPipeline's own partial "
         "upcast fails in diffusers 0.42.1)",
    previews=(SDXL_SPACE,),
    model_ids=(r"animatediff.*sdxl", "stable-diffusion-xl", "sdxl"),
    tiny=(TAESDXL,),
)
