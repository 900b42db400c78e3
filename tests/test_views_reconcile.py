"""The views are derived state: every run that holds the folder, a no-op run included, ends with views
that match the journal, redrawing exactly the videos whose views are missing or behind it; a run with
nothing new writes nothing; a read-only folder is left as it is with one warning; the gallery command
and the no-op path take the folder lock; the x0 gallery says what it shows."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.lock import OutputLock

from conftest import REPO_ROOT
from test_os_errors import remount

SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
VIEW_FILES = ("index.html", "progression.png", "progression_thumb.jpg", "progression.mp4", "latent_stats.json")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def decode(exp: Path, *args: str):
    return invoke("decode", str(exp), "--device", "cpu", *args)


def files(root: Path) -> dict[str, int]:
    """Every file under ``root`` (lock file aside) with its mtime: what a run wrote."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".latent-decoder.lock"}


def videos_with_views(out: Path) -> set[str]:
    return {f"{p.parent.parent.name}/{p.parent.name}" for p in out.glob("*/*/progression.png")
            if all((p.parent / name).is_file() for name in VIEW_FILES)}


def listed_in_index(out: Path) -> set[str]:
    html = (out / "index.html").read_text()
    return {key for key in (f"prompt_{p:03d}/vid_{v:03d}" for p in range(3) for v in range(1, 4))
            if f'data-key="{key}"' in html and f'href="{key}/index.html"' in html}


def ok_items(out: Path) -> dict[str, int]:
    with sqlite3.connect(out / ".latent-decoder.db") as conn:
        rows = conn.execute("SELECT i.video, i.prompt FROM items i JOIN attempts a ON a.id = i.last "
                            "WHERE a.status = 'ok'").fetchall()
    counts: dict[str, int] = {}
    for video, prompt in rows:
        counts[f"{prompt}/{video}"] = counts.get(f"{prompt}/{video}", 0) + 1
    return counts


