"""Cosmos 2 / 2.5 (Predict2, Predict2.5, Transfer2.5): Wan's VAE (``AutoencoderKLWan``), their own order.

All de-normalise the loop's float32 ``[B, C, T, H, W]`` latents in float32 and cast to the VAE dtype
only then (Wan casts first), so the rules agree with Wan's in float32 and differ in bf16/fp16:

- ``pipeline_cosmos2_video2world.py``: ``latents * latents_std / sigma_data + latents_mean`` with
  ``sigma_data`` = 1.0 (its ``__init__`` registers that on the scheduler, whatever the config says).
- ``pipeline_cosmos2_5_predict.py``: ``latents / (1 / latents_std) + latents_mean`` (Wan's formula,
  in float32); a decoded frame count other than ``num_frames`` goes through ``_match_num_frames``.
  ``pipeline_cosmos2_text2image.py``'s ``latents / (1 / latents_std) / 1.0 + latents_mean`` is the same.
- ``pipeline_cosmos2_5_transfer.py``: ``latents * latents_std + latents_mean`` with the statistics
  cast to the VAE dtype first (the arithmetic stays float32), per autoregressive chunk.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from .base import DecodeContext, causal_frames, channel_stats, plain_decode
from .wan import WAN, WAN21_SPACE, wan_denormalize

if TYPE_CHECKING:
    import torch

COSMOS2_SIGMA_DATA = 1.0  # Cosmos2VideoToWorldPipeline.__init__: self.sigma_data


def _cosmos2_denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    c = ctx.config
    return z * channel_stats(c.latents_std, z, c.z_dim) / COSMOS2_SIGMA_DATA + channel_stats(c.latents_mean, z, c.z_dim)


def _transfer_denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    c = ctx.config
    std = channel_stats(c.latents_std, z, c.z_dim).to(ctx.dtype)
    mean = channel_stats(c.latents_mean, z, c.z_dim).to(ctx.dtype)
    return z * std + mean  # float32 latents times VAE-dtype statistics: float32, as in the pipeline


def _match_target(t: int, ctx: DecodeContext, factor: int) -> int | None:
    """``num_frames`` when this latent is the one the pipeline makes for it (``(num_frames - 1) // factor + 1``
    latent frames) and it does not decode to that many frames, else None (nothing to match)."""
    target = ctx.video.frames
    if not target or target <= 0 or (target - 1) // factor + 1 != t or causal_frames(t, ctx, factor) == target:
        return None
    return target


def _predict_frames(t: int, ctx: DecodeContext, factor: int) -> int:
    target = _match_target(t, ctx, factor)
    return causal_frames(t, ctx, factor) if target is None else target


def _predict_decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``vae.decode``, then ``_match_num_frames``: repeat every frame ``vae_scale_factor_temporal``
    times, then pad with the last frame or cut to ``num_frames``."""
    import torch

    video = plain_decode(z, ctx)
    factor = 2 ** sum(ctx.vae.temperal_downsample)
    target = _match_target(z.size(2), ctx, factor)
    if target is None:
        return video
    video = torch.repeat_interleave(video, repeats=factor, dim=2)
    if video.size(2) < target:
        video = torch.cat([video, video[:, :, -1:].repeat(1, 1, target - video.size(2), 1, 1)], dim=2)
    return video[:, :, :target]


# Wan's rule, but cast after; any model_index; the Wan2.1 VAE's latents
_COSMOS = dict(cast_first=False, accepts=lambda index: True, previews=(WAN21_SPACE,))
COSMOS2 = replace(
    WAN, name="cosmos2", label="Cosmos 2", denormalize=_cosmos2_denormalize, pipelines=("Cosmos2VideoToWorldPipeline",),
    mirrors="diffusers.Cosmos2VideoToWorldPipeline (pipelines/cosmos/pipeline_cosmos2_video2world.py)", **_COSMOS,
    model_ids=(r"cosmos-?(predict)?-?2|predict-?2", "cosmos"),  # "cosmos" alone: Cosmos 1 or 2
)
COSMOS2_5 = replace(
    WAN, name="cosmos2.5", label="Cosmos 2.5 Predict", denormalize=wan_denormalize, decode=_predict_decode,
    decoded_frames=_predict_frames, pipelines=("Cosmos2_5_PredictBasePipeline", "Cosmos2TextToImagePipeline"),
    mirrors="diffusers.Cosmos2_5_PredictBasePipeline (pipelines/cosmos/pipeline_cosmos2_5_predict.py)", **_COSMOS,
    model_ids=(),  # named by Cosmos 2's ids
)
COSMOS2_5_TRANSFER = replace(
    WAN, name="cosmos2.5-transfer", label="Cosmos 2.5 Transfer", denormalize=_transfer_denormalize,
    pipelines=("Cosmos2_5_TransferPipeline",),
    mirrors="diffusers.Cosmos2_5_TransferPipeline (pipelines/cosmos/pipeline_cosmos2_5_transfer.py)",
    note="each stored latent is one autoregressive chunk, decoded on its own as the pipeline does", **_COSMOS,
    model_ids=(),
)
