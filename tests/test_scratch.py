"""Encoder scratch folders: a folder is in use while its owner holds the flock on its lock file, so
``remove_stale_scratch`` never deletes a live run's scratch, whatever PID its name carries (PIDs mean
nothing across containers sharing /tmp), and deletes it once the owner is gone, however it died.
Every test uses its own temp dir, never the real /tmp."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from latent_decoder import video
from latent_decoder.video import SCRATCH_LOCK, SCRATCH_PREFIX, encode_mp4, remove_stale_scratch, scratch_dir

from conftest import REPO_ROOT


@pytest.fixture
def tmpdir_(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's temp dir for the test (``tempfile.gettempdir()``), and the one given to children."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def start_python(code: str, temp: Path) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": path}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=REPO_ROOT)


OWNER = """
    import time
    from latent_decoder.video import scratch_dir
    print(scratch_dir(), flush=True)
    time.sleep(300)
"""


def test_a_live_owners_scratch_is_kept_whatever_pid_its_name_carries(tmpdir_: Path):
    owner = start_python(OWNER, tmpdir_)
    try:
        created = Path(owner.stdout.readline().strip())
        assert created.parent == tmpdir_ and created.name.startswith(f"{SCRATCH_PREFIX}{owner.pid}-")
        assert (created / SCRATCH_LOCK).is_file()
        # Seen from another PID namespace the owner's PID means nothing: name it after one that does not exist.
        foreign = created.with_name(f"{SCRATCH_PREFIX}999999999-{created.name.rsplit('-', 1)[1]}")
        created.rename(foreign)
        assert remove_stale_scratch() == 0
        assert (foreign / SCRATCH_LOCK).is_file()
    finally:
        owner.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only the kernel drops the lock
        owner.wait(30)
    assert owner.returncode == -signal.SIGKILL
    assert remove_stale_scratch() == 1
    assert not foreign.exists()


def test_a_killed_owners_scratch_is_removed_by_the_next_cleanup(tmpdir_: Path):
    owner = start_python(OWNER, tmpdir_)
    created = Path(owner.stdout.readline().strip())
    (created / "video-partial.mp4").write_bytes(b"half an mp4")  # what a kill mid-encode leaves
    assert remove_stale_scratch() == 0 and created.is_dir()
    owner.send_signal(signal.SIGKILL)
    owner.wait(30)
    assert remove_stale_scratch() == 1
    assert not created.exists()


def test_a_normal_exit_leaves_no_scratch(tmpdir_: Path):
    owner = start_python("from latent_decoder.video import scratch_dir; print(scratch_dir())", tmpdir_)
    out, _ = owner.communicate(timeout=60)
    assert owner.returncode == 0 and Path(out.strip()).name.startswith(SCRATCH_PREFIX)
    assert not Path(out.strip()).exists()
    assert list(tmpdir_.iterdir()) == []


def test_the_own_scratch_is_never_removed(tmpdir_: Path):
    own = scratch_dir()
    assert own.parent == tmpdir_ and own.name.startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
    assert scratch_dir() == own  # created once, then reused
    assert remove_stale_scratch() == 0
    assert (own / SCRATCH_LOCK).is_file()
    assert scratch_dir() == own


def test_a_scratch_without_a_lock_file_is_removed_only_when_a_day_old(tmpdir_: Path):
    old = tmpdir_ / f"{SCRATCH_PREFIX}12345-oldlayout"
    fresh = tmpdir_ / f"{SCRATCH_PREFIX}12346-newlayout"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "video.mp4").write_bytes(b"x")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    unrelated = tmpdir_ / "someone-elses-folder"
    unrelated.mkdir()
    assert remove_stale_scratch() == 1
    assert not old.exists() and fresh.is_dir() and unrelated.is_dir()


def test_a_forked_child_makes_its_own_scratch(tmpdir_: Path):
    code = """
        import json, os
        from latent_decoder.video import SCRATCH_LOCK, remove_stale_scratch, scratch_dir
        parent = scratch_dir()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            child = scratch_dir()
            os.write(w, str(child).encode())
            os._exit(0)
        os.close(w)
        child = os.read(r, 4096).decode()
        os.waitpid(pid, 0)
        # The child died without cleaning up: its scratch is stale, the parent's is not.
        removed = remove_stale_scratch()
        print(json.dumps({"parent": str(parent), "child": child, "child_pid": pid, "removed": removed,
                          "parent_kept": (parent / SCRATCH_LOCK).is_file(), "child_left": os.path.exists(child)}))
    """
    proc = start_python(code, tmpdir_)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    result = json.loads(out)
    assert result["child"] != result["parent"]
    assert Path(result["child"]).name.startswith(f"{SCRATCH_PREFIX}{result['child_pid']}-")
    assert result["removed"] == 1 and result["parent_kept"] and not result["child_left"]


def test_encode_mp4_writes_in_the_scratch_and_leaves_nothing_behind(tmpdir_: Path, tmp_path: Path):
    import imageio_ffmpeg

    frames = np.random.default_rng(0).integers(0, 256, (5, 30, 45, 3), dtype=np.uint8)  # odd width: padded
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(encode_mp4(frames, fps=8, crf=25, preset="veryfast"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for i, data in enumerate(results):
        out = tmp_path / f"clip{i}.mp4"
        out.write_bytes(data)
        assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 5
        reader = imageio_ffmpeg.read_frames(str(out))
        meta = next(reader)
        assert tuple(meta["size"]) == (46, 30)
        reader.close()
    # Only the lock file is left in this process's scratch, and nothing else in the temp dir.
    own = scratch_dir()
    assert sorted(p.name for p in own.iterdir()) == [SCRATCH_LOCK]
    assert list(tmpdir_.iterdir()) == [own]
    assert remove_stale_scratch() == 0 and own.is_dir()


def test_a_scratch_removed_under_a_running_process_is_made_again(tmpdir_: Path):
    import shutil

    own = scratch_dir()
    shutil.rmtree(own)
    again = scratch_dir()
    assert again != own and (again / SCRATCH_LOCK).is_file()
    assert len(encode_mp4(np.zeros((2, 16, 16, 3), np.uint8), fps=8, crf=30, preset="ultrafast")) > 0
    assert video.scratch_dir() == again
