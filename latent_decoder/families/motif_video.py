"""Motif-Video T2V / I2V (``MotifVideoPipeline``, ``MotifVideoImage2VideoPipeline``; ``AutoencoderKLWan``).

Mirrors ``pipelines/motif_video/pipeline_motif_video.py``: ``latents.to(vae.dtype)``, then
``_denormalize_latents``: ``latents * latents_std + latents_mean`` (config lists, in that dtype),
then ``vae.decode``. Wan's pipelines divide by the reciprocal instead, which rounds otherwise in
bfloat16/float16, hence a rule of its own. The I2V pipeline concatenates its image condition into
the transformer's input only: the loop latent is the video's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..latents import BCTHW
from .base import DecodeContext, Family, channel_stats
from .wan import _spatial, _temporal, _z_dim

if TYPE_CHECKING:
    import torch


def denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents * latents_std + latents_mean``, in ``z``'s dtype."""
    c = ctx.config
    return z * channel_stats(c.latents_std, z, c.z_dim) + channel_stats(c.latents_mean, z, c.z_dim)


MOTIF_VIDEO = Family(
    name="motif-video",
    label="Motif-Video",
    mirrors="diffusers.MotifVideoPipeline (pipelines/motif_video/pipeline_motif_video.py: _denormalize_latents)",
    vae_classes=("AutoencoderKLWan",),
    pipelines=("MotifVideoPipeline", "MotifVideoImage2VideoPipeline"),
    layout=BCTHW,
    channels=_z_dim,
    temporal_factor=_temporal,
    spatial_factor=_spatial,
    denormalize=denormalize,
)
