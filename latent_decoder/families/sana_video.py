"""Sana-Video (``AutoencoderKLWan`` or ``AutoencoderKLLTX2Video``).

Mirrors ``pipelines/sana_video/pipeline_sana_video.py`` (and ``pipeline_sana_video_i2v.py``, whose
decode lines are the same): the loop's latents are ``[B, C, T, H, W]``, not packed;
``latents.to(vae.dtype)``, then ``latents / (1 / latents_std) + latents_mean`` with the statistics from
the LTX-2 VAE's buffers or the Wan VAE's config, and no scaling factor; then
``vae.decode(latents)``, without a timestep. So the LTX-2 VAE decodes otherwise here than under
LTX2Pipeline: ``model_index.json`` decides. (AutoencoderDC, the pipelines' third VAE, is an image VAE.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..latents import BCTHW
from .base import DecodeContext, Family, channel_stats
from .ltx2 import LTX2
from .wan import WAN

if TYPE_CHECKING:
    import torch

LTX2_VAE = "AutoencoderKLLTX2Video"


def _is_ltx2(vae: Any) -> bool:
    return type(vae).__name__ == LTX2_VAE


def _geometry(vae: Any) -> Family:
    """The rule that knows this VAE's channels and compression ratios."""
    return LTX2 if _is_ltx2(vae) else WAN


def _channels(vae: Any) -> int:
    return _geometry(vae).channels(vae)


def _denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents / (1 / latents_std) + latents_mean``, in the VAE's dtype, as the pipeline writes it."""
    vae = ctx.vae
    if _is_ltx2(vae):
        mean, std = vae.latents_mean, vae.latents_std
    else:
        mean, std = vae.config.latents_mean, vae.config.latents_std
    c = _channels(vae)
    return z / (1.0 / channel_stats(std, z, c)) + channel_stats(mean, z, c)


SANA_VIDEO = Family(
    name="sana-video",
    label="Sana-Video",
    mirrors="diffusers.SanaVideoPipeline (pipelines/sana_video/pipeline_sana_video.py)",
    vae_classes=("AutoencoderKLWan", LTX2_VAE),
    pipelines=("SanaVideoPipeline", "SanaImageToVideoPipeline"),
    layout=BCTHW,
    channels=_channels,
    temporal_factor=lambda vae: _geometry(vae).temporal_factor(vae),
    spatial_factor=lambda vae: _geometry(vae).spatial_factor(vae),
    denormalize=_denormalize,
    flow_matching=True,  # DPMSolverMultistepScheduler with use_flow_sigmas: timestep = sigma * 1000
    note="with use_resolution_binning (the default) the pipeline resizes and crops its frames to the requested "
         "size; these are the VAE's frames at the binned size",
)
