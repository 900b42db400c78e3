#!/usr/bin/env python3
"""Throughput of ``latent-decoder decode`` against the plain diffusers loop, on one device.

The baseline is what a researcher writes by hand: for each stored step, gunzip + ``np.load``,
de-normalise, ``vae.decode``, ``VideoProcessor.postprocess_video`` and diffusers'
``export_to_video`` — one after the other. The tool runs the same items through its inline
executor (reading, decoding and encoding overlapped). Both run in this process on the same
latents; the figures printed are seconds per item and their ratio.

    python benchmarks/decode_throughput.py                      # tiny VAE, CPU-sized
    python benchmarks/decode_throughput.py --full --frames 61 --height 480 --width 848 --items 6 --dtype bfloat16

``--full`` uses the real-size Wan2.1 VAE (``AutoencoderKLWan()`` default config, random weights).
"""
from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(root: Path, full: bool, items: int, frames: int, height: int, width: int) -> Path:
    from latent_decoder.demo import build_tiny_wan_vae, save_npy_gz, write_config

    model = root / "model"
    if full:
        from diffusers import AutoencoderKLWan

        AutoencoderKLWan().save_pretrained(model / "vae")
    else:
        build_tiny_wan_vae().save_pretrained(model / "vae")
    write_config(root, str(model), width, height, frames, 16)
    shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    rng = np.random.default_rng(0)
    for i in range(items):
        save_npy_gz(root / "latents" / "prompt_000" / "vid_001" / f"step_{i:03d}.npy.gz",
                    rng.standard_normal(shape).astype(np.float16))
    return root


def baseline(exp: Path, device: str, dtype: str) -> float:
    """The plain serial diffusers loop; returns seconds per item."""
    import torch
    from diffusers import AutoencoderKLWan
    from diffusers.utils import export_to_video
    from diffusers.video_processor import VideoProcessor

    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    vae = AutoencoderKLWan.from_pretrained(str(exp / "model" / "vae"), torch_dtype=tdtype).to(device).eval()
    processor = VideoProcessor(vae_scale_factor=8)
    out = exp / "baseline_videos"
    out.mkdir(exist_ok=True)
    files = sorted((exp / "latents" / "prompt_000" / "vid_001").glob("step_*.npy.gz"))
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1).to(device, tdtype)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1).to(device, tdtype)
    start = time.perf_counter()
    for path in files:
        z = torch.from_numpy(np.load(io.BytesIO(gzip.decompress(path.read_bytes())))).to(device, tdtype)
        with torch.no_grad():
            video = vae.decode(z * std + mean, return_dict=False)[0]
        frames = processor.postprocess_video(video.float(), output_type="np")[0]
        export_to_video(list(frames), str(out / f"{path.name}.mp4"), fps=16)
    elapsed = time.perf_counter() - start
    del vae
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return elapsed / len(files)


def tool(exp: Path, device: str, dtype: str) -> tuple[float, float]:
    """The tool's run (model load excluded); returns (seconds per item, peak device GiB or 0)."""
    import torch

    from latent_decoder.experiment import Experiment
    from latent_decoder.runner import run_decode
    from latent_decoder.settings import CliOptions, resolve_settings
    from latent_decoder.worker import DecodeWorker

    settings = resolve_settings(Experiment.load(exp), CliOptions(device=device, dtype=dtype, force=True))
    worker = DecodeWorker(settings.output, settings.output_dir, device, force=True)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    report = run_decode(settings, worker=worker, progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    assert not report.failed, report.failed
    return report.wall_seconds / len(report.records), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="real-size Wan2.1 VAE (random weights)")
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    root = Path(tempfile.mkdtemp(prefix="ld-bench-"))
    try:
        exp = build(root, args.full, args.items, args.frames, args.height, args.width)
        tool(exp, device, args.dtype)  # warm-up: first-call kernels and ffmpeg start-up
        base = baseline(exp, device, args.dtype)
        ours, peak = tool(exp, device, args.dtype)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    vae = "Wan2.1 full-size" if args.full else "tiny Wan"
    print(f"device: {card}; VAE: {vae}; {args.items} items of {args.frames}x{args.height}x{args.width}; {args.dtype}")
    print(f"plain diffusers loop : {base:8.3f} s/item")
    print(f"latent-decoder inline: {ours:8.3f} s/item  ({base / ours:.2f}x the plain loop)"
          + (f", peak {peak:.2f} GiB" if peak else ""))


if __name__ == "__main__":
    main()
