"""Mochi 1 (``AutoencoderKLMochi``).

Mirrors ``pipelines/mochi/pipeline_mochi.py``: with ``latents_mean``/``latents_std`` in the VAE
config, ``latents * latents_std / scaling_factor + latents_mean``, else ``latents / scaling_factor``,
in the loop's dtype (``prompt_embeds.dtype``: the VAE's, as pipelines are loaded), then ``vae.decode``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..latents import BCTHW
from .base import DecodeContext, Family, PreviewSpace, channel_stats, latent_channels

if TYPE_CHECKING:
    import torch


def _denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    c = ctx.config
    if getattr(c, "latents_mean", None) is None or getattr(c, "latents_std", None) is None:
        return z / c.scaling_factor
    return (z * channel_stats(c.latents_std, z, c.latent_channels) / c.scaling_factor
            + channel_stats(c.latents_mean, z, c.latent_channels))


def _prod(values: Any) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


MOCHI_SPACE = PreviewSpace("mochi", "Mochi", "AutoencoderKLMochi", BCTHW, 12, 6, 8)

MOCHI = Family(
    name="mochi",
    label="Mochi",
    mirrors="diffusers.MochiPipeline (pipelines/mochi/pipeline_mochi.py)",
    vae_classes=("AutoencoderKLMochi",),
    pipelines=("MochiPipeline",),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=lambda vae: _prod(vae.config.temporal_expansions),
    spatial_factor=lambda vae: _prod(vae.config.spatial_expansions),
    denormalize=_denormalize,
    flow_matching=True,
    previews=(MOCHI_SPACE,),
    model_ids=("mochi",),
)
