"""Reading a step's decoded frames back (MP4 with imageio-ffmpeg, or a folder of PNG frames) and the
small drawing helpers the sheet and the progression video share."""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import first_line
from ..video import TEMP_MARK


class FrameReadError(Exception):
    """A step's output could not be read back; its row shows as unreadable."""


def read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a step's output, ``[H, W, 3]`` uint8 each."""
    try:
        if path.is_dir():
            from PIL import Image

            frames = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(path.glob("frame_*.png"))]
        else:
            import imageio_ffmpeg

            reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
            meta = next(reader)
            width, height = meta["size"]
            frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    except (OSError, RuntimeError, StopIteration, ValueError) as exc:
        raise FrameReadError(f"{path.name}: cannot read frames: {first_line(exc)}") from exc
    if not frames:
        raise FrameReadError(f"{path.name}: no frames")
    return frames


def spaced_indices(count: int, picks: int) -> list[int]:
    """``picks`` frame indices spread evenly from the first frame to the last."""
    if count <= 0:
        return []
    if picks <= 1 or count == 1:
        return [0]
    return [round(i * (count - 1) / (picks - 1)) for i in range(picks)]


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """A frame at ``width x height`` (bicubic; unchanged if it already is)."""
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC))


_fonts = threading.local()  # FreeType faces are not safe to share between threads: one set per thread


def font(size: int) -> Any:
    """Pillow's built-in font at ``size`` px (no font file needed); the small bitmap one on old Pillows."""
    from PIL import ImageFont

    cache = _fonts.__dict__.setdefault("by_size", {})
    if size not in cache:
        try:
            cache[size] = ImageFont.load_default(size=size)
        except (TypeError, ImportError, OSError):
            cache[size] = ImageFont.load_default()
    return cache[size]


def fit_text(draw: Any, text: str, width: int, face: Any) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if draw.textlength(text, font=face) <= width:
        return text
    while text and draw.textlength(text + "...", font=face) > width:
        text = text[:-1]
    return text.rstrip() + "..."


def wrap_text(draw: Any, text: str, width: int, face: Any, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of ``width`` pixels, the last one cut with an ellipsis."""
    words, out, current = " ".join(text.split()).split(" "), [], ""
    for i, word in enumerate(words):
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=face) <= width or not current:
            current = trial
            continue
        out.append(current)
        current = word
        if len(out) == lines - 1:
            out.append(fit_text(draw, " ".join([current, *words[i + 1:]]), width, face))
            return out
    if current:
        out.append(fit_text(draw, current, width, face))
    return out[:lines]


def temp_path(path: Path) -> Path:
    """A hidden temp name beside ``path`` that ``video.remove_stale_temps`` removes if we are killed."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
