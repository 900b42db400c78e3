"""``decode --watch`` against a real concurrent writer: steps written in place, some slowly in chunks
(torn for a while), by a real process while the watch runs (in this process, or as a real
``latent-decoder decode --watch`` process where signals and exit statuses are checked). Each step is
decoded exactly once, never a torn one, and the summary ends complete."""
from __future__ import annotations

import gzip
import io
import json
import shutil
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from latent_decoder.watch import Settling, is_complete

from conftest import REPO_ROOT, journal_records

SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STEPS = 10  # two of them (2 and 7) written slowly, in chunks

# The generation: waits until the watch has made ``ready`` attempts (0: until it has opened its
# journal), then writes ``steps`` steps in place, some slowly.
WRITER = textwrap.dedent("""
    import gzip, io, os, sqlite3, sys, time
    import numpy as np
    video_dir, steps, db, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    deadline = time.monotonic() + 180
    def attempts():
        try:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT count(*) FROM attempts").fetchone()[0]
        except sqlite3.Error:
            return -1
    while not (os.path.exists(db) and attempts() >= ready):
        if time.monotonic() > deadline:
            sys.exit("the watch never got ready")
        time.sleep(0.05)
    rng = np.random.default_rng(0)
    for i in range(steps):
        buf = io.BytesIO()
        np.save(buf, rng.standard_normal((1, 16, 3, 4, 6)).astype(np.float16))
        data = gzip.compress(buf.getvalue())
        path = f"{video_dir}/step_{i:03d}.npy.gz"
        with open(path, "wb") as fh:  # in place, not atomically, as generators do
            if i % 5 == 2:  # slowly, in chunks: torn for a while (longer than the watch's SETTLE_S)
                for k in range(3):
                    fh.write(data[k * len(data) // 3:(k + 1) * len(data) // 3])
                    fh.flush()
                    time.sleep(0.7)
            else:
                fh.write(data)
        time.sleep(0.1)
""")


def attempts(out: Path) -> dict[str, list[str]]:
    """Item -> the statuses of its attempts; empty while the watcher is still creating the journal."""
    try:
        with sqlite3.connect(out / ".latent-decoder.db") as conn:
            rows = conn.execute("SELECT item, status FROM attempts ORDER BY id").fetchall()
    except sqlite3.OperationalError as exc:  # the file exists a moment before its tables
        if "no such table" not in str(exc):
            raise
        return {}
    found: dict[str, list[str]] = {}
    for item, status in rows:
        found.setdefault(item, []).append(status)
    return found


def watch_while_writing(exp: Path, steps: int, ready: int, *args: str) -> tuple[int, str]:
    """Run ``decode EXP --watch ARGS`` in this process (CliRunner) while a real writer process, once
    the watch has made ``ready`` attempts, writes ``steps`` steps; return the watch's exit status and
    output."""
    from click.testing import CliRunner

    from latent_decoder.cli import cli

    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    db = exp / "latents_videos" / ".latent-decoder.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(video_dir), str(steps), str(db), str(ready)],
                              stderr=subprocess.PIPE, text=True)
    try:
        result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--watch", *args])
        _, writer_err = writer.communicate(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, writer_err
    return result.exit_code, result.output


def test_watch_decodes_each_step_once_never_a_torn_one(make_experiment):
    exp = make_experiment(prompts=1, steps=1)
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    for f in video_dir.iterdir():
        f.unlink()  # an empty start: the generation has not written anything yet
    code, err = watch_while_writing(exp, STEPS, 0, "--idle-exit", "4")
    assert code == 0, err
    out = exp / "latents_videos"
    tries = attempts(out)
    assert sorted(tries) == [f"prompt_000/vid_001/step_{i:03d}" for i in range(STEPS)], err
    assert all(statuses == ["ok"] for statuses in tries.values()), {k: v for k, v in tries.items() if v != ["ok"]}
    summary = json.loads((out / "decode_summary.json").read_text())
    assert (summary["total_steps"], summary["successful_steps"], summary["pending_steps"]) == (STEPS, STEPS, 0)
    assert "Traceback" not in err


def test_ctrl_c_while_watching_exits_130_keeping_decoded_steps(make_experiment):
    exp = make_experiment(prompts=1, steps=2)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "latent_decoder", "decode", str(exp), "--device", "cpu", "--watch", "--poll"],
        cwd=REPO_ROOT, env=SUB_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    out = exp / "latents_videos"
    deadline = time.monotonic() + 120
    while not (out / ".latent-decoder.db").exists() or len(attempts(out)) < 2:
        assert time.monotonic() < deadline and watcher.poll() is None, watcher.communicate()
        time.sleep(0.2)
    os.killpg(watcher.pid, signal.SIGINT)
    _, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 130, err
    assert "Traceback" not in err
    assert len(attempts(out)) == 2


