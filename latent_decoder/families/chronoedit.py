"""ChronoEdit (``ChronoEditPipeline``; ``AutoencoderKLWan``).

Mirrors ``pipelines/chronoedit/pipeline_chronoedit.py``: Wan's cast and formula; then, with
``enable_temporal_reasoning`` and more than two latent frames, the edit pair (first and last latent
frame) and the reasoning frames (all but the last) are decoded apart and joined
(``video_reason`` + ``video_edit[:, :, 1:]``). Without temporal reasoning the pipeline generates 5
frames (two latent frames), and with it the latent shrinks to two frames after
``num_temporal_reasoning_steps``: more than two latent frames always mean the joined decode.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..latents import BCTHW
from .base import DecodeContext, Family
from .wan import _spatial, _temporal, _z_dim, wan_denormalize

if TYPE_CHECKING:
    import torch

EDIT_PAIR_FRAMES = 2


def decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``vae.decode``; with temporal reasoning frames, the edit pair and the reasoning frames apart."""
    import torch

    if z.shape[2] <= EDIT_PAIR_FRAMES:
        return ctx.vae.decode(z, return_dict=False)[0]
    edit = ctx.vae.decode(z[:, :, [0, -1]], return_dict=False)[0]
    reason = ctx.vae.decode(z[:, :, :-1], return_dict=False)[0]
    return torch.cat([reason, edit[:, :, 1:]], dim=2)


CHRONOEDIT = Family(
    name="chronoedit",
    label="ChronoEdit",
    mirrors="diffusers.ChronoEditPipeline (pipelines/chronoedit/pipeline_chronoedit.py)",
    vae_classes=("AutoencoderKLWan",),
    pipelines=("ChronoEditPipeline",),
    layout=BCTHW,
    channels=_z_dim,
    temporal_factor=_temporal,
    spatial_factor=_spatial,
    denormalize=wan_denormalize,
    decode=decode,
    note="more than two latent frames (temporal reasoning) decode as the pipeline does: the edit pair and the "
         "reasoning frames apart, joined",
)
