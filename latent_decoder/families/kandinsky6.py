"""Kandinsky 6 T2VA / TI2VA (``Kandinsky6TI2VAPipeline``; ``AutoencoderKLHunyuanVideo``, HunyuanVideo's VAE).

Mirrors ``pipelines/kandinsky6/pipeline_kandinsky6_ti2va.py``: the loop latents are channels last,
``[B, T, H, W, C]``, with exactly ``C`` channels (unlike Kandinsky 5, the visual condition and mask
are concatenated only into the transformer's input). With a reference image the pipeline appends
its clean latent as one more, masked, latent frame at the end, and drops it after the loop
(``latents[:, :-1]``); then it permutes to ``[B, C, T, H, W]``, casts to ``vae.dtype`` and divides
by ``scaling_factor``. A stored latent with one latent frame more than ``video_settings.frames``
gives is such a run's, and loses that frame here too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (DecodeContext, Family, config_spatial_ratio, config_temporal_ratio, divide_by_scaling_factor,
                   latent_channels)
from .kandinsky5 import BTHWC

if TYPE_CHECKING:
    import torch


def _channels_first(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """The appended reference frame dropped (when ``video_settings.frames`` says there is one), then permuted."""
    frames = ctx.video.frames
    if frames is not None and z.shape[1] == (frames - 1) // ctx.config.temporal_compression_ratio + 2:
        z = z[:, :-1]
    return z.permute(0, 4, 1, 2, 3)


KANDINSKY6 = Family(
    name="kandinsky6",
    label="Kandinsky 6",
    mirrors="diffusers.Kandinsky6TI2VAPipeline (pipelines/kandinsky6/pipeline_kandinsky6_ti2va.py)",
    vae_classes=("AutoencoderKLHunyuanVideo",),
    pipelines=("Kandinsky6TI2VAPipeline",),
    layout=BTHWC,
    channels=latent_channels,
    temporal_factor=config_temporal_ratio,
    spatial_factor=config_spatial_ratio,
    denormalize=divide_by_scaling_factor,
    to_grid=_channels_first,
    flow_matching=True,  # FlowMatchEulerDiscreteScheduler (or PiflowScheduler)
    note="an image-conditioned run's appended reference frame (one latent frame more than video_settings.frames "
         "gives) is dropped, as the pipeline does; without video_settings.frames it is decoded as a frame",
)
