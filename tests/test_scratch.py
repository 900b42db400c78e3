"""Encoder scratch: ffmpeg's seekable ``+faststart`` output is a file of its own in the system temp
dir (``video.scratch_file``), removed when its encode ends. Nothing is shared, so threads, forked
children and other processes never remove each other's, and nothing is left after an encode, whether
it succeeds or fails. (A process killed mid-encode leaves its partial file to the OS's temp-dir
cleaning: no process removes a file it did not make.) Every test uses its own temp dir."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from latent_decoder.video import SCRATCH_PREFIX, TEMP_MARK, encode_mp4, remove_stale_temps

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
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)


def frame_count(data: bytes, where: Path) -> int:
    where.write_bytes(data)
    return imageio_ffmpeg.count_frames_and_secs(str(where))[0]


def test_encodes_write_their_own_scratch_and_leave_nothing_behind(tmpdir_: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    written: list[Path] = []
    real = imageio_ffmpeg.write_frames

    def spy(path, *args, **kwargs):
        written.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", spy)
    frames = np.random.default_rng(0).integers(0, 256, (5, 30, 45, 3), dtype=np.uint8)  # odd width: padded
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(encode_mp4(frames, fps=8, crf=25, preset="veryfast")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for i, data in enumerate(results):
        assert frame_count(data, tmp_path / f"clip{i}.mp4") == 5
        reader = imageio_ffmpeg.read_frames(str(tmp_path / f"clip{i}.mp4"))
        assert tuple(next(reader)["size"]) == (46, 30)
        reader.close()
    assert len(set(written)) == 3 and all(p.parent == tmpdir_ and p.name.startswith(SCRATCH_PREFIX) for p in written)
    assert list(tmpdir_.iterdir()) == []

    # An encode that fails half way (ffmpeg running, its file begun) leaves nothing either.
    class Dying:
        def __init__(self, writer):
            self.writer, self.sent = writer, 0

        def send(self, frame):
            if self.sent == 2:
                raise BrokenPipeError("ffmpeg died")
            self.sent += 1
            self.writer.send(frame)

        def close(self):
            self.writer.close()

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", lambda path, *a, **k: Dying(spy(path, *a, **k)))
    with pytest.raises(BrokenPipeError):
        encode_mp4(frames, fps=8, crf=25, preset="veryfast")
    assert len(written) == 4 and list(tmpdir_.iterdir()) == []


HOLDER = """
    import sys
    from latent_decoder.video import encode_mp4, scratch_file
    import numpy as np
    with scratch_file(".mp4") as held:
        held.write_bytes(b"in use")
        print(held, flush=True)
        sys.stdin.readline()  # the test says when to go on
        print(held.read_bytes().decode(), flush=True)
    print(len(encode_mp4(np.zeros((2, 16, 16, 3), np.uint8), fps=8, crf=30, preset="ultrafast")) > 0, flush=True)
"""


def test_other_processes_never_remove_a_live_processs_scratch(tmpdir_: Path, tmp_path: Path):
    holder = start_python(HOLDER, tmpdir_)
    try:
        held = Path(holder.stdout.readline().strip())
        assert held.parent == tmpdir_ and held.read_bytes() == b"in use"
        # Another process encodes and exits; this one encodes and cleans an output folder's temps.
        other = start_python("""
            import numpy as np
            from latent_decoder.video import encode_mp4
            print(len(encode_mp4(np.zeros((2, 16, 16, 3), np.uint8), fps=8, crf=30, preset="ultrafast")))
        """, tmpdir_)
        out, _ = other.communicate(timeout=120)
        assert other.returncode == 0 and int(out) > 0
        assert encode_mp4(np.zeros((2, 16, 16, 3), np.uint8), fps=8, crf=30, preset="ultrafast")
        folder = tmp_path / "out"
        (folder / "prompt_000").mkdir(parents=True)
        (folder / "prompt_000" / f".step_000.mp4{TEMP_MARK}999999-deadbeef").write_bytes(b"half")
        assert remove_stale_temps(folder) == 1
        assert list(tmpdir_.iterdir()) == [held] and held.read_bytes() == b"in use"
        out, _ = holder.communicate("go\n", timeout=120)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
    assert holder.returncode == 0 and out.split() == ["in", "use", "True"]
    assert list(tmpdir_.iterdir()) == []


def test_a_forked_child_encodes_and_leaves_its_parents_scratch_alone(tmpdir_: Path):
    """A child made with os.fork that exits normally (atexit runs) and a multiprocessing one (os._exit),
    both encoding while the parent holds a scratch file."""
    code = """
        import json, multiprocessing, os, sys
        import numpy as np
        from latent_decoder.video import encode_mp4, scratch_file

        def encode():
            return len(encode_mp4(np.zeros((2, 16, 16, 3), np.uint8), fps=8, crf=30, preset="ultrafast"))

        def in_pool(queue):
            queue.put(encode())

        with scratch_file(".mp4") as held:
            held.write_bytes(b"parent's")
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(w, str(encode()).encode())
                sys.exit(0)
            os.close(w)
            forked = int(os.read(r, 100) or 0)
            os.waitpid(pid, 0)
            queue = multiprocessing.get_context("fork").Queue()
            child = multiprocessing.get_context("fork").Process(target=in_pool, args=(queue,))
            child.start()
            pooled = queue.get(timeout=120)
            child.join()
            left = sorted(os.listdir(os.path.dirname(held)))
            print(json.dumps({"forked": forked, "pooled": pooled, "kept": held.read_bytes().decode(),
                              "left": left, "held": held.name, "parent": encode()}))
    """
    proc = start_python(code, tmpdir_)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["forked"] > 0 and result["pooled"] > 0 and result["parent"] > 0
    assert result["kept"] == "parent's" and result["left"] == [result["held"]]
    assert list(tmpdir_.iterdir()) == []
