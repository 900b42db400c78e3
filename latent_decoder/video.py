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
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

TEMP_MARK = ".ld-tmp-"
SCRATCH_PREFIX = "latent-decoder-"  # encoder scratch files in the system temp dir: latent-decoder-xxxxxxxx.mp4


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

    ffmpeg needs a seekable file for ``+faststart``: it writes a ``scratch_file``, read back here.
    """
    import imageio_ffmpeg

    frames = np.ascontiguousarray(_even(frames))
    height, width = frames.shape[1:3]
    with scratch_file(".mp4") as path:
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
        try:
            writer.send(None)
            for frame in frames:
                writer.send(frame)
        finally:
            writer.close()  # ffmpeg ends before its file is removed, also when an encode fails
        return path.read_bytes()


@contextmanager
def scratch_file(suffix: str) -> Iterator[Path]:
    """A new empty file of its own in the system temp dir (node-local: a Ray worker encodes where the
    output folder may not be), removed when the block ends, however it ends.

    Nothing is shared, so threads, forked children (Ray workers, multiprocessing) and other processes
    never touch each other's, and no process ever removes a file it did not make. A process killed
    mid-encode leaves its partial file to the OS's temp-dir cleaning.
    """
    fd, name = tempfile.mkstemp(suffix=suffix, prefix=SCRATCH_PREFIX)
    os.close(fd)
    path, owner = Path(name), os.getpid()
    try:
        yield path
    finally:
        if os.getpid() == owner:  # not a forked child unwinding its parent's stack as it exits
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


def remove_stale_temps(root: Path) -> int:
    """Delete the temp files/folders a killed run left in the output folder ``root`` (the encoder
    scratch of a killed process is not there: see ``scratch_file``); call only while holding the lock."""
    if not root.is_dir():
        return 0
    removed = 0
    for path in sorted(root.rglob(f"*{TEMP_MARK}*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed
