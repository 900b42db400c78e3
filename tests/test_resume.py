"""Resume, kill, lock and interrupt guarantees of ``python -m latent_decoder decode EXP``,
checked with real subprocesses where the process matters: SIGKILL at several moments, a concurrent
second run, Ctrl-C (SIGINT to the process group, as a terminal sends it) and ``kill PID`` (SIGTERM).
The runs that only resume (and dry runs) run the same CLI in this process (``CliRunner``).

Completion is decided from disk, so everything here is checked on disk: records, outputs
(opened and counted frame by frame), the summary, and leftover temp files.

Subprocesses run with ``--device cpu`` (see ``DEVICE``) and ``OMP_NUM_THREADS=1``: on a 2-core
box torch's OpenMP threads and the encoder's ffmpeg otherwise fight for the cores and per-item
time swings by 10-20x, which makes the suite slow without changing what it checks.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import imageio_ffmpeg
import pytest

from click.testing import CliRunner, Result

from latent_decoder.cli import cli

from conftest import REPO_ROOT, journal_records, run_cli

TEMP_MARK = ".ld-tmp-"
LOCK_NAME = ".latent-decoder.lock"
SUB_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# An explicit device: with --device auto the CLI imports torch (~3-5 s) just to count GPUs, even
# for a dry run or a run with nothing left to do; this suite runs a dozen of those.
DEVICE = ("--device", "cpu")

FRAMES = 9  # latent T = (9 - 1) / 4 + 1 = 3 -> Wan decodes 9 frames
WIDTH, HEIGHT = 48, 32
BIG = dict(prompts=2, videos=1, steps=8, frames=FRAMES, height=HEIGHT, width=WIDTH)  # 16 items
SMALL = dict(prompts=1, videos=1, steps=3, frames=FRAMES, height=HEIGHT, width=WIDTH)

STARTUP_DEADLINE = 120.0  # seconds until a run shows progress (imports + model load on a loaded box)


# ---------------------------------------------------------------------------------------- helpers

class Run:
    """A ``decode`` subprocess in its own session (so a Ctrl-C can go to its whole group)."""

    def __init__(self, tmp: Path, exp: Path, *args: str, ignoring_sigint: bool = False) -> None:
        n = len(list(tmp.glob("run*.err")))
        self.err_path = tmp / f"run{n}.err"
        self.out_path = tmp / f"run{n}.out"
        # ignoring_sigint: started as a shell script starts a background job (`latent-decoder decode EXP &`)
        ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignoring_sigint else None
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "latent_decoder", "decode", str(exp), *DEVICE, *args],
                cwd=REPO_ROOT, env={**os.environ, **SUB_ENV}, stdout=out, stderr=err, start_new_session=True,
                preexec_fn=ignore,
            )
        self.pid = self.proc.pid

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float = STARTUP_DEADLINE) -> None:
        """Poll ``predicate`` until true; fail (with the run's output) on timeout or early exit."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                pytest.fail(f"run exited ({self.proc.returncode}) before {what}\nstderr:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\nstderr:\n{self.stderr}")
            time.sleep(0.01)

    def signal(self, signum: int, group: bool = False) -> None:
        if group:
            os.killpg(self.pid, signum)
        else:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"run did not exit within {timeout}s\nstderr:\n{self.stderr}")


@pytest.fixture
def runs(tmp_path: Path):
    """Start decode subprocesses; any still alive at teardown are killed."""
    started: list[Run] = []

    def start(exp: Path, *args: str, ignoring_sigint: bool = False) -> Run:
        run = Run(tmp_path, exp, *args, ignoring_sigint=ignoring_sigint)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


def decode(exp: Path, *args: str) -> Result:
    """``decode EXP ARGS`` in this process: a resume or a dry run, where the process does not matter."""
    return CliRunner().invoke(cli, ["decode", str(exp), *DEVICE, *args])


def read_records(out: Path) -> dict[str, dict]:
    """Item key -> the journal's latest successful attempt."""
    return {key: rec for key, rec in journal_records(out).items() if rec["status"] == "ok"}


def record_files(out: Path) -> list[str]:
    return sorted(read_records(out))


def record_count(out: Path) -> int:
    return len(read_records(out))


def fingerprints(out: Path) -> dict[str, tuple]:
    """Per item: its journal attempt, the video's inode + mtime, and ``finished_at``. A re-decode adds
    an attempt and replaces the files (os.replace), so any of these changing means it was decoded again."""
    result = {}
    for key, rec in read_records(out).items():
        vs = (out / rec["outputs"]["video"]).stat()
        result[key] = (rec["attempt"], vs.st_ino, vs.st_mtime_ns, rec["finished_at"])
    return result