def test_torn_files_are_not_complete(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 16, 3, 4, 6), np.float16))
    data = buf.getvalue()
    for name, payload in (("step_000.npy", data), ("step_001.npy.gz", gzip.compress(data))):
        path = tmp_path / name
        path.write_bytes(payload[: len(payload) - 7])
        assert not is_complete(path), name
        path.write_bytes(payload)
        assert is_complete(path), name

    from latent_decoder.experiment import LatentStep

    path = tmp_path / "step_000.npy"
    st = path.stat()
    step = LatentStep("p", "v", "step_000", 0, str(path), st.st_size, st.st_mtime_ns)
    settling = Settling()
    assert not settling.ready(step, 100.0)  # first sight: not yet settled
    assert not settling.ready(step, 100.2)
    assert settling.ready(step, 100.6)


def test_watch_feeds_new_steps_to_a_running_ray_pool(shared_ray, make_experiment):
    exp = make_experiment(prompts=1, steps=2)
    out = exp / "latents_videos"
    code, err = watch_while_writing(exp, 4, 2, "--workers", "1", "--idle-exit", "4")
    assert code == 0, err
    tries = attempts(out)
    # The writer rewrote steps 0 and 1 (changed input: decoded again) and added steps 2 and 3.
    assert sorted(tries) == [f"prompt_000/vid_001/step_{i:03d}" for i in range(4)], err
    assert [len(tries[f"prompt_000/vid_001/step_{i:03d}"]) for i in range(4)] == [2, 2, 1, 1]
    assert all(status == "ok" for statuses in tries.values() for status in statuses)
    records = journal_records(out)
    assert {r["worker"] for r in records.values()} == {"ray-0"}, "decoded by the Ray pool"


def start_watcher(exp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "latent_decoder", "decode", str(exp), "--device", "cpu", "--watch", *args],
        cwd=REPO_ROOT, env=SUB_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def wait_for(what: str, predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what}: {proc.communicate()}")
        time.sleep(0.05)


def write_step(video_dir: Path, index: int, seed: int = 0) -> None:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).standard_normal((1, 16, 3, 4, 6)).astype(np.float16))
    video_dir.mkdir(parents=True, exist_ok=True)
    tmp = video_dir / f".tmp_{index}"
    tmp.write_bytes(gzip.compress(buf.getvalue()))
    tmp.rename(video_dir / f"step_{index:03d}.npy.gz")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_stops_a_watch_on_filesystem_events_and_draws_the_views(make_experiment, signum, code):
    """Reproduced on the old main: with watchfiles (the default), the first Ctrl-C printed
    'KeyboardInterrupt caught, stopping watch' and the process went on spinning a core; it left no
    index.html."""
    exp = make_experiment(prompts=1, steps=2)
    out = exp / "latents_videos"
    watcher = start_watcher(exp, "--idle-exit", "600", "--refresh-every", "600")
    wait_for("two steps decoded", lambda: (out / ".latent-decoder.db").exists() and len(attempts(out)) == 2, watcher)
    time.sleep(0.5)  # into the wait for filesystem events
    os.killpg(watcher.pid, signum)
    _, err = watcher.communicate(timeout=60)
    assert watcher.returncode == code, err
    assert "KeyboardInterrupt caught" not in err and "Traceback" not in err, err
    assert (out / "index.html").is_file() and (out / "prompt_000" / "vid_001" / "progression.png").is_file()
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["successful_steps"] == 2 and summary["last_run"]["interrupted"] is True


def test_a_watch_shows_its_progress_while_it_runs(make_experiment):
    """The summary and the views appear during the watch (throttled), a changed step decoded again is
    counted as such, a latents folder that does not exist yet is waited for, and a step still torn when
    the watch ends is reported and makes the exit status 1."""
    exp = make_experiment(prompts=1, steps=1)
    shutil.rmtree(exp / "latents")  # the generation has not started yet
    out = exp / "latents_videos"
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    watcher = start_watcher(exp, "--idle-exit", "3", "--refresh-every", "0.5")
    wait_for("the watch to start", lambda: (out / ".latent-decoder.db").exists(), watcher)
    write_step(video_dir, 0)
    write_step(video_dir, 1)
    wait_for("the gallery drawn during the watch", lambda: (out / "index.html").is_file()
             and (out / "prompt_000" / "vid_001" / "progression.png").is_file(), watcher)
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["successful_steps"] == 2 and watcher.poll() is None
    write_step(video_dir, 0, seed=1)  # regenerated: decoded again
    wait_for("step 0 decoded again", lambda: len(attempts(out).get("prompt_000/vid_001/step_000", [])) == 2, watcher)
    (video_dir / "step_002.npy.gz").write_bytes(b"\x1f\x8b\x08\x00torn")  # a write that never completes
    _, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 1, err
    assert "decoded 3 item(s) (2 steps, 1 decoded again after they changed)" in err, err
    assert "[3/3]" in err and "[3/4]" not in err, err
    assert "1 step(s) still incomplete" in err and "prompt_000/vid_001/step_002" in err, err
