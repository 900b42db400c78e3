"""Wan Animate (``WanAnimatePipeline``; the modular ``WanAnimate2ModularPipeline``; ``AutoencoderKLWan``).

Mirrors ``pipelines/wan/pipeline_wan_animate.py`` and ``modular_pipelines/wan_animate_2/denoise.py``
(``WanAnimate2SegmentDecodeStep``, ``decode_vae``): each segment's latent carries the reference image's
slot as its first latent frame, dropped before decoding (``latents[:, :, 1:]``), then Wan's cast and
formula. The pipelines generate a long video segment by segment: a stored latent is one segment
(the modular pipeline's has no batch axis), decoded as the pipeline decodes it; joining the
segments, the pipeline drops the ``prev_segment_conditioning_frames`` a later segment repeats.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..latents import BCTHW
from .base import DecodeContext, Family
from .wan import _spatial, _temporal, _z_dim, wan_denormalize

if TYPE_CHECKING:
    import torch


def _drop_reference_slot(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    return z[:, :, 1:]


WAN_ANIMATE = Family(
    name="wan-animate",
    label="Wan Animate",
    mirrors="diffusers.WanAnimatePipeline (pipelines/wan/pipeline_wan_animate.py), WanAnimate2ModularPipeline "
            "(modular_pipelines/wan_animate_2/denoise.py: decode_vae)",
    vae_classes=("AutoencoderKLWan",),
    pipelines=("WanAnimatePipeline", "WanAnimate2ModularPipeline", "WanAnimate2DistilledModularPipeline"),
    layout=BCTHW,
    channels=_z_dim,
    temporal_factor=_temporal,
    spatial_factor=_spatial,
    denormalize=wan_denormalize,
    to_grid=_drop_reference_slot,
    note="the first latent frame (the reference image's slot) is dropped, as the pipeline does; a stored latent is "
         "one segment",
)
