"""Sana-WM (``SanaWMPipeline``; ``AutoencoderKLLTX2Video``, LTX-2's VAE).

Mirrors ``pipelines/sana_wm/pipeline_sana_wm.py`` (``_decode_latents``): the loop's latents are
``[B, C, T, H, W]`` (not packed; the first latent frame is the image's, held clean by the loop);
``latents.to(vae.dtype)``, then ``latents / scaling_factor * latents_std + latents_mean`` with the
VAE's buffers, then ``vae.decode(latents)`` without a timestep. LTX-2 packs its latents and mixes
decode noise; Sana-Video uses no scaling factor: each needs its own rule on the same VAE.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..latents import BCTHW
from .base import DecodeContext, Family, latent_channels, spatial_ratio, temporal_ratio

if TYPE_CHECKING:
    import torch


def denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents / scaling_factor * latents_std + latents_mean`` (VAE buffers), in ``z``'s dtype."""
    vae = ctx.vae
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(z)
    return z / ctx.config.scaling_factor * std + mean


SANA_WM = Family(
    name="sana-wm",
    label="Sana-WM",
    mirrors="diffusers.SanaWMPipeline (pipelines/sana_wm/pipeline_sana_wm.py: _decode_latents)",
    vae_classes=("AutoencoderKLLTX2Video",),
    pipelines=("SanaWMPipeline",),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=temporal_ratio,
    spatial_factor=spatial_ratio,
    denormalize=denormalize,
)