def journal_intact(out: Path) -> None:
    import sqlite3

    with sqlite3.connect(out / ".latent-decoder.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` with its inode, size and mtime."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def temp_leftovers(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if TEMP_MARK in p.name]


def expected_keys(exp: Path) -> set[str]:
    latents = exp / "latents"
    return {p.relative_to(latents).as_posix().removesuffix(".npy.gz") for p in latents.rglob("step_*.npy.gz")}


def video_info(path: Path) -> tuple[int, tuple[int, int], float]:
    """(frames actually decodable, (width, height), fps) of an MP4, read with ffmpeg."""
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    count = sum(1 for _ in gen)
    return count, tuple(meta["size"]), float(meta["fps"])


def report_counts(stderr: str) -> tuple[int, int, int]:
    """(ok, failed, already done) from the run's report line."""
    m = re.search(r"(\d+) ok, (\d+) failed, (\d+) already done", stderr)
    assert m, f"no report line in stderr:\n{stderr}"
    return int(m[1]), int(m[2]), int(m[3])


def check_consistent(exp: Path, *, complete: bool, width: int, height: int) -> dict:
    """The output folder agrees with itself: summary == journal == files on disk, every video
    whole, no temp files. Returns the summary."""
    out = exp / "latents_videos"
    summary = json.loads((out / "decode_summary.json").read_text())
    journal_intact(out)
    records = read_records(out)
    assert "steps" not in summary, "per-step records belong in the journal, not the summary"
    assert summary["total_steps"] == len(expected_keys(exp)), "the summary counts every step of the experiment"
    assert summary["successful_steps"] == len(records)
    assert summary["failed_steps"] == 0, summary["failures"]
    assert summary["pending_steps"] == summary["total_steps"] - len(records)
    assert sum(v["total_steps"] for v in summary["video_summaries"].values()) == summary["total_steps"]
    assert temp_leftovers(out) == []
    mp4s = sorted(out.rglob("step_*.mp4"))  # not progression.mp4 (views/)
    assert len(mp4s) == summary["successful_steps"], "videos on disk differ from the summary's counters"
    assert {p.relative_to(out).with_suffix("").as_posix() for p in mp4s} == set(records)
    assert len(list(out.rglob("step_*.jpg"))) == len(mp4s)
    for mp4 in mp4s:
        assert video_info(mp4)[:2] == (FRAMES, (width, height)), f"{mp4} is incomplete or wrong"
    if complete:
        assert set(records) == expected_keys(exp)
        assert summary["total_steps"] == len(expected_keys(exp))
    return summary


# ---------------------------------------------------------------------------------------- tests

def test_sigkill_at_any_moment_then_resume(make_experiment, runs) -> None:
    exp = make_experiment("kill", **BIG)
    out = exp / "latents_videos"
    total = len(expected_keys(exp))
    assert total == 16

    # Everything each run found done must survive every later run untouched.
    done_before: dict[str, tuple] = {}

    # 1. Killed while loading the model: it holds the lock, nothing decoded yet.
    run = runs(exp)

    def holds_lock() -> bool:
        try:
            return json.loads((out / LOCK_NAME).read_text()).get("pid") == run.pid
        except (OSError, ValueError):
            return False

    run.wait_until("the lock is taken", holds_lock)
    run.signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    assert record_count(out) == 0

    # 2. Killed as soon as its first item is recorded; 3. killed mid-run, items in flight.
    for new_items in (1, 4):
        done_before.update(fingerprints(out))
        start_count = record_count(out)
        run = runs(exp)
        run.wait_until(f"{new_items} more record(s)", lambda: record_count(out) >= start_count + new_items)
        run.signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
    killed_count = record_count(out)
    assert 5 <= killed_count < total, "kills must land mid-run for this test to mean anything"

    # Whatever a kill mid-write leaves, plus one leftover of each kind for certain.
    video_dir = out / "prompt_001" / "vid_001"
    video_dir.mkdir(parents=True, exist_ok=True)
    (video_dir / f".step_007.mp4{TEMP_MARK}999999-deadbeef").write_bytes(b"\x00\x00\x00\x18ftypisom half")
    (video_dir / f".step_006{TEMP_MARK}999999-0badf00d").mkdir()
    (video_dir / f".step_006{TEMP_MARK}999999-0badf00d" / "frame_0000.png").write_bytes(b"\x89PNG")

    done_before.update(fingerprints(out))
    final = decode(exp)
    assert final.exit_code == 0, final.stderr
    assert report_counts(final.stderr) == (total - killed_count, 0, killed_count), final.stderr

    summary = check_consistent(exp, complete=True, width=WIDTH, height=HEIGHT)
    assert summary["total_steps"] == summary["successful_steps"] == total
    assert {k: v["total_steps"] for k, v in summary["video_summaries"].items()} == {
        "prompt_000/vid_001": 8, "prompt_001/vid_001": 8}
    assert summary["last_run"]["interrupted"] is False

    after = fingerprints(out)
    assert len(done_before) == killed_count
    redone = [k for k, fp in done_before.items() if after[k] != fp]
    assert redone == [], f"items finished before a kill were decoded again: {redone}"


def test_resume_without_kills(make_experiment) -> None:
    exp = make_experiment("resume", **SMALL)
    out = exp / "latents_videos"

    # A dry run on a fresh experiment writes nothing at all.
    dry = decode(exp, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "dry run: 3 items (3 decode)" in dry.stdout, dry.stdout
    assert not out.exists()

    first = decode(exp)
    assert first.exit_code == 0, first.stderr
    assert report_counts(first.stderr) == (3, 0, 0)
    check_consistent(exp, complete=True, width=WIDTH, height=HEIGHT)

    def outputs_snapshot() -> dict[str, tuple]:
        """Everything but what every run rewrites (the summary, and the lock's pid/host)."""
        return {k: v for k, v in tree_snapshot(out).items() if k not in ("decode_summary.json", LOCK_NAME)}

    # Second run: everything already done, nothing touched.
    before = outputs_snapshot()
    prints_before = fingerprints(out)
    again = decode(exp)
    assert again.exit_code == 0, again.stderr
    assert report_counts(again.stderr) == (0, 0, 3), again.stderr
    assert outputs_snapshot() == before
    check_consistent(exp, complete=True, width=WIDTH, height=HEIGHT)

    # Dry runs report what changed and write nothing (not even the summary).
    before_all = tree_snapshot(out)
    for changed in (["--fps", "4"], ["--dtype", "bfloat16"]):  # each setting alone makes every item stale
        dry = decode(exp, *changed, "--dry-run")
        assert dry.exit_code == 0, dry.stderr
        assert "dry run: 3 items (3 decode again (settings changed))" in dry.stdout, (changed, dry.stdout)
    assert tree_snapshot(out) == before_all

    # One video deleted: only that item is decoded again.
    victim = "prompt_000/vid_001/step_001"
    (out / f"{victim}.mp4").unlink()
    before_all = tree_snapshot(out)
    dry = decode(exp, "--dry-run")
    assert "prompt_000/vid_001: 3 steps, 2 done, 1 to decode" in dry.stdout, dry.stdout
    assert "dry run: 3 items (2 done, 1 decode again (outputs missing))" in dry.stdout, dry.stdout
    assert tree_snapshot(out) == before_all
    redo = decode(exp)
    assert redo.exit_code == 0, redo.stderr
    assert report_counts(redo.stderr) == (1, 0, 2), redo.stderr
    now = fingerprints(out)
    assert {k for k in now if now[k] != prints_before[k]} == {victim}
    check_consistent(exp, complete=True, width=WIDTH, height=HEIGHT)

    # --fps and --dtype changed: everything decoded again; records and videos carry the new settings.
    before = fingerprints(out)
    r = decode(exp, "--fps", "4", "--dtype", "bfloat16")
    assert r.exit_code == 0, r.stderr
    assert report_counts(r.stderr) == (3, 0, 0), r.stderr
    after = fingerprints(out)
    assert all(after[k] != before[k] for k in before)
    for rec in read_records(out).values():
        assert rec["settings"]["fps"] == 4.0 and rec["settings"]["dtype"] == "bfloat16"
    for mp4 in out.rglob("step_*.mp4"):
        assert video_info(mp4)[2] == pytest.approx(4.0)
    summary = check_consistent(exp, complete=True, width=WIDTH, height=HEIGHT)
    assert summary["settings"]["dtype"] == "bfloat16" and summary["settings"]["fps"] == 4.0

    # The same settings again: done, nothing touched.
    before = outputs_snapshot()
    r = decode(exp, "--fps", "4", "--dtype", "bfloat16")
    assert report_counts(r.stderr) == (0, 0, 3), r.stderr
    assert outputs_snapshot() == before

    # --force: everything decoded again even though it is done.
    before = fingerprints(out)
    r = decode(exp, "--fps", "4", "--dtype", "bfloat16", "--force")
    assert r.exit_code == 0, r.stderr
    assert report_counts(r.stderr) == (3, 0, 0), r.stderr
    after = fingerprints(out)
    assert all(after[k][:3] != before[k][:3] for k in before)
    check_consistent(exp, complete=True, width=WIDTH, height=HEIGHT)


def test_second_run_is_refused_while_one_holds_the_lock(make_experiment, runs) -> None:
    # Items of 64x96, so that the first run is still decoding when the refused one has ended.
    exp = make_experiment("lock", **{**BIG, "steps": 10, "height": 64, "width": 96})
    out = exp / "latents_videos"
    first = runs(exp)
    first.wait_until("the first record", lambda: record_count(out) >= 1)
    # Stands for a temp file the running run is writing: a refused run must not clean it up.
    in_flight = out / "prompt_001" / "vid_001" / f".step_009.mp4{TEMP_MARK}{first.pid}-01234567"
    in_flight.parent.mkdir(parents=True, exist_ok=True)
    in_flight.write_bytes(b"being written")

    second = run_cli("decode", str(exp), *DEVICE, env=SUB_ENV)  # a real process: its whole stderr is seen
    assert second.returncode == 2, second.stderr
    assert first.proc.poll() is None, "the first run finished too early for this test to mean anything"
    lines = [line for line in second.stderr.splitlines() if "another latent-decoder run" in line]
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0], second.stderr
    assert "Traceback" not in second.stderr
    assert second.stderr.rstrip().splitlines()[-1] == lines[0], "the refusal should be the last word"
    # The refused run touched nothing: no summary of its own, the running run's temp files left alone.
    assert not (out / "decode_summary.json").exists()
    assert in_flight.exists()

    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL

    # The kernel dropped the dead run's flock: a new run takes the folder at once.
    done = sorted(record_files(out))
    step = done[0].rsplit("/", 1)[1]
    prompt = done[0].split("/", 1)[0]
    r = decode(exp, "--prompt-filter", prompt, "--step-filter", step)
    assert r.exit_code == 0, r.stderr
    assert report_counts(r.stderr) == (0, 0, 1), r.stderr
    assert "another latent-decoder run" not in r.stderr
    # It held the lock, so it cleaned up after the killed run; its summary covers every record.
    assert temp_leftovers(out) == []
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["successful_steps"] == record_count(out)
    assert summary["total_steps"] == len(expected_keys(exp)), "the summary counts the steps never decoded too"
    assert summary["pending_steps"] == summary["total_steps"] - record_count(out) > 0


def test_ctrl_c_and_sigterm_keep_finished_items(make_experiment, runs) -> None:
    exp = make_experiment("intr", **{**BIG, "steps": 12})  # room for two interrupts to land mid-run
    out = exp / "latents_videos"
    total = len(expected_keys(exp))

    def interrupted_cleanly(run: Run, code: int, kept_before: int) -> int:
        assert run.wait(60) == code, run.stderr
        assert "interrupted:" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        summary = check_consistent(exp, complete=False, width=WIDTH, height=HEIGHT)
        assert summary["last_run"]["interrupted"] is True
        kept = record_count(out)
        assert kept_before < kept < total, "the interrupt must land mid-run for this test to mean anything"
        assert report_counts(run.stderr) == (kept - kept_before, 0, kept_before), run.stderr
        # A plan made now decodes exactly the rest.
        dry = decode(exp, "--dry-run")
        assert f"dry run: {total} items ({total - kept} decode, {kept} done)" in dry.stdout, dry.stdout
        return kept

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group (ffmpeg children included).
    run = runs(exp)
    run.wait_until("3 records", lambda: record_count(out) >= 3)
    run.signal(signal.SIGINT, group=True)
    kept = interrupted_cleanly(run, 130, 0)

    # kill PID: SIGTERM to the run alone. This run is also a resume: it must skip what Ctrl-C kept.
    done_before = fingerprints(out)
    run = runs(exp)
    run.wait_until("2 more records", lambda: record_count(out) >= kept + 2)
    run.signal(signal.SIGTERM)
    interrupted_cleanly(run, 143, kept)
    after = fingerprints(out)
    assert {k: after[k] for k in done_before} == done_before, "items kept by Ctrl-C were decoded again"

    # A run its starter told to ignore SIGINT (a script's background job) keeps ignoring it, during the
    # run too: a Ctrl-C for the script's terminal is not for it. It decodes the rest and exits 0.
    kept = record_count(out)
    run = runs(exp, ignoring_sigint=True)
    run.wait_until("1 more record", lambda: record_count(out) >= kept + 1)
    assert record_count(out) < total, "the Ctrl-C must land mid-run for this check to mean anything"
    run.signal(signal.SIGINT, group=True)
    assert run.wait(120) == 0, run.stderr
    assert "interrupted" not in run.stderr and record_count(out) == total, run.stderr
