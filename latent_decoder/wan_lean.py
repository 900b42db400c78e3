"""Memory-lean forwards for the modules of diffusers' Wan decoder: the same values with fewer copies.

Streamed one frame per stage call (``wan_stream``), a Wan decode keeps the causal cache (every causal
convolution's last two input frames: 1.79 GiB at 480x848 in bfloat16) and one frame's working set on
the device. In that working set diffusers' modules (``autoencoder_kl_wan.py``, 0.42.1) hold copies the
arithmetic does not need: ``WanCausalConv3d`` pads a copy of the frames it has just concatenated;
``WanResidualBlock`` builds the next cache before its convolution while the old cache and the
activation it was cut from still live; ``WanRMS_norm`` normalises a float32 copy of the whole
activation and scales it in two more copies; ``WanUpsample`` makes a float32 copy for a
nearest-neighbour resize, which only copies values. ``lean_decoder`` gives those modules of one VAE
instance forwards that compute the same values: one ``torch.cat`` per convolution, the spatial zero
padding inside the convolution, the old cache released into the concatenation, the norm's float32
work a few channels at a time and its scaling in place, the resize in the tensor's own dtype.
"""
from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

CACHE_FRAMES = 2  # diffusers' CACHE_T: a 3-frame causal kernel needs the two frames before


def lean_decoder(vae: Any) -> None:
    """Install the lean forwards on the modules of ``vae.decoder`` of exactly diffusers' types (a
    subclass may compute something else). Changes this instance only; ``vae.decode`` (tiled too)
    uses them as well; the encoder keeps diffusers' forwards."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import (WanCausalConv3d, WanResidualBlock, WanRMS_norm,
                                                                  WanUpsample)

    for module in vae.decoder.modules():
        if type(module) is WanCausalConv3d and module.padding_mode == "zeros":
            module.forward = types.MethodType(_causal_conv_forward, module)
        elif type(module) is WanResidualBlock:
            module.forward = types.MethodType(_residual_forward, module)
        elif type(module) is WanUpsample and module.mode in ("nearest", "nearest-exact"):
            module.forward = types.MethodType(_upsample_forward, module)
        elif type(module) is WanRMS_norm and module.channel_first:
            module.forward = types.MethodType(_rms_norm_forward, module)


def plain_decoder(vae: Any) -> None:
    """Undo ``lean_decoder``: every module of ``vae.decoder`` back to its class's forward."""
    for module in vae.decoder.modules():
        if isinstance(module.__dict__.get("forward"), types.MethodType):
            del module.forward


def _convolve(conv: Any, joined: torch.Tensor) -> torch.Tensor:
    """``conv`` on frames already holding their causal context; spatial zero padding in the kernel."""
    pad_w, _, pad_h, _, _, _ = conv._padding
    return F.conv3d(joined, conv.weight, conv.bias, conv.stride, (0, pad_h, pad_w), conv.dilation, conv.groups)


def _join(conv: Any, x: torch.Tensor, cache_x: torch.Tensor | None) -> torch.Tensor:
    """``[causal zeros, cached frames, x]`` along time in one copy, as ``WanCausalConv3d`` sees them."""
    pad_t = conv._padding[4]
    parts = [x]
    if cache_x is not None and pad_t > 0:
        parts.insert(0, cache_x.to(x.device))
        pad_t -= cache_x.shape[2]
    if pad_t > 0:
        parts.insert(0, x.new_zeros((*x.shape[:2], pad_t, *x.shape[3:])))
    return torch.cat(parts, dim=2) if len(parts) > 1 else x


def _causal_conv_forward(conv: Any, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """``WanCausalConv3d.forward``: same arguments, same result, without ``F.pad``'s padded copy."""
    return _convolve(conv, _join(conv, x, cache_x))


def cached_conv(conv: Any, holder: list[torch.Tensor], cache: list, slot: list[int]) -> torch.Tensor:
    """The decoder's cache step around a causal convolution (``WanDecoder3d`` / ``WanResidualBlock``):
    convolve ``holder``'s one tensor with the cached frames, leave its last two input frames in
    ``cache[slot]``, advance ``slot``. The tensor is taken out of ``holder`` and the old cache out of
    ``cache`` so both are freed once joined; the new cache is cut from the joined frames, which end
    with the same frames diffusers keeps (the old cache's last frame when ``x`` brings only one)."""
    i = slot[0]
    x, old = holder.pop(), cache[i]
    cache[i] = None
    joined = _join(conv, x, old)
    kept = min(CACHE_FRAMES, x.shape[2] + (old.shape[2] if old is not None else 0))
    del x, old
    out = _convolve(conv, joined)
    cache[i] = joined[:, :, -kept:].clone()
    slot[0] += 1
    return out


def _residual_forward(block: Any, x: torch.Tensor, feat_cache: list | None = None,
                      feat_idx: list[int] = [0]) -> torch.Tensor:  # noqa: B006 (diffusers' signature)
    """``WanResidualBlock.forward``; without a cache it is diffusers' own."""
    if feat_cache is None:
        return type(block).forward(block, x)
    h = block.conv_shortcut(x)
    out = cached_conv(block.conv1, [block.nonlinearity(block.norm1(x))], feat_cache, feat_idx)
    holder = [block.dropout(block.nonlinearity(block.norm2(out)))]
    del out  # only its normalised copy goes on
    return cached_conv(block.conv2, holder, feat_cache, feat_idx).add_(h)


def _upsample_forward(upsample: Any, x: torch.Tensor) -> torch.Tensor:
    """``WanUpsample.forward`` for nearest modes: the resize copies values, so the float32 round trip
    changes nothing but memory."""
    return F.interpolate(x, upsample.size, upsample.scale_factor, upsample.mode, upsample.align_corners,
                         recompute_scale_factor=upsample.recompute_scale_factor)


NORM_EPS = 1e-12  # F.normalize's default, which WanRMS_norm uses
NORM_SLICES = 8  # float32 work per slice: an eighth of the activation


def _rms_norm_forward(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """``WanRMS_norm.forward`` (channels first): the float32 norm over channels, the division in float32
    (for a half-precision ``x`` a slice of channels at a time, cast to its dtype; a float32 ``x`` has no
    copy to bound: one division, about 40% less time on small frames), then scaled in place. Where the
    parameters do not share ``x``'s dtype, diffusers' forward (its result dtype would differ)."""
    params = [norm.gamma] + ([norm.bias] if isinstance(norm.bias, torch.Tensor) else [])
    if any(p.dtype != x.dtype for p in params):
        return type(norm).forward(norm, x)
    denom = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32).clamp_min_(NORM_EPS)
    if x.dtype == torch.float32:
        out = torch.div(x, denom)
    else:
        out = torch.empty_like(x)
        step = max(1, -(-x.shape[1] // NORM_SLICES))
        for c in range(0, x.shape[1], step):
            out[:, c : c + step] = torch.div(x[:, c : c + step].float(), denom)
    out.mul_(norm.scale).mul_(norm.gamma)
    return out.add_(norm.bias) if isinstance(norm.bias, torch.Tensor) else out
