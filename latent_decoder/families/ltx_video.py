"""LTX-Video 0.9.x (``AutoencoderKLLTXVideo``).

Mirrors ``pipelines/ltx/pipeline_ltx.py``: the loop's float32 latents are packed tokens
``[B, T*H*W, C]`` (the transformer's patch sizes are 1); ``_unpack_latents``, then
``_denormalize_latents`` (``latents * latents_std / scaling_factor + latents_mean``, the std/mean
buffers of the VAE) in float32, then the cast; with ``timestep_conditioning`` (0.9.1+) the VAE gets
``decode_timestep`` and the latent becomes ``(1 - s) * latents + s * noise`` with
``s = decode_noise_scale`` (``None``: ``decode_timestep``). The pipeline's defaults are 0.0 / None;
LTX 0.9.1+ runs usually pass 0.05 / 0.025: set them in the config or with flags. The modular
``LTXModularPipeline`` (``modular_pipelines/ltx/decoders.py``) packs its loop latents and decodes
with the same lines.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..latents import BSC
from .base import DecodeContext, Family, PreviewSpace, causal_grid, latent_channels, spatial_ratio, temporal_ratio

if TYPE_CHECKING:
    import torch

DECODE_TIMESTEP = 0.0  # LTXPipeline.__call__'s default
# The pipeline draws the decode noise from its generator after the loop, a state no experiment stores:
# a fixed seed makes the mix reproducible run to run (the same kind of noise, not the same draw).
NOISE_SEED = 0


def token_grid(ctx: DecodeContext) -> tuple[int, int, int]:
    return causal_grid(ctx, ctx.vae.temporal_compression_ratio, ctx.vae.spatial_compression_ratio)


def unpack(z: "torch.Tensor", grid: tuple[int, int, int], patch: int = 1, patch_t: int = 1) -> "torch.Tensor":
    """The pipelines' ``_unpack_latents``: ``[B, T*H*W, C*p_t*p*p]`` -> ``[B, C, T*p_t, H*p, W*p]``."""
    t, h, w = grid
    z = z.reshape(z.size(0), t, h, w, -1, patch_t, patch, patch)
    return z.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def buffer_denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``_denormalize_latents``: ``latents * latents_std / scaling_factor + latents_mean`` (VAE buffers)."""
    mean = ctx.vae.latents_mean.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
    std = ctx.vae.latents_std.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
    return z * std / ctx.config.scaling_factor + mean


def decode_with_timestep(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``vae.decode(latents, timestep)`` after the noise mix, as LTX pipelines do with
    ``timestep_conditioning``; without it, ``vae.decode(latents, None)``."""
    if not ctx.config.timestep_conditioning:
        return ctx.vae.decode(z, None, return_dict=False)[0]
    return ctx.vae.decode(mix_decode_noise(z, ctx), decode_timestep(z, ctx), return_dict=False)[0]


def decode_timestep(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``decode_timestep`` (the pipeline's default when not given) per video, in ``z``'s dtype."""
    import torch

    return torch.tensor([_timestep(ctx)] * z.shape[0], device=z.device, dtype=z.dtype)


def _timestep(ctx: DecodeContext) -> float:
    return DECODE_TIMESTEP if ctx.options.decode_timestep is None else ctx.options.decode_timestep


def mix_decode_noise(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``(1 - s) * latents + s * noise`` in ``z``'s dtype, ``s = decode_noise_scale`` (None: the decode
    timestep). No noise is drawn when ``s`` is 0 (the pipeline's default), so the result does not
    depend on the seed."""
    import torch

    s = _timestep(ctx) if ctx.options.decode_noise_scale is None else ctx.options.decode_noise_scale
    if not s:
        return z
    generator = torch.Generator().manual_seed(NOISE_SEED)
    noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    scale = torch.tensor([s] * z.shape[0], device=z.device, dtype=z.dtype)[:, None, None, None, None]
    return (1 - scale) * z + scale * noise


LTX_VIDEO_SPACE = PreviewSpace("ltx-video", "LTX-Video", "AutoencoderKLLTXVideo", BSC, 128, 8, 32)

LTX_VIDEO = Family(
    name="ltx-video",
    label="LTX-Video",
    mirrors="diffusers.LTXPipeline (pipelines/ltx/pipeline_ltx.py: _unpack_latents, _denormalize_latents, "
            "decode_timestep)",
    vae_classes=("AutoencoderKLLTXVideo",),
    pipelines=("LTXPipeline", "LTXImageToVideoPipeline", "LTXConditionPipeline", "LTXI2VLongMultiPromptPipeline",
               "LTXModularPipeline"),
    layout=BSC,
    channels=latent_channels,
    temporal_factor=temporal_ratio,
    spatial_factor=spatial_ratio,
    denormalize=buffer_denormalize,
    cast_first=False,
    flow_matching=True,
    to_grid=lambda z, ctx: unpack(z, token_grid(ctx)),
    decode=decode_with_timestep,
    token_grid=token_grid,
    needs=("frames", "height", "width"),
    reads=("decode_timestep", "decode_noise_scale"),
    previews=(LTX_VIDEO_SPACE,),
    model_ids=("ltx",),
)
