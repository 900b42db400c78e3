"""Decode an ``AutoencoderKLWan`` latent straight into uint8 frames, one frame at a time through each stage.

diffusers' ``AutoencoderKLWan._decode`` (``models/autoencoders/autoencoder_kl_wan.py``, 0.42.1) calls
the decoder once per latent frame with a causal feature cache (the first call gives 1 frame, each
later one ``2 ** sum(temperal_upsample)``, 4 for Wan2.1/2.2) and ``torch.cat``s every chunk onto the
float video: quadratic copies, the whole float video on the device, and every stage working on all
four frames of a chunk at once (at 480x848 in bfloat16 that working set, not the weights or the cache,
sets the peak: 3.98 GiB counted from shapes).

Every causal convolution here keeps the last two frames of its input in the cache, and diffusers'
cache rules (take the previous cache's last frame when a call brings one frame; zeros after the
first chunk's ``"Rep"``) make a stage's output independent of how its input frames are grouped
into calls. ``decode_chunks`` uses that: it runs the decoder's stages (``conv_in`` + mid block, each
up block, the head) depth first, ``frames_per_call`` frames at a time (latent frames at the entry:
several per call is the temporal-chunk lever of TensorRT-LLM and maxdiffusion), handing each
finished frame out before the next is started. Same function, same modules and weights; with one frame per call
only the cache (1.79 GiB) and one frame's working set per stage are on the device: 2.76 GiB counted
for that latent in bfloat16, 2.39 GiB once ``wan_lean.lean_decoder`` has trimmed the copies the
modules make (the worker installs it; ``benchmarks/wan_memory.py`` prints these figures).
"""
from __future__ import annotations

import types
from contextlib import closing, contextmanager
from functools import reduce
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from .errors import DecodeError, describe_error
from .video import scaled_size

if TYPE_CHECKING:
    import torch


class NonFiniteOutput(DecodeError):
    """The decoded video holds NaN/Inf (e.g. fp16 overflow); the caller names the item and a safer dtype."""


def can_stream(vae: Any) -> bool:
    """Whether ``decode_chunks`` reproduces ``vae.decode``: a Wan VAE that decodes whole frames on its
    own device. Tiling and slicing take other code paths, and an accelerate offload hook must run
    through ``vae.decode`` to move the weights, so those keep diffusers' own decode."""
    from diffusers import AutoencoderKLWan

    return (isinstance(vae, AutoencoderKLWan) and not vae.use_tiling and not vae.use_slicing
            and not hasattr(vae, "_hf_hook"))


SELF_CHECK_LATENT = (3, 4, 4)  # latent frames, height, width: 9 frames of 32x32 (Wan2.1), a few ms on the tiny VAEs
SELF_CHECK_TOLERANCE = 1e-3  # max abs difference in [-1, 1], both decodes in strict float32
# The self-check's verdicts in this process (``_verdict_key``). What it checks is diffusers' code against
# the stream's for one architecture, in float32 whatever the weights: a process that loads a VAE of
# that config again (an API caller per latent, the tests) checks it once.
_VERDICTS: dict[tuple, bool] = {}
FP32_PRECISION_FLAGS = ("cuda.matmul", "cudnn.conv", "mkldnn.matmul", "mkldnn.conv")  # under torch.backends


@contextmanager
def strict_float32() -> Iterator[None]:
    """float32 convolutions and matmuls in IEEE float32 for the block (no TF32 on CUDA, no bf16/TF32 in
    oneDNN), whatever the process set: the self-check compares the algorithm, not the kernels (TF32
    convolutions, PyTorch's default, differ by more than the bound on a deep decoder). Every flag
    is set back to what it was."""
    import torch

    flags = [reduce(getattr, name.split("."), torch.backends) for name in FP32_PRECISION_FLAGS]
    saved = [flag.fp32_precision for flag in flags]
    try:
        for flag in flags:
            flag.fp32_precision = "ieee"
        yield
    finally:
        for flag, value in zip(flags, saved):
            flag.fp32_precision = value


