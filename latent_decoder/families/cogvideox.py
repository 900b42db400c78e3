"""CogVideoX 1.0 / 1.5 (``AutoencoderKLCogVideoX``).

Mirrors ``pipelines/cogvideo/pipeline_cogvideox.py``: the loop latents are frames first
``[B, F, C, H, W]`` in the transformer's dtype; CogVideoX 1.5 denoises ``additional_frames`` extra
latent frames (up to a multiple of the transformer's ``patch_size_t``) and drops the leading ones
(``latents[:, additional_frames:]``); ``decode_latents`` permutes to ``[B, C, F, H, W]`` and
multiplies by ``1 / scaling_factor`` in the loop's dtype (the VAE's, as pipelines are loaded).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..latents import BTCHW
from .base import DecodeContext, Family, PreviewSpace, TinySpace, causal_frames, config_temporal_ratio, latent_channels

if TYPE_CHECKING:
    import torch


def _to_grid(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    frames = ctx.video.frames
    if frames is not None:
        expected = (frames - 1) // ctx.config.temporal_compression_ratio + 1
        if z.shape[1] > expected:
            z = z[:, z.shape[1] - expected:]
    return z.permute(0, 2, 1, 3, 4)


def _denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    return 1 / ctx.config.scaling_factor * z


def _frames(t: int, ctx: DecodeContext, factor: int) -> int:
    """The VAE decodes latent frames in batches of two (the first batch takes the odd one out) and
    keeps the first frame apart only in an odd batch: ``(t-1)*factor+1`` for odd ``t``, else ``t*factor``."""
    return causal_frames(t, ctx, factor) if t % 2 else t * factor


def _spatial(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


COGVIDEOX_SPACE = PreviewSpace("cogvideox", "CogVideoX", "AutoencoderKLCogVideoX", BTCHW, 16, 4, 8)  # no published factors

COGVIDEOX = Family(
    name="cogvideox",
    label="CogVideoX",
    mirrors="diffusers.CogVideoXPipeline (pipelines/cogvideo/pipeline_cogvideox.py, decode_latents)",
    vae_classes=("AutoencoderKLCogVideoX",),
    pipelines=("CogVideoXPipeline", "CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline",
               "CogVideoXFunControlPipeline", "ConsisIDPipeline"),
    layout=BTCHW,
    channels=latent_channels,
    temporal_factor=config_temporal_ratio,
    spatial_factor=_spatial,
    denormalize=_denormalize,
    to_grid=_to_grid,
    decoded_frames=_frames,
    previews=(COGVIDEOX_SPACE,),
    tiny=(TinySpace(("taecvx",), 16),),  # an even latent frame count keeps the first frames: see _frames
    model_ids=("cogvideo",),
)
