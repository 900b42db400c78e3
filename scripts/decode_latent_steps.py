#!/usr/bin/env python3
"""Compatibility entry point with the original tool's flags.

    python scripts/decode_latent_steps.py EXPERIMENT_DIR [--output-dir D] [--device auto|cpu|cuda:N]
        [--prompt-filter P] [--video-filter V] [--step-filter S] [--fps N] [--quality Q] [--scale F]
        [--compress-preset high-quality|balanced|small-file|tiny] [--dry-run] [--verbose]

It runs ``latent-decoder decode`` with the same meaning; new work should call that directly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_decoder.cli import cli  # noqa: E402

# The original presets: (quality 0-10, resolution scale).
PRESETS = {"high-quality": (7.0, 1.0), "balanced": (3.0, 1.0), "small-file": (1.0, 0.75), "tiny": (0.5, 0.5)}


def translate(argv: list[str]) -> list[str]:
    """The original flags as ``latent-decoder decode`` arguments."""
    parser = argparse.ArgumentParser(description="Decode latent tensors back to videos using the model's VAE")
    parser.add_argument("experiment_dir", type=Path)
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt-filter")
    parser.add_argument("--video-filter")
    parser.add_argument("--step-filter")
    parser.add_argument("--fps", type=float)
    parser.add_argument("--quality", type=float, default=3.0, help="0-10, lower = smaller file [default: 3.0]")
    parser.add_argument("--scale", type=float, default=1.0, help="resolution factor [default: 1.0]")
    parser.add_argument("--compress-preset", choices=sorted(PRESETS))
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    quality, scale = PRESETS[args.compress_preset] if args.compress_preset else (args.quality, args.scale)
    out = ["decode", str(args.experiment_dir), "--device", args.device, "--quality", str(quality),
           "--scale", str(scale)]
    for flag, value in (("--output-dir", args.output_dir), ("--prompt-filter", args.prompt_filter),
                        ("--video-filter", args.video_filter), ("--step-filter", args.step_filter),
                        ("--fps", args.fps)):
        if value is not None:
            out += [flag, str(value)]
    out += ["--verbose"] * args.verbose + ["--dry-run"] * args.dry_run
    return out


if __name__ == "__main__":
    cli(translate(sys.argv[1:]), prog_name="decode_latent_steps.py")
