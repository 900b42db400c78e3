"""Frames -> encoded files (H.264 MP4, lossless PNG frames, JPEG thumbnail) and atomic writes.

Encoders return bytes so that whoever holds the output folder (the driver, or a worker on
shared storage) does the writing; writers put every file at its final path only when complete.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

TEMP_MARK = ".ld-tmp-"
SCRATCH_PREFIX = "latent-decoder-"  # encoder scratch folders in the system temp dir: latent-decoder-<pid>-xxxx


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: repeat the last row/column where needed."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def encode_mp4(frames: np.ndarray, fps: float, crf: int, preset: str = "medium") -> bytes:
    """H.264 (libx264, yuv420p) MP4 of ``[T, H, W, 3]`` uint8 frames."""
    import imageio_ffmpeg

    frames = np.ascontiguousarray(_even(frames))
    height, width = frames.shape[1:3]
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as tmp:
        path = os.path.join(tmp, "video.mp4")
        writer = imageio_ffmpeg.write_frames(
            path,
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
        with open(path, "rb") as fh:
            return fh.read()


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_scratch() -> int:
    """Delete encoder scratch folders of processes on this host that no longer exist."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = path.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
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
