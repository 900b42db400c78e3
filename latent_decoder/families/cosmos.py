"""Cosmos 1 / Predict1 (``AutoencoderKLCosmos``, the causal 8x8x8 tokenizer).

Mirrors ``pipelines/cosmos/pipeline_cosmos_text2world.py`` (and ``pipeline_cosmos_video2world.py``,
whose condition frames are already in the loop's latents): the loop runs in float32 ``[B, C, T, H, W]``;
after it, still in float32, ``latents * latents_std / sigma_data + latents_mean``, where the VAE
config's ``latents_mean``/``latents_std`` hold one value per channel AND latent frame, viewed
``(1, C, -1, 1, 1)[:, :, :T]`` (without them ``latents / sigma_data``), and ``sigma_data`` is the
scheduler config's (``EDMEulerScheduler``: 0.5 by default); then ``vae.decode(latents.to(vae.dtype))``.
The VAE is causal: ``T`` latent frames decode to ``(T - 1) * 8 + 1`` frames.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..latents import BCTHW
from .base import DecodeContext, Family, PreviewSpace, config_spatial_ratio, config_temporal_ratio, latent_channels

if TYPE_CHECKING:
    import torch

SIGMA_DATA = 0.5  # EDMEulerScheduler's default, when the model folder has no scheduler config saying otherwise


def frame_stats(values: Any, z: "torch.Tensor", channels: int) -> "torch.Tensor":
    """Per-channel-and-frame statistics as the pipeline views them: ``(1, C, -1, 1, 1)[:, :, :T]``."""
    import torch

    return torch.tensor(values).view(1, channels, -1, 1, 1)[:, :, : z.size(2)].to(z)


def sigma_data(ctx: DecodeContext) -> float:
    """``self.scheduler.config.sigma_data``, read from the model folder's ``scheduler_config.json``."""
    return float(ctx.pipeline.scheduler.get("sigma_data", SIGMA_DATA))


def _denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    c = ctx.config
    if c.latents_mean is None:
        return z / sigma_data(ctx)
    return (z * frame_stats(c.latents_std, z, c.latent_channels) / sigma_data(ctx)
            + frame_stats(c.latents_mean, z, c.latent_channels))


COSMOS1_SPACE = PreviewSpace("cosmos1", "Cosmos 1 (CV8x8x8)", "AutoencoderKLCosmos", BCTHW, 16, 8, 8)

COSMOS1 = Family(
    name="cosmos1",
    label="Cosmos 1",
    mirrors="diffusers.CosmosTextToWorldPipeline (pipelines/cosmos/pipeline_cosmos_text2world.py)",
    vae_classes=("AutoencoderKLCosmos",),
    pipelines=("CosmosTextToWorldPipeline", "CosmosVideoToWorldPipeline"),
    layout=BCTHW,
    channels=latent_channels,
    temporal_factor=config_temporal_ratio,
    spatial_factor=config_spatial_ratio,
    denormalize=_denormalize,
    cast_first=False,
    previews=(COSMOS1_SPACE,),
    model_ids=("cosmos-?1", "cosmos"),  # "cosmos" alone: Cosmos 1 or 2
)