@contextmanager
def float32_weights(vae: Any) -> Iterator[None]:
    """The VAE's floating-point parameters and buffers in float32 for the block, then back to their own
    dtype, memory format kept: bfloat16/float16 -> float32 -> back is exact, so the float32 bound
    applies to a half-precision VAE too."""
    import torch

    held = [t for t in (*vae.parameters(), *vae.buffers()) if t.is_floating_point() and t.dtype != torch.float32]
    saved = [t.dtype for t in held]
    try:
        for t in held:
            t.data = t.data.float()
        yield
    finally:
        for t, dtype in zip(held, saved):
            t.data = t.data.to(dtype)


def _verdict_key(vae: Any, device: "torch.device | str") -> tuple | None:
    """What the self-check's verdict depends on: the VAE's class and config, the device type, and the
    code that runs (the forward of each module type in the decoder, the VAE's decode, the functions of
    diffusers' Wan module), so that code replaced in this process is checked again. None (check every
    time) for an instance with code of its own: a forward or another callable set on the instance."""
    import json

    import torch
    from diffusers.models.autoencoders import autoencoder_kl_wan

    modules = list(vae.decoder.modules())
    if any("forward" in vars(m) for m in modules) or any(callable(v) for v in vars(vae).values()):
        return None
    code = (tuple(dict.fromkeys((type(m), type(m).forward) for m in modules)), type(vae).decode, type(vae)._decode,
            tuple(v for v in vars(autoencoder_kl_wan).values() if isinstance(v, types.FunctionType)))
    return (type(vae), json.dumps(dict(vae.config), sort_keys=True, default=str), torch.device(device).type, code)


def _set_up_stream(vae: Any, device: "torch.device | str") -> None:
    """What the streamed decode runs on: the lean forwards, and on CUDA ``prepare_for_speed``."""
    import torch

    from .wan_lean import lean_decoder

    lean_decoder(vae)
    if torch.device(device).type == "cuda":
        prepare_for_speed(vae, device)


def streams_correctly(vae: Any, device: "torch.device | str") -> bool:
    """Set a Wan VAE up for the streamed decode (``wan_lean.lean_decoder``; on CUDA ``prepare_for_speed``)
    if it still gives this VAE's own ``vae.decode``: the stream mirrors diffusers' private internals
    (``_feat_map``, ``unpatchify``, the blocks' cache arguments; 0.42.1), which another diffusers
    version may change. Checked on one random latent of ``SELF_CHECK_LATENT`` (from its third latent
    frame on, every cache the stream keeps is full), in strict float32 (a half-precision VAE on a
    temporary float32 copy of its weights): ``vae.decode`` with diffusers' own modules, then the
    stream, at most ``SELF_CHECK_TOLERANCE`` apart. Anything else, an exception included, means
    ``vae.decode``: False, the lean forwards removed, and one warning naming the diffusers version.
    A VAE whose class, config, device type and code were checked before in this process
    (``_verdict_key``) takes that verdict, set up the same way without a decode."""
    import warnings

    import diffusers
    import torch

    from .wan_lean import plain_decoder

    if not can_stream(vae):
        return False
    key = _verdict_key(vae, device)
    if key in _VERDICTS:
        if _VERDICTS[key]:
            _set_up_stream(vae, device)
        return _VERDICTS[key]
    leaned = False
    try:
        z = torch.randn((1, vae.config.z_dim, *SELF_CHECK_LATENT), generator=torch.Generator().manual_seed(0))
        with strict_float32(), float32_weights(vae), torch.inference_mode():
            z = z.mul_(2.0).to(device)
            expected = vae.decode(z, return_dict=False)[0]
            leaned = True
            _set_up_stream(vae, device)
            streamed = torch.cat(list(decode_chunks(vae, z)), 2)
            if streamed.shape != expected.shape:
                found = f"shape {tuple(streamed.shape)} instead of {tuple(expected.shape)}"
            else:
                difference = float((streamed - expected).abs().max())
                found = None if difference <= SELF_CHECK_TOLERANCE else f"max difference {difference:.3g}"
    except Exception as exc:  # internals that differ fail in any way: a missing attribute, other arguments...
        found = f"the check raised {describe_error(exc)}"
    if key is not None:
        _VERDICTS[key] = found is None
    if found is None:
        return True
    if leaned:
        plain_decoder(vae)
    warnings.warn(f"the streamed Wan decode does not reproduce vae.decode with diffusers {diffusers.__version__} "
                  f"({found}): decoding with vae.decode (more memory)", stacklevel=2)
    return False


