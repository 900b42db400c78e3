#!/usr/bin/env python3
"""Ray actors overlap decode and encode; how many items per second the driver commits.

1. Overlap. One actor, a stand-in worker whose decode sleeps D and whose encode sleeps E (no VAE,
   no x264). A serial actor needs N x (D + E) for N items; one that decodes item i+1 while it
   encodes item i needs about N x max(D, E). Printed: the actor's wall time for N items (start-up
   left out) beside both. Sleeping encodes also overlap one another (the actor holds a few items
   at once), so with E > D it can beat N x max(D, E); real x264 encodes share the node's cores.
2. Driver capacity. With ``--io driver`` the driver reads every latent, writes every output and
   commits every record to the journal. The real runner, one actor whose decode and encode cost
   nothing, many tiny items: items committed per second, and CPU per item of the scheduling thread
   and of the whole driver process, from the first result to the last. Goal: >= 200 items/s.

    python benchmarks/ray_overlap.py                          # 24 items per pair; 2000 items for the driver
    python benchmarks/ray_overlap.py --items 48 --pairs 0.5,0.3 --driver-items 5000
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
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local runtime


def stand_in_worker(decode_s: float, encode_s: float) -> type:
    """DecodeWorker whose VAE call sleeps ``decode_s`` and whose encode sleeps ``encode_s`` and returns
    fixed bytes (built here so Ray ships it by value)."""
    from latent_decoder.worker import DecodeWorker

    class FixedCostWorker(DecodeWorker):
        def decode(self, latent: np.ndarray, source: str = "<array>", condition: object = None) -> np.ndarray:
            time.sleep(decode_s)
            return np.zeros((1, 8, 8, 3), dtype=np.uint8)

        def encode_stage(self, work):
            time.sleep(encode_s)
            work.video, work.thumbnail, work.frames = b"\x00" * 2048, b"\xff" * 512, None
            return work

    return FixedCostWorker


def build(root: Path, prompts: int, steps: int) -> Path:
    """A tiny Wan VAE and ``prompts x steps`` tiny latents."""
    from latent_decoder.synthetic import build_synthetic_experiment, build_tiny_wan_vae

    if not (root / "model" / "vae").exists():
        build_tiny_wan_vae(seed=0).save_pretrained(root / "model" / "vae")
    return build_synthetic_experiment(root / f"exp-{prompts}x{steps}", model_dir=root / "model", prompts=prompts,
                                 steps=steps, frames=1, height=16, width=16)


def overlap(exp: Path, decode_s: float, encode_s: float) -> tuple[float, int, int]:
    """(seconds, items, items in flight on the actor) to decode every item of ``exp`` on one actor."""
    from latent_decoder.executors.ray import RayExecutor
    from latent_decoder.layout import OutputLayout
    from latent_decoder.pipeline import run_items
    from latent_decoder.experiment import Experiment
    from latent_decoder.plan import plan_run
    from latent_decoder.settings import CliOptions, resolve_settings

    settings = resolve_settings(Experiment.load(exp), CliOptions(workers=1, force=True))
    shutil.rmtree(settings.output_dir, ignore_errors=True)
    todo = plan_run(settings).todo
    executor = RayExecutor(settings, worker_cls=stand_in_worker(decode_s, encode_s))
    done: list = []
    try:
        executor.start()
        start = time.perf_counter()
        run_items(todo, executor, OutputLayout(settings.output_dir), settings.output,
                  lambda step, record: done.append(record))
        seconds = time.perf_counter() - start
        concurrency = executor.pool.live[0].concurrency
    finally:
        executor.close()
    if sum(r.ok for r in done) != len(todo):
        raise SystemExit(f"only {sum(r.ok for r in done)} of {len(todo)} items decoded")
    return seconds, len(todo), concurrency


def driver_capacity(exp: Path, workers: int) -> tuple[int, float, float, float, float]:
    """(items, items/s committed, CPU ms per item of the scheduling thread and of the whole driver
    process, all from the first result to the last; the run's seconds with start-up): the real runner
    with cost-free actors. The gallery views (drawn from the junk videos) are left out."""
    import latent_decoder.runner as runner
    from latent_decoder.experiment import Experiment
    from latent_decoder.settings import CliOptions, resolve_settings

    runner.draw_views = lambda *args, **kwargs: None
    settings = resolve_settings(Experiment.load(exp), CliOptions(workers=workers, io="driver", force=True))
    shutil.rmtree(settings.output_dir, ignore_errors=True)
    stamps: list[tuple[float, float, float]] = []  # on the scheduling thread: wall, its CPU, the process's
    start = time.perf_counter()
    report = runner.run_decode(settings, progress=False, worker_cls=stand_in_worker(0.0, 0.0),
                               on_result=lambda step, record: stamps.append(
                                   (time.perf_counter(), time.thread_time(), time.process_time())))
    wall = time.perf_counter() - start
    if report.succeeded != len(stamps) or report.exit_code != 0:
        raise SystemExit(f"driver run failed: {report.succeeded} of {len(stamps)} items decoded")
    n = len(stamps) - 1
    wall_s, thread_s, process_s = (b - a for a, b in zip(stamps[0], stamps[-1]))
    return len(stamps), n / wall_s, thread_s / n * 1000, process_s / n * 1000, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=24, help="items per (decode, encode) pair")
    parser.add_argument("--pairs", nargs="*", default=["0.2,0.1", "0.2,0.2", "0.1,0.2"],
                        help="stand-in costs in seconds, DECODE,ENCODE (none: skip)")
    parser.add_argument("--driver-items", type=int, default=2000, help="items for the driver capacity (0: skip)")
    parser.add_argument("--driver-workers", type=int, default=1, help="cost-free actors feeding the driver")
    args = parser.parse_args()
    pairs = [tuple(float(x) for x in pair.split(",")) for pair in args.pairs]

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Logical CPUs for the actors: the stand-ins sleep, so they need not be real cores.
        ray.init(address="local", num_cpus=args.driver_workers, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 2**20)
        try:
            if pairs:
                exp = build(root, 1, args.items)
                print(f"overlap: one actor, {args.items} items per row ({os.cpu_count()} cores)")
                print(f"{'decode':>7} {'encode':>7} {'in flight':>9} {'wall':>7} {'N x max(D,E)':>12} "
                      f"{'N x (D+E)':>10}")
            for decode_s, encode_s in pairs:
                seconds, n, concurrency = overlap(exp, decode_s, encode_s)
                print(f"{decode_s:>6.2f}s {encode_s:>6.2f}s {concurrency:>9} {seconds:>6.2f}s "
                      f"{n * max(decode_s, encode_s):>11.2f}s {n * (decode_s + encode_s):>9.2f}s")
            if args.driver_items:
                steps = 50
                exp = build(root, -(-args.driver_items // steps), steps)
                n, rate, thread_ms, process_ms, wall = driver_capacity(exp, args.driver_workers)
                print(f"\ndriver (--io driver, real runner, {args.driver_workers} cost-free actor(s)), {n} items:\n"
                      f"  {rate:.0f} items/s committed (goal >= 200); whole run {wall:.1f} s with start-up\n"
                      f"  CPU per item: scheduling thread {thread_ms:.2f} ms ({1000 / thread_ms:.0f} items/s on a "
                      f"core of its own), driver process {process_ms:.2f} ms (with its read and write threads)")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
