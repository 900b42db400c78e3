#!/usr/bin/env python3
"""How fast ``--decoder preview`` is: the projection alone, and whole runs beside the full VAE.

1. Projection at latent resolution of a ``[1, 16, 16, 60, 106]`` float16 Wan2.1 latent (61 frames at
   848x480) with the published factors, on ONE CPU core (numpy/BLAS/torch threads set to 1): steps/s
   (goal: at least 500). Also the whole per-step CPU work before encoding (gunzip + parse + finite
   check + projection), and the expansion to 61x480x848 frames that encoding needs.
2. End to end on this machine: steps/s to written MP4s of ``decode --decoder preview`` beside
   ``decode`` with the (tiny, random) VAE, on the same demo experiment, in-process on CPU.

    python benchmarks/preview_throughput.py                        # CPU-friendly sizes
    python benchmarks/preview_throughput.py --frames 61 --height 480 --width 848 --prompts 2 --steps 4

Figures are printed, nothing is asserted.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy is imported
    os.environ[_var] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def rate(fn, seconds: float = 2.0) -> tuple[float, float]:
    """Calls per wall second and per CPU second of ``fn`` over about ``seconds`` (after one warm-up
    call). With one thread the CPU-time figure is what one idle core would do, also on a busy machine."""
    fn()
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start), count / max(time.process_time() - cpu, 1e-9)


def show(label: str, rates: tuple[float, float], goal: str = "") -> None:
    wall, cpu = rates
    print(f"   {label:40s} {wall:7.0f} steps/s wall, {cpu:7.0f} per CPU-second ({1000 / cpu:.2f} ms){goal}")


def projection(args: argparse.Namespace) -> None:
    import torch

    from latent_decoder.latents import parse_latent
    from latent_decoder.previews.factors import published_map
    from latent_decoder.previews.projection import expand, project

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 16, 16, 60, 106)).astype(np.float16)
    wan = published_map("wan2.1")
    buf = io.BytesIO()
    np.save(buf, latent)
    stored = gzip.compress(buf.getvalue(), compresslevel=1)

    print("1. one CPU core, [1, 16, 16, 60, 106] float16 Wan2.1 latent (61 frames, 848x480)")
    print(f"   (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    show("projection at latent resolution:", rate(lambda: project(latent, wan), args.seconds), "; goal >= 500")
    show("+ gunzip, parse, finite check:", rate(lambda: project(parse_latent(stored, Path("x.npy.gz")), wan),
                                                args.seconds))
    small = project(latent, wan)
    show("expansion to 61x480x848 (for encoding):", rate(lambda: expand(small, 61, 4, 480, 848), args.seconds))


def end_to_end(args: argparse.Namespace) -> None:
    from latent_decoder.synthetic import build_synthetic_experiment
    from latent_decoder.experiment import Experiment
    from latent_decoder.runner import run_decode
    from latent_decoder.settings import CliOptions, resolve_settings

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LATENT_DECODER_PREVIEW_DIR"] = str(Path(tmp) / "preview-cache")  # published factors only
        exp = build_synthetic_experiment(Path(tmp) / "exp", prompts=args.prompts, steps=args.steps, frames=args.frames,
                                    height=args.height, width=args.width)
        items = args.prompts * args.steps
        print(f"2. end to end, {items} steps of {args.frames} frames {args.width}x{args.height} to MP4 "
              f"(tiny random Wan VAE, in-process on CPU, {os.cpu_count()} cores)")
        figures = {}
        for decoder in ("preview", "vae"):
            opts = CliOptions(decoder=decoder, device="cpu", executor="inline",
                              output_dir=Path(tmp) / f"out_{decoder}")
            done: list[float] = []
            start = time.perf_counter()
            report = run_decode(resolve_settings(Experiment.load(exp), opts), progress=False,
                                on_result=lambda step, record: done.append(time.perf_counter()))
            wall = time.perf_counter() - start
            assert report.succeeded == items, report.failed[:1]
            decode = sum(r.decode_seconds for r in report.records.values()) / items
            encode = sum(r.encode_seconds for r in report.records.values()) / items
            steady = (items - 1) / (done[-1] - done[0]) if items > 1 and done[-1] > done[0] else float("nan")
            figures[decoder] = steady
            print(f"   --decoder {decoder:7s} {steady:7.2f} steps/s once running, {items / wall:.2f} steps/s with "
                  f"setup ({wall:.1f} s); per step: decode {decode * 1000:.1f} ms, encode {encode * 1000:.1f} ms")
        print(f"   preview / vae (once running): {figures['preview'] / figures['vae']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per projection figure")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    projection(args)
    end_to_end(args)


if __name__ == "__main__":
    main()
