"""Decode an ``AutoencoderKLWan`` latent straight into uint8 frames, one decoder chunk at a time.

diffusers' ``AutoencoderKLWan._decode`` (``models/autoencoders/autoencoder_kl_wan.py``, 0.42.1) calls
the decoder once per latent frame with a causal feature cache (the first call gives 1 frame, each
later one ``2 ** sum(temperal_upsample)``, 4 for Wan2.1/2.2) and ``torch.cat``s every chunk onto the
float video: quadratic copies, and the whole float video (twice during the last cat, again for
unpatchify, clamp and the uint8 conversion) held on the device. ``decode_chunks`` makes the same
calls in the same order but hands each chunk out; ``decode_to_uint8`` turns each into the worker's
uint8 frames at once and writes them into one preallocated ``[F, H, W, 3]`` buffer. Same function,
without the float video; the decoder's own working set for one chunk still sets the peak.
"""
from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .errors import DecodeError

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


def decode_chunks(vae: Any, z: "torch.Tensor") -> Iterator["torch.Tensor"]:
    """Mirrors ``AutoencoderKLWan._decode`` (untiled): yields the clamped ``[B, 3, t, H, W]`` chunks
    whose ``torch.cat`` along frames is ``vae.decode(z).sample``. Unpatchify and clamp act frame by
    frame, so applying them per chunk is exact. The cache is cleared before and after (also when the
    caller stops early or an error interrupts), so no decode sees another's frames."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    vae.clear_cache()
    try:
        x = vae.post_quant_conv(z)
        for i in range(z.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(x[:, :, i : i + 1, :, :], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                              first_chunk=i == 0)
            if vae.config.patch_size is not None:
                out = unpatchify(out, patch_size=vae.config.patch_size)
            yield torch.clamp(out, min=-1.0, max=1.0)
    finally:
        vae.clear_cache()


def video_to_uint8(video: "torch.Tensor", scale: float = 1.0) -> "torch.Tensor":
    """``[1, 3, t, H, W]`` in ``[-1, 1]`` -> ``[t, H', W', 3]`` uint8 on the same device, exactly as
    ``DecodeWorker.decode`` converts a video (float32 resize by ``scale``, then round)."""
    import torch
    import torch.nn.functional as F

    video = video[0].permute(1, 0, 2, 3).float()
    if scale != 1.0:
        video = F.interpolate(video, scale_factor=scale, mode="bilinear", antialias=scale < 1.0, align_corners=False)
    return ((video + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


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

    Each chunk becomes uint8 on the device and lands in a device uint8 buffer, copied to the host
    once at the end (on CPU, ``out`` itself is the buffer): no float video is ever whole. Falls back
    to ``vae.decode`` where ``can_stream`` says no. Raises ``NonFiniteOutput`` when the video holds
    NaN/Inf, as the worker refuses to write one."""
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

        total = 1 + (z.shape[2] - 1) * 2 ** sum(vae.temperal_upsample)
        finite = torch.ones((), dtype=torch.bool, device=z.device)
        host = buffer = None
        start = 0
        with closing(decode_chunks(vae, z)) as chunks:  # closed (cache freed) even if a chunk's conversion fails
            for chunk in chunks:
                finite &= torch.isfinite(chunk).all()
                frames = video_to_uint8(chunk, scale)
                if buffer is None:
                    host = _host_array(out, (total, *frames.shape[1:]))
                    buffer = (torch.from_numpy(host) if frames.device.type == "cpu"
                              else torch.empty(host.shape, dtype=torch.uint8, device=frames.device))
                buffer[start : start + len(frames)] = frames
                start += len(frames)
        if start != total:
            raise RuntimeError(f"the Wan decoder gave {start} frames, expected {total}")
        if not bool(finite):
            raise NonFiniteOutput("the VAE's output holds NaN/Inf values")
        if buffer.device.type != "cpu":
            torch.from_numpy(host).copy_(buffer)
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
