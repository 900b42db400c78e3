"""MiniMax H3 (the modular ``MiniMaxH3ModularPipeline``, ``AutoencoderKLMiniMaxH3``).

Mirrors ``modular_pipelines/minimax_h3/decoders.py``. The denoising loop holds the video as packed
float32 rows ``[S, C*p_t*p_h*p_w]`` (no batch axis; a modular pipeline has no
``callback_on_step_end``, so what is stored is what a hook in the loop sees), the conditioning rows
first (fl2va keyframes, ref2va references). ``MiniMaxH3AfterDenoiseStep`` drops those and unpacks
the rest, frame-major then row-major, into ``[1, C, T, H, W]`` (that form is accepted too);
``MiniMaxH3VideoDecodeStep`` de-normalises in float32 with the config's ``latents * latents_std +
latents_mean`` (no scaling factor), ``vae.decode`` casts to its decoder's dtype, and the VAE's
ImageNet-normalised output is mapped back (``video.float() * pixel_std + pixel_mean``, clamped to
[0, 1]). The grid: ``num_frames`` rounded up to ``17n + 5`` (``align_num_frames``) gives ``5n + 2``
latent frames (``video_latent_num_frames``), ``height // 16`` x ``width // 16``, grouped into rows
by the transformer's ``patch_size`` (``(1, 2, 2)`` when no transformer config is at hand).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..latents import BCTHW, Layout
from .base import DecodeContext, Family, channel_stats, latent_channels, spatial_ratio, temporal_ratio
from .ltx2 import PATCH_VOLUMES

if TYPE_CHECKING:
    import torch

ROWS = Layout("BSC", also=(BCTHW,))  # the loop's packed rows, or the unpacked grid
DEFAULT_PATCH = (1, 2, 2)  # MiniMaxH3ModularPipeline.patch_size without a transformer
PIXEL_MEAN = (0.485, 0.456, 0.406)  # MiniMaxH3ModularPipeline.pixel_mean / pixel_std: ImageNet's
PIXEL_STD = (0.229, 0.224, 0.225)
GRID_EXTRA_FRAMES = 2  # video_latent_num_frames: (n - latents_per_chunk) // frames_per_chunk * latents_per_chunk + 2


def _patch(ctx: DecodeContext) -> tuple[int, int, int]:
    return tuple(int(p) for p in ctx.pipeline.transformer.get("patch_size") or DEFAULT_PATCH)


def latent_grid(ctx: DecodeContext) -> tuple[int, int, int]:
    """``num_latent_frames, latent_height, latent_width`` of the requested video, as the layout step
    computes them (``num_frames`` aligned up to ``clip_length * n + tokens_chunk_size`` first)."""
    vae, video = ctx.vae, ctx.video
    per_chunk, latents_per_chunk = vae.config.clip_length, vae.tokens_chunk_size
    frames = video.frames
    while frames % per_chunk != latents_per_chunk:
        frames += 1
    t = (frames - latents_per_chunk) // per_chunk * latents_per_chunk + GRID_EXTRA_FRAMES
    return t, video.height // vae.spatial_compression_ratio, video.width // vae.spatial_compression_ratio


def token_grid(ctx: DecodeContext) -> tuple[int, int, int]:
    """The rows' grid: the latent grid over the transformer's patch."""
    (t, h, w), (pt, ph, pw) = latent_grid(ctx), _patch(ctx)
    return t // pt, h // ph, w // pw


def to_grid(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``MiniMaxH3AfterDenoiseStep``: the leading conditioning rows dropped, the rest unpacked; an
    unpacked ``[1, C, T, H, W]`` latent as it is."""
    if z.ndim == BCTHW.rank:
        return z
    t, h, w = token_grid(ctx)
    pt, ph, pw = _patch(ctx)
    channels = ctx.config.latent_channels
    rows = z[:, z.shape[1] - t * h * w:]
    rows = rows.reshape(z.shape[0], t, h, w, channels, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return rows.reshape(z.shape[0], channels, t * pt, h * ph, w * pw)


def denormalize(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``latents * latents_std + latents_mean`` (config lists), in the loop's float32."""
    c = ctx.config
    return z * channel_stats(c.latents_std, z, c.latent_channels) + channel_stats(c.latents_mean, z, c.latent_channels)


def decode(z: "torch.Tensor", ctx: DecodeContext) -> "torch.Tensor":
    """``vae.decode``, then the ImageNet normalisation undone and clamped to [0, 1] (as the decode step
    does), returned in [-1, 1] like every rule."""
    video = ctx.vae.decode(z, return_dict=False)[0].float()
    mean = channel_stats(PIXEL_MEAN, video, 3)
    std = channel_stats(PIXEL_STD, video, 3)
    return (video * std + mean).clamp(0, 1) * 2 - 1


def decoded_frames(t: int, ctx: DecodeContext, factor: int) -> int:
    """The frames ``AutoencoderKLMiniMaxH3._decode`` gives for ``t`` latent frames: chunks of
    ``tokens_chunk_size`` latent frames, each decoded with ``token_overlap`` more, cross-faded, and the
    frames of padded latent frames cut off (``5n + 2`` latent frames -> ``17n + 5`` frames)."""
    vae: Any = ctx.vae
    size, drop, overlap = vae.tokens_chunk_size, vae.config.token_drop, vae.token_overlap
    pre, chunk_frames = vae.frame_pre_padding, size * factor
    tokens = t + drop
    pad = (-tokens) % size
    padded = t + pad
    frames = 0
    tail = 0
    for i in range(max(0, (tokens + pad) // size - int(drop > 0))):
        clip = (min(padded, i * size + size + overlap) - i * size) * factor
        frames += max(0, min(chunk_frames, clip) - pre)
        if drop > 0:
            tail = max(0, min(2 * chunk_frames, clip) - chunk_frames - pre)
    frames += tail
    if pad:
        intra = vae.config.clip_length % factor
        frames -= sum(intra if intra and (t + k) % size == 0 else factor for k in range(pad))
    return frames


MINIMAX_H3 = Family(
    name="minimax-h3",
    label="MiniMax H3",
    mirrors="diffusers.MiniMaxH3ModularPipeline (modular_pipelines/minimax_h3/decoders.py: MiniMaxH3AfterDenoiseStep, "
            "MiniMaxH3VideoDecodeStep)",
    vae_classes=("AutoencoderKLMiniMaxH3",),
    pipelines=("MiniMaxH3ModularPipeline",),
    layout=ROWS,
    channels=latent_channels,
    temporal_factor=temporal_ratio,
    spatial_factor=spatial_ratio,
    denormalize=denormalize,
    cast_first=False,
    to_grid=to_grid,
    decode=decode,
    decoded_frames=decoded_frames,
    token_grid=token_grid,
    needs=("frames", "height", "width"),
    stored_channels=lambda c: tuple(c * v for v in PATCH_VOLUMES),
    extra_tokens=True,
    note="packed rows are unpacked with video_settings (frames rounded up to 17n+5, as the pipeline does); leading "
         "conditioning rows (keyframes, references) are dropped; an unpacked [1, C, T, H, W] latent is taken as it is",
    model_ids=("minimax-?h3",),
)
