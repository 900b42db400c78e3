"""Latte (``AutoencoderKL`` per frame).

Mirrors ``pipelines/latte/pipeline_latte.py``: loop latents ``[B, C, F, H, W]`` in the text
encoder's dtype (the VAE's, as pipelines are loaded); ``decode_latents`` moves the frames into the
batch, multiplies by ``1 / scaling_factor`` and decodes ``decode_chunk_size`` frames at a time (14 by
default; ``num_frames`` is passed only to a VAE whose ``forward`` takes it, which ``AutoencoderKL``'s
does not).
"""
from __future__ import annotations

from ..latents import BCTHW
from .base import Family, latent_channels
from .image_vae import SD15_SPACE, TAESD, chunked, image_spatial_ratio, one_frame_per_latent_frame, times_inverse_scaling_factor

DECODE_CHUNK_SIZE = 14  # LattePipeline.__call__'s default

LATTE = Family(
    name="latte",
    label="Latte",
    mirrors="diffusers.LattePipeline (pipelines/latte/pipeline_latte.py: decode_latents)",
    vae_classes=("AutoencoderKL",),
    pipelines=("LattePipeline",),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=one_frame_per_latent_frame,
    spatial_factor=image_spatial_ratio,
    denormalize=times_inverse_scaling_factor,
    decode=chunked(DECODE_CHUNK_SIZE),
    reads=("decode_chunk_size",),
    previews=(SD15_SPACE,),
    model_ids=(r"(^|/)latte",),
    tiny=(TAESD,),
)
