"""Allegro (``AutoencoderKLAllegro``).

Mirrors ``pipelines/allegro/pipeline_allegro.py``: ``latents.to(vae.dtype)``, then ``decode_latents``:
``1 / scaling_factor * latents``, ``vae.decode(latents).sample``, which is frames first and permuted
``(0, 2, 1, 3, 4)``, then ``video[:, :, :num_frames, :height, :width]``. The VAE decodes only tiled
(``_decode`` raises otherwise; the pipeline's example calls ``vae.enable_tiling()``), so this rule
turns tiling on for its VAE. ``prepare_latents`` makes ``ceil(num_frames / 4)`` latent frames for an
even ``num_frames``, ``ceil((num_frames - 1) / 4) + 1`` for an odd one; each decodes to 4 frames.
Tiles are 24 frames (6 latent frames, stride 4): latent frames past the last whole tile decode to
zeros (gray), as in the pipeline.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..latents import BCTHW
from .base import DecodeContext, Family, latent_channels, spatial_ratio

if TYPE_CHECKING:
    import torch


def _denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    return 1 / ctx.config.scaling_factor * z


def _decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    if not ctx.vae.use_tiling:
        ctx.vae.enable_tiling()
    video = ctx.vae.decode(z, return_dict=False)[0].permute(0, 2, 1, 3, 4)
    v = ctx.video
    return video[:, :, :v.frames, :v.height, :v.width]


def _frames(t: int, ctx: DecodeContext, factor: int) -> int:
    """``t * factor`` frames, cropped to the video's ``num_frames`` when the config gives it."""
    frames = ctx.video.frames
    return t * factor if frames is None else min(t * factor, frames)


def _temporal(vae: Any) -> int:
    return int(vae.config.temporal_compression_ratio)


ALLEGRO = Family(
    name="allegro",
    label="Allegro",
    mirrors="diffusers.AllegroPipeline (pipelines/allegro/pipeline_allegro.py, decode_latents)",
    vae_classes=("AutoencoderKLAllegro",),
    pipelines=("AllegroPipeline",),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=_temporal,
    spatial_factor=spatial_ratio,
    denormalize=_denormalize,
    decode=_decode,
    decoded_frames=_frames,
    note="decoded tiled (24-frame tiles): latent frames past the last whole tile are gray, as in the pipeline",
)