def decode_chunks(vae: Any, z: "torch.Tensor", frames_per_call: int = 1) -> Iterator["torch.Tensor"]:
    """Mirrors ``AutoencoderKLWan._decode`` (untiled): yields clamped ``[B, 3, t, H, W]`` pieces, in
    order, whose ``torch.cat`` along frames is ``vae.decode(z).sample``. Each stage takes at most
    ``frames_per_call`` frames per call, the entry stage latent frames (diffusers: 1 latent frame, then
    4 frames at every later stage; more per call batches bigger convolutions and holds more, one
    frame holds least). The first latent frame always goes alone (diffusers' ``first_chunk``).
    Unpatchify and clamp act
    frame by frame, so applying them per piece is exact. The cache is cleared before and after (also
    when the caller stops early or an error interrupts), so no decode sees another's frames."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    if frames_per_call < 1:
        raise ValueError(f"frames_per_call must be >= 1, got {frames_per_call}")
    decoder = vae.decoder
    stages = [_entry_stage(decoder), *(_up_stage(block) for block in decoder.up_blocks), _head_stage(decoder)]
    starts = [0] * (len(stages) + 1)  # each stage's first cache slot, learnt as the stages run

    def run(stage: int, x: "torch.Tensor", first: bool) -> Iterator["torch.Tensor"]:
        # Only views of x stay referenced, so its memory goes as soon as the last one has been used.
        parts = [x[:, :, j : j + frames_per_call] for j in range(0, x.shape[2], frames_per_call)]
        del x
        while parts:
            slot = [starts[stage]]
            out = [stages[stage](parts.pop(0), vae._feat_map, slot, first)]
            starts[stage + 1] = slot[0]
            if stage + 1 < len(stages):
                yield from run(stage + 1, out.pop(), first)  # held by the next stage only
            else:
                y = out.pop()
                if vae.config.patch_size is not None:
                    y = unpatchify(y, patch_size=vae.config.patch_size)
                yield y.clamp_(-1.0, 1.0)

    vae.clear_cache()
    try:
        x = vae.post_quant_conv(z)
        yield from run(0, x[:, :, :1], True)  # the first latent frame alone, as diffusers' first chunk
        if z.shape[2] > 1:
            yield from run(0, x[:, :, 1:], False)  # the rest, frames_per_call latent frames per call
        del x
    finally:
        vae.clear_cache()


Stage = Callable[["torch.Tensor", list, list, bool], "torch.Tensor"]


def _entry_stage(decoder: Any) -> Stage:
    from .wan_lean import cached_conv

    def entry(x: "torch.Tensor", cache: list, slot: list, first: bool) -> "torch.Tensor":
        x = cached_conv(decoder.conv_in, [x], cache, slot)
        return decoder.mid_block(x, feat_cache=cache, feat_idx=slot)
    return entry


def _up_stage(block: Any) -> Stage:
    def up(x: "torch.Tensor", cache: list, slot: list, first: bool) -> "torch.Tensor":
        return block(x, feat_cache=cache, feat_idx=slot, first_chunk=first)
    return up


def _head_stage(decoder: Any) -> Stage:
    from .wan_lean import cached_conv

    def head(x: "torch.Tensor", cache: list, slot: list, first: bool) -> "torch.Tensor":
        return cached_conv(decoder.conv_out, [decoder.nonlinearity(decoder.norm_out(x))], cache, slot)
    return head


def video_to_uint8(video: "torch.Tensor", scale: float = 1.0) -> "torch.Tensor":
    """``[1, 3, t, H, W]`` in ``[-1, 1]`` -> ``[t, H', W', 3]`` uint8 on the same device, exactly as
    ``DecodeWorker.decode`` converts a video (float32 resize by ``scale``, then round)."""
    import torch
    import torch.nn.functional as F

    video = video[0].permute(1, 0, 2, 3).float()
    if scale != 1.0:
        scaled_size(video.shape[2], video.shape[3], scale)  # a side rounded to zero: one clear item error
        video = F.interpolate(video, scale_factor=scale, mode="bilinear", antialias=scale < 1.0, align_corners=False)
    return ((video + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def decode_to_device_uint8(vae: Any, z: "torch.Tensor", scale: float = 1.0, frames_per_call: int = 1,
                           buffer_for: Callable[[tuple[int, ...]], "torch.Tensor"] | None = None) -> "torch.Tensor":
    """``decode_chunks`` turned into the worker's ``[F, H', W', 3]`` uint8 frames piece by piece, in one
    buffer on ``z``'s device (from ``buffer_for(shape)`` when given): no float video is ever whole.
    Raises ``NonFiniteOutput`` when the video holds NaN/Inf, as the worker refuses to write one."""
    import torch

    total = 1 + (z.shape[2] - 1) * 2 ** sum(vae.temperal_upsample)
    finite = torch.ones((), dtype=torch.bool, device=z.device)
    buffer = None
    start = 0
    with closing(decode_chunks(vae, z, frames_per_call)) as pieces:  # closed (cache freed) even if one fails
        for piece in pieces:
            finite &= torch.isfinite(piece).all()
            frames = video_to_uint8(piece, scale)
            del piece
            if buffer is None:
                shape = (total, *frames.shape[1:])
                buffer = buffer_for(shape) if buffer_for else torch.empty(shape, dtype=torch.uint8, device=z.device)
            buffer[start : start + len(frames)] = frames
            start += len(frames)
    if start != total:
        raise RuntimeError(f"the Wan decoder gave {start} frames, expected {total}")
    if z.device.type != "meta" and not bool(finite):
        raise NonFiniteOutput("the VAE's output holds NaN/Inf values")
    return buffer


def _host_array(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.uint8)
    if out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous uint8 array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    return out


def decode_to_uint8(vae: Any, z: "torch.Tensor", out: np.ndarray | None = None, scale: float = 1.0) -> np.ndarray:
    """Decoder input ``z`` (``[1, C, T, H, W]`` in the VAE's dtype and device, as passed to
    ``vae.decode``) -> ``[F, H', W', 3]`` uint8 frames in ``out`` (allocated when ``None``).

    Streams through ``decode_to_device_uint8``, one frame per stage call, and copies to the host once
    at the end (on CPU the frames land in ``out`` directly). Falls back to ``vae.decode`` where
    ``can_stream`` says no. Raises ``NonFiniteOutput`` when the video holds NaN/Inf."""
    import torch

    if z.dim() != 5 or z.shape[0] != 1:
        raise ValueError(f"expected one latent [1, C, T, H, W], got {tuple(z.shape)}")
    with torch.inference_mode():
        if not can_stream(vae):
            video = vae.decode(z, return_dict=False)[0]
            if not bool(torch.isfinite(video).all()):
                raise NonFiniteOutput("the VAE's output holds NaN/Inf values")
            frames = video_to_uint8(video, scale)
            host = _host_array(out, tuple(frames.shape))
            torch.from_numpy(host).copy_(frames)
            return host
        if z.device.type == "cpu":
            holder: list[np.ndarray] = []

            def on_host(shape: tuple[int, ...]) -> "torch.Tensor":
                holder.append(_host_array(out, shape))
                return torch.from_numpy(holder[0])

            decode_to_device_uint8(vae, z, scale, buffer_for=on_host)
            return holder[0]
        frames = decode_to_device_uint8(vae, z, scale)
        host = _host_array(out, tuple(frames.shape))
        torch.from_numpy(host).copy_(frames)
        return host


def prepare_for_speed(vae: Any, device: "torch.device | str") -> None:
    """Conv3d weights to ``channels_last_3d`` (cuDNN's NDHWC kernels; measured elsewhere on an H200:
    1.40 -> 1.27 s bf16, 2.13 -> 1.52 s fp32 per Wan2.1 decode) and, on CUDA, ``cudnn.benchmark``
    (process-wide: the worker owns its process, and decodes repeat the same shapes). Only kernel
    choice changes; results stay within float rounding of the plain decode."""
    import torch

    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.to(memory_format=torch.channels_last_3d)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
