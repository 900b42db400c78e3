"""Cosmos 3 (``Cosmos3OmniPipeline``, the modular ``Cosmos3OmniModularPipeline``; ``AutoencoderKLWan``).

Mirrors ``pipelines/cosmos/pipeline_cosmos3_omni.py`` (and ``modular_pipelines/cosmos/decoders.py``):
the vision latents have no batch axis in the loop (``[C, T, H, W]``); the pipeline keeps the
config's statistics as tensors of the VAE's dtype (``_vae_latents_mean``, ``_vae_latents_inv_std =
1 / torch.tensor(latents_std, dtype=vae.dtype)``: the reciprocal taken in that dtype, where Wan's
pipelines take it in float32 and cast after), casts the latent to that dtype and computes
``latents / inv_std + mean`` before ``vae.decode``. The modular pipeline's autoregressive mode
decodes chunk by chunk (later chunks lose their conditioning frames when joined): a stored latent
is decoded as one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..latents import BCTHW
from .base import DecodeContext, Family
from .wan import _spatial, _temporal, _z_dim

if TYPE_CHECKING:
    import torch


def denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents / inv_std + mean`` with both built in the VAE's dtype (``z``'s)."""
    import torch

    c = ctx.config
    mean = torch.tensor(c.latents_mean, dtype=z.dtype).to(z.device).view(1, -1, 1, 1, 1)
    inv_std = (1.0 / torch.tensor(c.latents_std, dtype=z.dtype)).to(z.device).view(1, -1, 1, 1, 1)
    return z / inv_std + mean


COSMOS3 = Family(
    name="cosmos3",
    label="Cosmos 3",
    mirrors="diffusers.Cosmos3OmniPipeline (pipelines/cosmos/pipeline_cosmos3_omni.py), Cosmos3OmniModularPipeline "
            "(modular_pipelines/cosmos/decoders.py)",
    vae_classes=("AutoencoderKLWan",),
    pipelines=("Cosmos3OmniPipeline", "Cosmos3OmniModularPipeline", "Cosmos3DistilledModularPipeline"),
    layout=BCTHW,
    channels=_z_dim,
    temporal_factor=_temporal,
    spatial_factor=_spatial,
    denormalize=denormalize,
)
