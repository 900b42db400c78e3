#!/usr/bin/env python3
"""Wan decode paths: diffusers' ``vae.decode`` + the worker's uint8 conversion against
``latent_decoder.wan_stream``'s streamed decode with 4 frames per stage call (4 latent frames per entry call) and
one frame per call, then with ``lean_decoder`` (what the worker runs) and ``prepare_for_speed``
(the worker adds it on CUDA).

Each path runs in its own subprocess (fresh allocator, fresh ``cudnn.benchmark``) on the same seeded
weights and latent: one warm-up decode, then ``--steps`` timed ones. Printed: the best of those in
seconds per step (a shared machine only adds time), peak memory of the timed decodes above the
memory at rest after the warm-up (CUDA: ``torch.cuda.max_memory_allocated``, plus the peak reserved
by the caching allocator; CPU: peak RSS, ``ru_maxrss``, which the warm-up reaches too), ratios to
the plain path, and how far each path's uint8 frames are from the plain path's.

    python benchmarks/wan_decode_path.py                              # mid-size VAE on CPU, < 1 min
    python benchmarks/wan_decode_path.py --full --dtype bfloat16      # Wan2.1 at 61x480x848

``--full`` uses ``AutoencoderKLWan()`` (default config, random weights) with a ``[1, 16, 16, 60, 106]``
latent; the default is Wan2.1's structure at a sixth of its width with a ``[1, 16, 4, 8, 12]`` latent (13x64x96).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PATHS = ("vae.decode", "streamed, 4 frames per call", "streamed, 1 frame per call", "streamed + lean modules",
         "streamed + lean modules + channels_last_3d")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def plain_decode(vae: Any, z: Any) -> np.ndarray:
    """What ``DecodeWorker.decode`` does after the family rule: ``vae.decode``, the NaN check, then uint8
    on the device."""
    import torch

    video = vae.decode(z, return_dict=False)[0]
    if not bool(torch.isfinite(video).all()):
        raise ValueError("the VAE's output holds NaN values")
    video = video[0].permute(1, 0, 2, 3).float()
    frames = ((video + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def run_path(args: argparse.Namespace) -> dict[str, Any]:
    """One path in this process: build, warm up, time ``args.steps`` decodes, measure the peak."""
    import torch
    from diffusers import AutoencoderKLWan
    from diffusers.utils import logging

    from latent_decoder.wan_lean import lean_decoder
    from latent_decoder.wan_stream import decode_to_device_uint8, prepare_for_speed

    logging.set_verbosity_error()  # the cast below warns about fp32 modules; Wan has none

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    vae = (AutoencoderKLWan() if args.full else AutoencoderKLWan(base_dim=16)).eval().to(device, dtype)
    shape = (1, 16, 16, 60, 106) if args.full else (1, 16, 4, 8, 12)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(1)).mul_(2.0).to(device, dtype)
    if "lean modules" in args.path:
        lean_decoder(vae)
    if args.path.endswith("channels_last_3d"):
        prepare_for_speed(vae, device)
    per_call = 4 if "4 frames" in args.path else 1

    def decode(vae: Any, z: Any) -> np.ndarray:
        if args.path == "vae.decode":
            return plain_decode(vae, z)
        return decode_to_device_uint8(vae, z, frames_per_call=per_call).cpu().numpy()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        frames = decode(vae, z)  # warm-up: loads kernels, runs cuDNN's autotuning outside the figures
        sync()
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_bytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for _ in range(args.steps):
            start = time.perf_counter()
            decode(vae, z)
            sync()
            seconds.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
        reserved = torch.cuda.max_memory_reserved(device)  # what the caching allocator holds: where OOM strikes
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        reserved = None
    np.save(args.frames_out, frames)
    return {"seconds": min(seconds), "peak": peak, "reserved": reserved, "shape": list(frames.shape)}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu ({cpu}, {torch.get_num_threads()} torch threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="AutoencoderKLWan() default config, [1,16,16,60,106]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=3, help="timed decodes per path, after one warm-up")
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--frames-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "auto":
        import torch

        args.device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if args.path:
        print(json.dumps(run_path(args)))
        return

    # On CPU, glibc's fixed mmap threshold returns every large free block at once, so RSS follows live memory.
    env = {**os.environ, **({} if args.device.startswith("cuda") else {"MALLOC_MMAP_THRESHOLD_": "131072"})}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in PATHS:
            frames_out = str(Path(tmp) / f"{len(results)}.npy")
            cmd = [sys.executable, __file__, "--path", path, "--frames-out", frames_out, "--dtype", args.dtype,
                   "--device", args.device, "--steps", str(args.steps)] + (["--full"] if args.full else [])
            done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
            results[path] = json.loads(done.stdout.strip().splitlines()[-1])
            results[path]["frames"] = np.load(frames_out).astype(np.int16)

    plain = results["vae.decode"]
    cuda = args.device.startswith("cuda")
    print(f"device: {device_name(args.device)}; {'AutoencoderKLWan()' if args.full else 'AutoencoderKLWan(base_dim=16)'}"
          f" {args.dtype}; video {'x'.join(map(str, plain['shape']))} uint8; best of {args.steps} timed steps per path")
    print(f"peak: {'CUDA max_memory_allocated' if cuda else 'peak RSS'} above rest after the warm-up"
          + ("; reserved: max_memory_reserved, weights included" if cuda else ""))
    print(f"{'path':42s} {'s/step':>8s} {'speed-up':>9s} {'peak MiB':>9s} {'ratio':>6s}"
          + (f" {'reserved MiB':>13s}" if cuda else "") + "  uint8 vs vae.decode")
    for path, r in results.items():
        diff = np.abs(r["frames"] - plain["frames"])
        print(f"{path:42s} {r['seconds']:8.3f} {plain['seconds'] / r['seconds']:8.2f}x {r['peak'] / 2**20:9.1f} "
              f"{r['peak'] / plain['peak']:6.2f}" + (f" {r['reserved'] / 2**20:13.1f}" if cuda else "")
              + f"  max {diff.max()}, {np.count_nonzero(diff) / diff.size:.4%} differ")


if __name__ == "__main__":
    main()
