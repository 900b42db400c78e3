"""EasyAnimate (``AutoencoderKLMagvit``).

Mirrors ``pipelines/easyanimate/pipeline_easyanimate.py`` and ``pipeline_easyanimate_inpaint.py``:
no cast: the loop's latents (in the text encoder's dtype, else the transformer's: the VAE's, as
pipelines are loaded) become ``1 / scaling_factor * latents`` and go to ``vae.decode``, which decodes
the first latent frame alone and every other one into ``temporal_compression_ratio`` frames.
``EasyAnimateControlPipeline`` (``pipeline_easyanimate_control.py``) calls a ``decode_latents`` that
diffusers 0.42.1 does not define, so it decodes only with ``output_type="latent"``; its latents are
the same VAE's and take the same formula.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..latents import BCTHW
from .base import DecodeContext, Family, latent_channels, spatial_ratio, temporal_ratio

if TYPE_CHECKING:
    import torch


def _denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    return 1 / ctx.config.scaling_factor * z


EASYANIMATE = Family(
    name="easyanimate",
    label="EasyAnimate",
    mirrors="diffusers.EasyAnimatePipeline (pipelines/easyanimate/pipeline_easyanimate.py)",
    vae_classes=("AutoencoderKLMagvit",),
    pipelines=("EasyAnimatePipeline", "EasyAnimateInpaintPipeline", "EasyAnimateControlPipeline"),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=temporal_ratio,
    spatial_factor=spatial_ratio,
    denormalize=_denormalize,
    flow_matching=True,  # FlowMatchEulerDiscreteScheduler
)
