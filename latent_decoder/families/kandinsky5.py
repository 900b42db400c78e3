"""Kandinsky 5 T2V / I2V (``AutoencoderKLHunyuanVideo``: HunyuanVideo's VAE, another layout).

Mirrors ``pipelines/kandinsky5/pipeline_kandinsky.py`` and ``pipeline_kandinsky_i2v.py``: the loop
latents are channels last, ``[B, T, H, W, C]``, with ``2C + 1`` channels when the transformer has
``visual_cond`` (latent, visual condition, mask). After the loop the pipeline keeps
``latents[..., :C]``, casts to ``vae.dtype``, permutes to ``[B, C, T, H, W]``, divides by
``scaling_factor`` and calls ``vae.decode``. Before the cast the I2V pipeline renormalises the
first four latent frames to the mean/std of the next ones (``normalize_first_frame``) in the loop's
dtype (the transformer's: the VAE's, as pipelines are loaded). It fails with one latent frame and
makes NaN with 2-4 (no reference frames): such latents are decoded without it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..latents import Layout
from .base import (DecodeContext, Family, config_spatial_ratio, config_temporal_ratio, divide_by_scaling_factor,
                    latent_channels)

if TYPE_CHECKING:
    import torch

BTHWC = Layout("BTHWC")  # Kandinsky 5: channels last
FIRST_FRAMES = 4  # normalize_first_frame's nFr
REFERENCE_FRAMES = 5  # its reference_frames


def _channels_first(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents[..., :C]`` as ``[B, C, T, H, W]`` (the pipeline's reshape + permute)."""
    return z[..., :ctx.config.latent_channels].permute(0, 4, 1, 2, 3)


def normalize_first_frames(z: "torch.Tensor") -> "torch.Tensor":
    """``normalize_first_frame`` / ``adaptive_mean_std_normalization`` on ``[B, T, H, W, C]``, same
    operations in the same order; unchanged when there is no reference frame."""
    import torch

    if z.shape[1] <= FIRST_FRAMES:
        return z
    first = z[:, :FIRST_FRAMES]
    reference = z[:, FIRST_FRAMES:FIRST_FRAMES + min(REFERENCE_FRAMES, z.shape[1] - 1)]
    mean = first.mean(dim=(1, 2, 3, 4), keepdim=True)
    std = first.std(dim=(1, 2, 3, 4), keepdim=True)
    reference_mean = torch.clamp(reference.mean(), mean - 0.05, mean + 0.1)
    reference_std = torch.clamp(reference.std(), std - 0.1, std + 0.25)
    normalized = (first - mean) / std
    return torch.cat([normalized * reference_std + reference_mean, z[:, FIRST_FRAMES:]], dim=1)


def _i2v_channels_first(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    z = normalize_first_frames(z[..., :ctx.config.latent_channels].to(ctx.dtype))
    return z.permute(0, 4, 1, 2, 3)


KANDINSKY5 = Family(
    name="kandinsky5",
    label="Kandinsky 5",
    mirrors="diffusers.Kandinsky5T2VPipeline (pipelines/kandinsky5/pipeline_kandinsky.py)",
    vae_classes=("AutoencoderKLHunyuanVideo",),
    pipelines=("Kandinsky5T2VPipeline",),
    layout=BTHWC,
    channels=latent_channels,
    temporal_factor=config_temporal_ratio,
    spatial_factor=config_spatial_ratio,
    denormalize=divide_by_scaling_factor,
    to_grid=_channels_first,
    stored_channels=lambda c: (c, 2 * c + 1),
    flow_matching=True,  # FlowMatchEulerDiscreteScheduler
)

KANDINSKY5_I2V = replace(
    KANDINSKY5, name="kandinsky5-i2v", label="Kandinsky 5 I2V",
    mirrors="diffusers.Kandinsky5I2VPipeline (pipelines/kandinsky5/pipeline_kandinsky_i2v.py, normalize_first_frame)",
    pipelines=("Kandinsky5I2VPipeline",),
    to_grid=_i2v_channels_first,
    note=f"the first {FIRST_FRAMES} latent frames take the mean/std of the next ones (normalize_first_frame)",
)
