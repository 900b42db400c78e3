"""AnyFlow and AnyFlow-FAR (``AnyFlowPipeline``, ``AnyFlowFARPipeline``; ``AutoencoderKLWan``).

Mirrors ``pipelines/anyflow/pipeline_anyflow.py``: the rollout holds its latents frames first,
``[B, T, C, H, W]``, and hands those to ``callback_on_step_end``. After the loop a video-conditioned
run writes the conditioning video's latents over the first frames (``latents[:, :context_length] =
video_latents``; the stored steps lack it: it is applied here when the video folder stores them as
the condition file), then ``permute(0, 2, 1, 3, 4)``, ``latents.to(vae.dtype)`` and Wan's
``latents / (1 / latents_std) + latents_mean``. ``AnyFlowFARPipeline`` calls back with one chunk's
latents (``chunk_latents``); the pipeline decodes all chunks at once, so a chunk decoded on its own is
close to, not equal to, its part of the final video.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..latents import BTCHW
from .base import DecodeContext, Family
from .wan import CONDITION_FILE, _spatial, _temporal, _z_dim, wan_denormalize

if TYPE_CHECKING:
    import torch


def to_grid(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """The conditioning frames written over the first ones (when stored), then channels first."""
    condition = ctx.condition
    if condition is not None:
        n = condition.shape[1]
        if condition.ndim != 5 or n > z.shape[1] or condition.shape[2:] != z.shape[2:]:
            b, _, c, h, w = z.shape
            raise ValueError(f"{CONDITION_FILE} {tuple(condition.shape)} does not fit the latent {tuple(z.shape)}: "
                             f"expected [{b}, N, {c}, {h}, {w}] with N <= {z.shape[1]} (the conditioning video's "
                             f"latents, frames first)")
        z = z.clone()
        z[:, :n] = condition.to(z.device, z.dtype)
    return z.permute(0, 2, 1, 3, 4)


ANYFLOW = Family(
    name="anyflow",
    label="AnyFlow",
    mirrors="diffusers.AnyFlowPipeline, AnyFlowFARPipeline (pipelines/anyflow): frames first, permuted, Wan's formula",
    vae_classes=("AutoencoderKLWan",),
    pipelines=("AnyFlowPipeline", "AnyFlowFARPipeline"),
    layout=BTCHW,
    channels=_z_dim,
    temporal_factor=_temporal,
    spatial_factor=_spatial,
    denormalize=wan_denormalize,
    to_grid=to_grid,
    condition_file=CONDITION_FILE,
    note=f"latents are frames first; a video-conditioned run's first frames take the conditioning video's latents "
         f"from {CONDITION_FILE}.npy[.gz] in the video folder, as the pipeline writes them after its loop; "
         "AnyFlowFAR stores one chunk per step, decoded on its own",
)
