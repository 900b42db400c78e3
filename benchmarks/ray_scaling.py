#!/usr/bin/env python3
"""How the Ray executor scales: throughput with 1, 2, 4 workers and a stand-in decoder of fixed cost.

The stand-in sleeps ``--cost`` seconds per item instead of running the VAE, so the figures
measure the Ray path alone (driver reads the latent, ships it, the actor "decodes", encodes a
tiny clip, ships it back, the driver commits outputs and record). Goal: N workers reach
>= 0.95 x N of one worker's rate, i.e. a per-item overhead well under 50 ms. The table splits
each item's time beyond the stand-in's cost into what the worker itself spent reading and
encoding (x264 runs as a subprocess: tens of ms even for a tiny clip, and N workers share this
machine's cores) and the rest, the Ray path.

    python benchmarks/ray_scaling.py                       # 48 items, 0.25 s each, 1/2/4 workers
    python benchmarks/ray_scaling.py --items 96 --cost 0.5 --workers 1 2 4 8

Actor start-up (importing torch, loading the VAE) is left out of the timings; it is paid once
per worker per run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def stand_in_worker(cost: float) -> type:
    """DecodeWorker with ``decode`` replaced by a fixed-cost sleep (built here so Ray ships it by value)."""
    from latent_decoder.worker import DecodeWorker

    class FixedCostWorker(DecodeWorker):
        def decode(self, latent: np.ndarray, source: str = "<array>", condition: object = None) -> np.ndarray:
            time.sleep(cost)
            return np.zeros((5, 32, 48, 3), dtype=np.uint8)

    return FixedCostWorker


def run_once(exp: Path, workers: int, cost: float) -> tuple[float, int, float]:
    """(seconds, items, mean seconds the workers spent loading + encoding per item) to decode
    every item of ``exp`` on ``workers`` actors, start-up excluded."""
    from latent_decoder.executors.ray import RayExecutor
    from latent_decoder.layout import OutputLayout
    from latent_decoder.pipeline import run_items
    from latent_decoder.experiment import Experiment
    from latent_decoder.plan import plan_run
    from latent_decoder.settings import CliOptions, resolve_settings

    settings = resolve_settings(Experiment.load(exp), CliOptions(workers=workers, force=True))
    shutil.rmtree(settings.output_dir, ignore_errors=True)
    todo = plan_run(settings).todo
    executor = RayExecutor(settings, worker_cls=stand_in_worker(cost))
    done: list = []
    try:
        executor.start()
        start = time.perf_counter()
        run_items(todo, executor, OutputLayout(settings.output_dir), settings.output,
                  lambda step, record: done.append(record))
        seconds = time.perf_counter() - start
    finally:
        executor.close()
    ok = [r for r in done if r is not None and r.ok]
    if len(ok) != len(todo):
        raise SystemExit(f"only {len(ok)} of {len(todo)} items decoded")
    return seconds, len(todo), sum(r.load_seconds + r.encode_seconds for r in ok) / len(ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48, help="work items (prompts x steps)")
    parser.add_argument("--cost", type=float, default=0.25, help="seconds the stand-in decoder takes per item")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()

    import ray

    from latent_decoder.synthetic import build_synthetic_experiment, build_tiny_wan_vae

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_wan_vae(seed=0).save_pretrained(root / "model" / "vae")
        prompts = max(1, args.items // 8)
        exp = build_synthetic_experiment(root / "exp", model_dir=root / "model", prompts=prompts, steps=8,
                                    frames=5, height=32, width=48)
        # Logical CPUs for the actors: the stand-in sleeps, so they need not be real cores.
        ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 2**20)
        try:
            print(f"{prompts * 8} items, stand-in decode {args.cost * 1000:.0f} ms each")
            print(f"{'workers':>7} {'seconds':>8} {'items/s':>8} {'vs 1 x N':>9} {'worker load+encode':>19} "
                  f"{'Ray path':>9}   (per item)")
            base = None
            for n in args.workers:
                seconds, items, own = run_once(exp, n, args.cost)
                rate = items / seconds
                base = base or rate / n
                ray_ms = (seconds * n / items - args.cost - own) * 1000
                print(f"{n:>7} {seconds:>8.2f} {rate:>8.2f} {rate / (base * n):>9.2f} {own * 1000:>16.1f} ms "
                      f"{ray_ms:>6.1f} ms")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