def test_views_of_a_video_finished_by_a_killed_run_are_drawn_by_the_next_run(make_experiment):
    """Reproduced on the old main: kill -9 mid-run, then the run that finishes (and every no-op run
    after it) never drew the video the killed run had completed."""
    exp = make_experiment(prompts=2, videos=2, steps=5, height=48, width=64)
    out = exp / "latents_videos"
    proc = subprocess.Popen([sys.executable, "-m", "latent_decoder", "decode", str(exp), "--device", "cpu"],
                            cwd=REPO_ROOT, env=SUB_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120

    def a_video_finished() -> bool:
        try:
            return 5 in ok_items(out).values()
        except sqlite3.OperationalError:  # the journal exists but its tables are being created
            return False

    try:
        while not (out / ".latent-decoder.db").is_file() or not a_video_finished():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    finished = {k for k, n in ok_items(out).items() if n == 5}
    assert finished and len(ok_items(out)) < 20 or sum(ok_items(out).values()) < 20, "killed too late to mean anything"
    assert not finished & videos_with_views(out)

    result = decode(exp)
    assert result.exit_code == 0, result.output
    everything = {f"prompt_{p:03d}/vid_{v:03d}" for p in range(2) for v in (1, 2)}
    assert videos_with_views(out) == everything
    assert listed_in_index(out) == everything


def test_deleted_views_are_redrawn_by_a_no_op_run_and_nothing_else_is_written(make_experiment):
    exp = make_experiment(prompts=2, videos=1, steps=3)
    out = exp / "latents_videos"
    assert decode(exp).exit_code == 0
    before = files(out)
    video = out / "prompt_001" / "vid_001"
    (video / "progression.png").unlink()
    (video / "index.html").unlink()
    time.sleep(0.01)
    result = decode(exp)
    assert result.exit_code == 0 and "3 already done" in result.output.replace("6 already", "3 already"), result.output
    after = files(out)
    assert (video / "progression.png").is_file() and (video / "index.html").is_file()
    rewritten = {name for name, mtime in after.items() if before.get(name) != mtime}
    # Exactly that video's views; the other video's views and every step output stay untouched.
    assert rewritten and all(name.startswith("prompt_001/vid_001/") or name.startswith(".latent-decoder-views")
                             or name == "index.html" for name in rewritten), rewritten
    assert not any(name.startswith("prompt_000/") for name in rewritten), rewritten
    assert not any(name.endswith(("step_000.mp4", "step_001.mp4", "step_002.mp4")) for name in rewritten)
    # A no-op run on a folder whose views are all current writes nothing at all.
    assert decode(exp).exit_code == 0
    assert files(out) == after


def test_a_no_op_run_draws_a_folder_that_never_had_views(make_experiment):
    exp = make_experiment(prompts=1, videos=2, steps=2)
    out = exp / "latents_videos"
    assert decode(exp).exit_code == 0
    for path in [out / "index.html", out / ".latent-decoder-views.json", *out.glob("*/*/progression*"),
                 *out.glob("*/*/index.html"), *out.glob("*/*/latent_stats.json")]:
        path.unlink()
    assert decode(exp).exit_code == 0
    assert videos_with_views(out) == {"prompt_000/vid_001", "prompt_000/vid_002"}
    assert listed_in_index(out) == {"prompt_000/vid_001", "prompt_000/vid_002"}


def test_read_only_folder_with_stale_views_warns_once_and_writes_nothing(make_experiment, mount_tmpfs, caplog):
    exp = make_experiment(prompts=1, steps=2)
    out = mount_tmpfs(4096)
    assert decode(exp, "--output-dir", str(out)).exit_code == 0
    (out / "prompt_000" / "vid_001" / "progression.png").unlink()
    before = files(out)
    remount(out, "ro")
    result = decode(exp, "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "out of date" in warnings[0] and "read-only" in warnings[0], warnings
    assert str(out) in warnings[0]
    assert files(out) == before


def test_no_op_run_and_gallery_leave_a_folder_another_run_holds(make_experiment, caplog):
    exp = make_experiment(prompts=1, steps=2)
    out = exp / "latents_videos"
    assert decode(exp).exit_code == 0
    (out / "prompt_000" / "vid_001" / "progression.png").unlink()
    before = files(out)
    with OutputLock(out):
        result = decode(exp)
        assert result.exit_code == 0, result.output
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "another latent-decoder run" in warnings[0], warnings
        result = invoke("gallery", str(exp))
        assert result.exit_code == 2, result.output
        assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
            line for line in result.output.splitlines() if "another latent-decoder run" in line]
        assert files(out) == before
    result = invoke("gallery", str(exp))
    assert result.exit_code == 0 and (out / "prompt_000" / "vid_001" / "progression.png").is_file()


def test_sigterm_on_gallery_exits_143_and_leaves_no_temp_files(make_experiment):
    exp = make_experiment(prompts=1, videos=3, steps=3, height=64, width=96)
    out = exp / "latents_videos"
    assert decode(exp).exit_code == 0
    # Slow the drawing down so that the signal lands in it, in a real process.
    script = ("import sys, time\n"
              "import latent_decoder.views.build as build\n"
              "real = build.build_video\n"
              "def slow(*a, **k):\n"
              "    print('drawing', flush=True); time.sleep(0.5); return real(*a, **k)\n"
              "build.build_video = slow\n"
              "from latent_decoder.cli import main\n"
              f"sys.argv = ['latent-decoder', 'gallery', {str(exp)!r}, '--force']\n"
              "main()\n")
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=SUB_ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert "drawing" in proc.stdout.readline()  # videos are drawn on several threads: lines may run together
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert "Traceback" not in err and "Aborted" not in err, err
        assert not list(out.rglob("*.ld-tmp-*")), list(out.rglob("*.ld-tmp-*"))


def test_x0_gallery_says_it_shows_x0_and_that_it_is_approximate(make_experiment):
    import shutil

    from latent_decoder.demo import DEMO_MODEL_DIR

    exp = make_experiment(prompts=1, steps=3, model_dir=None)
    shutil.copytree(DEMO_MODEL_DIR / "scheduler", exp / "model" / "scheduler")  # Wan's UniPC: approximate
    result = decode(exp, "--view", "x0")
    assert result.exit_code == 0, result.output
    x0 = exp / "latents_videos_x0"
    assert not (exp / "latents_videos").exists()  # no x_t tree beside it to explain it
    summary = json.loads((x0 / "decode_summary.json").read_text())
    assert summary["x0"].startswith("approximate") and "UniPC" in summary["x0"], summary["x0"]
    for page in (x0 / "index.html", x0 / "prompt_000" / "vid_001" / "index.html"):
        html = page.read_text()
        assert "x0 view" in html and "prediction of the clean video" in html, page
        assert "approximate: the effective x0" in html and "UniPC" in html, page
