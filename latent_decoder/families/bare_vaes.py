"""Video VAEs that no diffusers pipeline uses: ``AutoencoderKLKVAEVideo`` (KVAE) and
``AutoencoderVidTok`` (VidTok, its continuous ``kl`` form).

There is no pipeline to mirror, so a latent decodes with what the VAE's own config says: neither
config holds a ``scaling_factor`` or ``latents_mean``/``latents_std`` (the latent the VAE's encoder
makes is the one it decodes), so the stored ``[1, C, T, H, W]`` latent goes to ``vae.decode`` as it
is, when its channel count is the VAE's (``z_channels``). Both are causal: ``4(T - 1) + 1`` frames
at their default temporal compression.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..latents import BCTHW
from .base import DecodeContext, Family

if TYPE_CHECKING:
    import torch

NOTE = ("no pipeline: decoded with the VAE's own config, which holds no scaling factor or latent statistics, so the "
        "stored latent goes to vae.decode as it is (as this VAE's encoder makes it)")


def _identity(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    return z


def _z_channels(vae: Any) -> int:
    return vae.config.z_channels


def _vidtok_decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``AutoencoderVidTok.decode`` returns the tensor itself (no ``return_dict``)."""
    return ctx.vae.decode(z)


KVAE_VIDEO = Family(
    name="kvae-video",
    label="KVAE video VAE",
    mirrors="diffusers.AutoencoderKLKVAEVideo (models/autoencoders/autoencoder_kl_kvae_video.py: decode)",
    vae_classes=("AutoencoderKLKVAEVideo",),
    pipelines=(),
    layout=BCTHW,
    channels=_z_channels,
    temporal_factor=lambda vae: vae.config.temporal_compress_times,
    spatial_factor=lambda vae: 2 ** (len(vae.config.ch_mult) - 1),
    denormalize=_identity,
    note=NOTE,
)

VIDTOK = Family(
    name="vidtok",
    label="VidTok",
    mirrors="diffusers.AutoencoderVidTok (models/autoencoders/autoencoder_vidtok.py: decode)",
    vae_classes=("AutoencoderVidTok",),
    pipelines=(),
    layout=BCTHW,
    channels=_z_channels,
    temporal_factor=lambda vae: vae.temporal_compression_ratio,
    spatial_factor=lambda vae: 2 ** len(vae.decoder.spatial_us),
    denormalize=_identity,
    decode=_vidtok_decode,
    note=NOTE,
)
