#!/usr/bin/env python3
"""Peak device memory of a full-size Wan2.1 decode, counted from tensor shapes on the meta device.

No GPU needed: ``latent_decoder.memory_count.LiveTensorBytes`` adds up every tensor the decode makes
while it lives. The figure is what ``torch.cuda.max_memory_allocated`` would show above the weights
and the latent, without cuDNN workspaces or allocator rounding (add the weights, printed, for the
whole). Paths: diffusers' ``vae.decode`` + the worker's uint8 conversion; ``wan_stream``'s streamed
decode with 16, 4, 2 and 1 frames per stage call (latent frames at the entry stage), then with
``lean_decoder`` (what the worker runs).

    python benchmarks/wan_memory.py                       # 61x480x848 ([1,16,16,60,106]), both dtypes
    python benchmarks/wan_memory.py --latent 1,16,21,90,160   # 81x720x1280
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
from diffusers import AutoencoderKLWan
from diffusers.utils import logging

from latent_decoder.memory_count import LiveTensorBytes
from latent_decoder.wan_lean import lean_decoder
from latent_decoder.wan_stream import decode_to_device_uint8, video_to_uint8

GIB = 2**30


def count(vae: Any, z: torch.Tensor, decode: Callable[[Any, torch.Tensor], Any]) -> tuple[int, float]:
    start = time.perf_counter()
    with torch.inference_mode(), LiveTensorBytes() as counter:
        decode(vae, z)
    return counter.peak, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", default="1,16,16,60,106", help="latent shape [1,C,T,H,W] (default 61x480x848)")
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.latent.split(","))
    logging.set_verbosity_error()

    for name in args.dtype:
        dtype = getattr(torch, name)
        with torch.device("meta"):
            vae = AutoencoderKLWan().eval().to(dtype)
        z = torch.empty(shape, device="meta", dtype=dtype)
        weights = sum(p.numel() * p.element_size() for p in vae.decoder.parameters())
        weights += sum(p.numel() * p.element_size() for p in vae.post_quant_conv.parameters())
        frames = 1 + (shape[2] - 1) * 4
        print(f"AutoencoderKLWan() {name}, latent {list(shape)} -> {frames}x{shape[3] * 8}x{shape[4] * 8}; "
              f"decoder weights {weights / GIB:.2f} GiB (not in the peaks below)")
        rows = [("vae.decode + uint8", lambda v, x: video_to_uint8(v.decode(x).sample))]
        rows += [(f"streamed, {n} frame{'s' if n > 1 else ''} per call",
                  lambda v, x, n=n: decode_to_device_uint8(v, x, frames_per_call=n)) for n in (16, 4, 2, 1)]
        plain = None
        print(f"  {'path':42s} {'peak GiB':>9s} {'+ weights':>10s} {'vs plain':>9s}")
        for label, decode in rows + [("streamed, 1 frame per call + lean modules", None)]:
            if decode is None:
                lean_decoder(vae)
                decode = decode_to_device_uint8
            peak, _ = count(vae, z, decode)
            plain = plain or peak
            print(f"  {label:42s} {peak / GIB:9.2f} {(peak + weights) / GIB:10.2f} {peak / plain:9.2f}")
        cache = sum(t.numel() * t.element_size() for t in _cache_after_one_chunk(vae, z))
        print(f"  the causal cache alone (every conv's last two input frames): {cache / GIB:.2f} GiB")


def _cache_after_one_chunk(vae: Any, z: torch.Tensor) -> list[torch.Tensor]:
    """The feature cache as it stands after two latent frames (every slot full from then on)."""
    from latent_decoder.wan_stream import decode_chunks

    with torch.inference_mode():
        pieces = decode_chunks(vae, z[:, :, :2])
        for _ in range(5):  # 1 frame from the first latent frame, then 4
            next(pieces)
        cache = [t for t in vae._feat_map if isinstance(t, torch.Tensor)]
        pieces.close()
    return cache


if __name__ == "__main__":
    main()
