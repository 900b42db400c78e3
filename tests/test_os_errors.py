"""OS errors reach the user as one line naming the path, never a traceback: exit 2 for a setup
problem (output folder unusable), a failed item for a per-item write error, a run-level stop for a
full disk (finished items kept). Checked on real filesystems where this machine allows: a small
tmpfs that fills up, a read-only mount, a user without write permission."""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from latent_decoder.cli import cli

from conftest import REPO_ROOT, journal_records

SUB_ENV = {"OMP_NUM_THREADS": "1"}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def test_output_folder_that_is_a_file_or_lies_under_one(make_experiment, tmp_path):
    exp = make_experiment(prompts=1, steps=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for out, word in ((blocker, "is a file"), (blocker / "sub" / "out", f"lies under {blocker}")):
        result = invoke("decode", str(exp), "--device", "cpu", "--output-dir", str(out))
        assert result.exit_code == 2
        line = one_error_line(result.output)
        assert str(out) in line and word in line, line
    assert blocker.read_text() == "not a folder"


def test_read_only_output_folder(make_experiment, mount_tmpfs):
    exp = make_experiment(prompts=1, steps=2)
    out = mount_tmpfs(4096)
    assert invoke("decode", str(exp), "--device", "cpu", "--output-dir", str(out)).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    remount(out, "ro")
    # Nothing to do: it reports and writes nothing.
    result = invoke("decode", str(exp), "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 0 and "2 already done" in result.output, result.output
    assert invoke("status", str(exp), "--output-dir", str(out)).exit_code == 0
    # Something to do on a read-only folder: one line, exit 2.
    result = invoke("decode", str(exp), "--device", "cpu", "--output-dir", str(out), "--force")
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert str(out) in line and "read-only" in line.lower(), line
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_disk_full_stops_the_run_keeping_finished_items(make_experiment, mount_tmpfs):
    exp = make_experiment(prompts=2, steps=12)
    out = mount_tmpfs(160)
    result = invoke("decode", str(exp), "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 1, result.output
    line = one_error_line(result.output)
    assert "no space left" in line.lower() or "disk full" in line.lower(), line
    assert str(out) in line
    kept = {k for k, r in journal_records(out).items() if r["status"] == "ok"}
    assert 0 < len(kept) < 24, "the disk must fill mid-run for this test to mean anything"
    for key in kept:
        assert (out / f"{key}.mp4").stat().st_size > 0
    # More room: the rest is decoded, what was kept is not decoded again.
    remount(out, "size=8m")
    result = invoke("decode", str(exp), "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert f"{24 - len(kept)} ok, 0 failed, {len(kept)} already done" in result.output, result.output
    assert json.loads((out / "decode_summary.json").read_text())["successful_steps"] == 24


def test_io_error_writing_one_item_fails_that_item(make_experiment, monkeypatch):
    from latent_decoder import lifecycle

    real = lifecycle.write_file_atomic

    def flaky(path, data):
        if "step_001.mp4" in str(path):
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path, data)

    monkeypatch.setattr(lifecycle, "write_file_atomic", flaky)
    exp = make_experiment(prompts=1, steps=3)
    result = invoke("decode", str(exp), "--device", "cpu")
    assert result.exit_code == 1
    records = journal_records(exp / "latents_videos")
    bad = records["prompt_000/vid_001/step_001"]
    assert bad["status"] == "failed" and "Input/output error" in bad["error"] and "step_001.mp4" in bad["error"]
    assert [r["status"] for k, r in sorted(records.items()) if k != "prompt_000/vid_001/step_001"] == ["ok", "ok"]


def test_filesystem_without_locks_is_one_line(make_experiment, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    exp = make_experiment(prompts=1, steps=1)
    result = invoke("decode", str(exp), "--device", "cpu")
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert "does not support file locks" in line and str(exp / "latents_videos") in line


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the CLI as an unprivileged user")
def test_permission_denied_is_one_line(make_experiment, tiny_model_dir):
    shared = Path(tempfile.mkdtemp(prefix="ld-perm-"))
    try:
        os.chmod(shared, 0o755)
        shutil.copytree(tiny_model_dir, shared / "model")
        exp = make_experiment(prompts=1, steps=1, name="perm", model_dir=shared / "model")
        shutil.copytree(exp, shared / "exp")
        locked = shared / "exp" / "latents_videos"
        locked.mkdir()
        os.chmod(locked, 0o555)
        for p in shared.rglob("*"):
            p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
        env = {**os.environ, "HOME": str(shared), **SUB_ENV}
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                               "latent_decoder", "decode", str(shared / "exp"), "--device", "cpu"],
                              capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
        if "Permission denied" in proc.stderr and "latent_decoder" not in proc.stderr and proc.returncode != 2:
            pytest.skip(f"the unprivileged user cannot run this checkout's Python: {proc.stderr.strip()}")
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc.stderr)
        assert str(locked) in line and "Permission denied" in line, line
        # A model folder the user may not read: one line too, naming it.
        os.chmod(shared / "model", 0o700)
        os.chmod(locked, 0o777)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                               "latent_decoder", "decode", str(shared / "exp"), "--device", "cpu"],
                              capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc.stderr)
        assert str(shared / "model") in line and "Permission denied" in line, line
    finally:
        shutil.rmtree(shared, ignore_errors=True)
