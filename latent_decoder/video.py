"""Frames -> encoded files (H.264 MP4, lossless PNG frames, JPEG thumbnail) and atomic writes.

Encoders return bytes so that whoever holds the output folder (the driver, or a worker on
shared storage) does the writing; writers put every file at its final path only when complete.
"""
from __future__ import annotations

import atexit
import fcntl
import io
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

TEMP_MARK = ".ld-tmp-"
SCRATCH_PREFIX = "latent-decoder-"  # encoder scratch folders in the system temp dir: latent-decoder-<pid>-xxxx
SCRATCH_LOCK = "owner.lock"  # inside a scratch folder; flock'd by the owning process for its lifetime
UNLOCKED_SCRATCH_MAX_AGE_S = 24 * 3600  # a scratch folder without a lock file (older layout) is stale after this


class FrameSizeError(ValueError):
    """``--scale`` leaves a side of the frames without a pixel: nothing can be encoded."""


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The frame size ``--scale`` resizes ``height x width`` to, rounded down as torch's
    ``interpolate(scale_factor=...)`` rounds. One pixel is enough for every encoder (yuv420p is padded
    to even sizes by ``_even``); zero is refused here, naming the size, instead of failing later."""
    if scale == 1.0:
        return height, width
    size = int(height * scale), int(width * scale)
    if min(size) < 1:
        raise FrameSizeError(f"--scale {scale:g} makes {width}x{height} frames {size[1]}x{size[0]}: "
                             "use a larger --scale")
    return size


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: repeat the last row/column where needed."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def encode_mp4(frames: np.ndarray, fps: float, crf: int, preset: str) -> bytes:
    """H.264 (libx264, yuv420p) MP4 of ``[T, H, W, 3]`` uint8 frames.

    ffmpeg needs a seekable file for ``+faststart``: it writes one under a unique name in this
    process's locked scratch folder (see ``scratch_dir``) and removes it once read back.
    """
    import imageio_ffmpeg

    frames = np.ascontiguousarray(_even(frames))
    height, width = frames.shape[1:3]
    path = scratch_dir() / f"video-{uuid.uuid4().hex}.mp4"
    try:
        writer = imageio_ffmpeg.write_frames(
            str(path),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            output_params=["-crf", str(crf), "-preset", preset, "-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def encode_png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_frame_name(index: int) -> str:
    return f"frame_{index:04d}.png"


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temp file beside ``path``, fsync, then ``os.replace`` into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_dir_atomic(path: Path, files: dict[str, bytes]) -> None:
    """Build a folder under a temp name, then swap it in; an old folder is removed after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    tmp.mkdir()
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if path.exists():
            old = _temp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# This process's scratch folders by temp dir: (folder, fd of its flock'd lock file). A lock, not the
# PID in the folder's name, says the owner is alive: PIDs mean nothing across PID namespaces
# (containers sharing /tmp), and the kernel drops the lock when the owner dies, however it dies.
_scratch: dict[str, tuple[Path, int]] = {}
_scratch_pid = os.getpid()
_scratch_guard = threading.Lock()


def _forget_scratch_after_fork() -> None:
    """A forked child must not use (or keep alive) its parent's scratch: it creates its own on first use.
    Closing the inherited fds leaves the parent's lock held (flock locks go with the parent's fd)."""
    global _scratch, _scratch_pid, _scratch_guard
    for _, fd in _scratch.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _scratch, _scratch_pid, _scratch_guard = {}, os.getpid(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_scratch_after_fork)


def _create_scratch(parent: str) -> tuple[Path, int]:
    folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=parent))
    # Lock under a temp name, then rename into place: another process's cleanup that finds the lock
    # file can never take it before this process holds it (a folder without one counts as fresh).
    tmp = folder / f".{SCRATCH_LOCK}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, folder / SCRATCH_LOCK)
    except BaseException:
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, fd


def scratch_dir() -> Path:
    """This process's encoder scratch folder in the temp dir, created on first use and kept locked for
    the process's lifetime so that ``remove_stale_scratch`` in any process sees it is in use."""
    if os.getpid() != _scratch_pid:  # forked without the at-fork hook (should not happen)
        _forget_scratch_after_fork()
    parent = tempfile.gettempdir()
    with _scratch_guard:
        entry = _scratch.get(parent)
        if entry is not None and (entry[0] / SCRATCH_LOCK).is_file():
            return entry[0]
        if entry is not None:  # removed under us (someone cleaned the temp dir): start a new one
            os.close(entry[1])
        _scratch[parent] = entry = _create_scratch(parent)
        return entry[0]


@atexit.register
def _remove_own_scratch() -> None:
    """A normal exit leaves no scratch behind; a killed process's is removed by a later run."""
    if os.getpid() != _scratch_pid:
        return
    for folder, fd in list(_scratch.values()):
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.close(fd)
        except OSError:
            pass
    _scratch.clear()


def _scratch_owner_alive(folder: Path) -> bool:
    """Whether a process holds ``folder``'s lock; a folder without a lock file (older layout, or one
    being created this instant) counts as alive until it is a day old."""
    try:
        fd = os.open(folder / SCRATCH_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime < UNLOCKED_SCRATCH_MAX_AGE_S
        except OSError:
            return True
    except OSError:  # someone else's, or not ours to judge
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # held: its owner is running
    finally:
        os.close(fd)  # also drops the lock if we took it; the folder is removed right after
    return False


def remove_stale_scratch() -> int:
    """Delete encoder scratch folders in the temp dir whose owner process is gone (their lock is free)."""
    removed = 0
    own = {folder for folder, _ in _scratch.values()} if os.getpid() == _scratch_pid else set()
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        if path in own or path.is_symlink() or not path.is_dir() or _scratch_owner_alive(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed += 1
    return removed


def remove_stale_temps(root: Path) -> int:
    """Delete temp files/folders a killed run left behind; call only while holding the lock."""
    removed = remove_stale_scratch()
    if not root.is_dir():
        return 0
    for path in sorted(root.rglob(f"*{TEMP_MARK}*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed
