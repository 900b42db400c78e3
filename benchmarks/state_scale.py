"""State layer at scale: plan, dry run, no-op resume, bookkeeping per item and summary size at 100k items.

    python benchmarks/state_scale.py                 # 100,000 items (about 2 minutes to build)
    python benchmarks/state_scale.py --items 20000   # quicker

No model, no decoding: the latents are tiny files and a fixed-cost fake worker stands in for the
VAE, so what is measured is the tool's own bookkeeping (scan, identity checks, journal, outputs,
summary). Goals (issue "A runner you can trust at 100,000 items"): dry run and no-op resume each
<= 3 s wall and <= 500 MB RSS, bookkeeping <= 2 ms per item, summary <= 2 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from latent_decoder.synthetic import save_npy_gz, write_config  # noqa: E402
from latent_decoder.experiment import Experiment  # noqa: E402
from latent_decoder.journal import Journal, Migration  # noqa: E402
from latent_decoder.layout import OutputLayout  # noqa: E402
from latent_decoder.lifecycle import ItemWork, WorkerIdentity, prepare  # noqa: E402
from latent_decoder.settings import CliOptions, resolve_settings  # noqa: E402

STEPS_PER_VIDEO = 50
VIDEOS_PER_PROMPT = 10


class FakeWorker:
    """Stands in for DecodeWorker: no VAE, the compute stage returns fixed bytes at once."""

    def __init__(self, output, output_dir=None, device="cpu", model=None, name="fake") -> None:
        self.output = output
        self.layout = OutputLayout(Path(output_dir)) if output_dir else None
        self.identity = WorkerIdentity("bench", "none", name, os.getpid())

    def decode_stage(self, work: ItemWork) -> ItemWork:
        work.identity = self.identity
        work.data = None
        work.frames_shape = [1, 8, 8, 3]
        return work

    def encode_stage(self, work: ItemWork) -> ItemWork:
        work.video, work.thumbnail = b"\x00" * 2048, b"\xff" * 512
        return work

    def describe(self) -> dict:
        return {"model": "fake", "device": "none", "worker": "fake"}


def build(root: Path, items: int) -> None:
    import numpy as np

    latent = np.zeros((1, 16, 1, 2, 2), np.float16)
    sample = root / "sample.npy.gz"
    save_npy_gz(sample, latent)
    data = sample.read_bytes()
    write_config(root, "fake/model", 16, 16, 1, 8)
    videos = -(-items // STEPS_PER_VIDEO)
    made = 0
    for v in range(videos):
        video_dir = root / "latents" / f"prompt_{v // VIDEOS_PER_PROMPT:04d}" / f"vid_{v % VIDEOS_PER_PROMPT:03d}"
        video_dir.mkdir(parents=True, exist_ok=True)
        for s in range(min(STEPS_PER_VIDEO, items - made)):
            (video_dir / f"step_{s:03d}.npy.gz").write_bytes(data)
            made += 1


def settings_for(root: Path, **opts):
    return resolve_settings(Experiment.load(root), CliOptions(device="cpu", **opts))


def bookkeeping(root: Path, first: int, prompts: int) -> tuple[int, float]:
    """The real runner (inline executor, journal, atomic outputs) with the fake worker on a slice. The
    gallery views (drawn from the videos, which are junk here) are not bookkeeping: left out."""
    import latent_decoder.runner as runner
    from latent_decoder.runner import run_decode

    runner.draw_views = lambda *args, **kwargs: None

    names = ",".join(f"prompt_{p:04d}" for p in range(first, first + prompts))
    settings = settings_for(root, prompt_filter=names)
    start = time.perf_counter()
    report = run_decode(settings, worker=FakeWorker(settings.output, settings.output_dir), progress=False)
    return len(report.records), time.perf_counter() - start


def fill(root: Path) -> int:
    """Mark every other item done the fast way (one transaction, same records and output files)."""
    settings = settings_for(root)
    layout = OutputLayout(settings.output_dir)
    worker = FakeWorker(settings.output)
    records = []
    from latent_decoder.lifecycle import write_outputs

    with Journal.open(layout, write=True, migration=Migration(settings.experiment.latents_dir, {})) as journal:
        known = journal.entries()
        for step in settings.experiment.discover():
            if step.key in known and known[step.key].status == "ok":
                continue
            records.append(write_outputs(layout, settings.output, worker.encode_stage(worker.decode_stage(prepare(step)))))
        journal.append(records)
    return len(records)


def views_drawn_without_pixels(out: Path) -> None:
    """The views' bookkeeping (state file, index) as the runs that decoded each video would have left
    it, without drawing the junk videos: drawing 100,000 steps would time ffmpeg, not the state layer.
    A no-op resume then checks every video's views (one digest query, a stat per view file) and
    draws none, as on a folder kept up to date by its runs."""
    from latent_decoder.views import build
    from latent_decoder.views.gallery import VideoEntry

    real = build.build_video
    build.build_video = lambda root, view, note=None: VideoEntry(view.digest.prompt, view.digest.video,
                                                                 view.digest.signature, built=True)
    try:
        build.build_views(out)
    finally:
        build.build_video = real


def timed_cli(*args: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, output) of ``python -m latent_decoder ARGS`` in a fresh process."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "latent_decoder", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"latent-decoder {' '.join(args)} failed ({proc.returncode}):\n{text}")
    return wall, usage.ru_maxrss / 1024, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--bookkeeping-prompts", type=int, default=6,
                        help="prompts decoded by the real runner with the fake worker (x500 items each)")
    parser.add_argument("--dir", type=Path, help="work folder [default: a temp folder, removed after]")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="ld-state-scale-") if args.dir is None else None
    root = Path(tmp.name) if tmp else args.dir
    try:
        t = time.perf_counter()
        build(root, args.items)
        print(f"built {args.items:,} latent files in {time.perf_counter() - t:.1f}s under {root}")

        dry_wall_fresh, rss_fresh, _ = timed_cli("decode", str(root), "--dry-run", "--device", "cpu")
        # Per item = the slope between a small and a large run: the run's fixed cost (scanning and
        # planning the whole experiment) cancels out.
        n1, wall1 = bookkeeping(root, 0, 1)
        n2, wall2 = bookkeeping(root, 1, args.bookkeeping_prompts)
        n, wall = n1 + n2, wall1 + wall2
        per_item_ms = (wall2 - wall1) / (n2 - n1) * 1000
        t = time.perf_counter()
        filled = fill(root)
        print(f"bookkeeping run: {n:,} items in {wall:.2f}s; filled {filled:,} more in {time.perf_counter() - t:.1f}s")
        views_drawn_without_pixels(root / "latents_videos")

        dry_wall, dry_rss, dry_out = timed_cli("decode", str(root), "--dry-run", "--device", "cpu")
        noop_wall, noop_rss, noop_out = timed_cli("decode", str(root), "--device", "cpu")
        assert f"{args.items} already done" in noop_out, noop_out
        summary_bytes = (root / "latents_videos" / "decode_summary.json").stat().st_size
        journal_bytes = (root / "latents_videos" / ".latent-decoder.db").stat().st_size
        from latent_decoder.runner import run_decode

        one = settings_for(root, prompt_filter="prompt_0000", step_filter="0", force=True)
        t = time.perf_counter()
        run_decode(one, worker=FakeWorker(one.output, one.output_dir), progress=False)
        one_wall = time.perf_counter() - t
        rows = [
            ("dry run, nothing decoded yet", f"{dry_wall_fresh:.2f} s", f"{rss_fresh:.0f} MB", "<= 3 s, <= 500 MB"),
            ("dry run, all done", f"{dry_wall:.2f} s", f"{dry_rss:.0f} MB", "<= 3 s, <= 500 MB"),
            ("no-op resume (views checked, all current)", f"{noop_wall:.2f} s", f"{noop_rss:.0f} MB", "<= 3 s, <= 500 MB"),
            ("bookkeeping per item (real runner, fake decode; slope)", f"{per_item_ms:.2f} ms", "", "<= 2 ms"),
            ("driver capacity from that", f"{1000 / per_item_ms:.0f} items/s", "", ""),
            ("decode_summary.json", f"{summary_bytes / 1e6:.3f} MB", "", "<= 2 MB"),
            ("journal", f"{journal_bytes / 1e6:.1f} MB", "", ""),
            ("one-item filtered --force run, in-process", f"{one_wall:.2f} s", "", ""),
        ]
        print(f"\nstate layer at {args.items:,} items ({os.cpu_count()} cores, RSS = peak of the process)")
        width = max(len(r[0]) for r in rows)
        for name, value, rss, goal in rows:
            print(f"  {name:<{width}}  {value:>12}  {rss:>8}  {goal}")
        summary = json.loads((root / "latents_videos" / "decode_summary.json").read_text())
        print(f"summary: {summary['successful_steps']:,}/{summary['total_steps']:,} ok")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
