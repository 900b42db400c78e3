"""``progression.mp4``: a video's decoded steps played one after another, each for about
``STEP_SECONDS`` with its label burnt in above the picture, so the whole denoising plays in seconds.

Frames are streamed to ffmpeg one step at a time (a 50-step video never sits in memory whole).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .collect import StepView
from .frames import fit_text, font, resize, temp_path

PROGRESSION_NAME = "progression.mp4"
STEP_SECONDS = 0.75  # how long each step plays
MAX_FRAMES_PER_STEP = 45  # longer videos play every 2nd (3rd, ...) frame
FPS_RANGE = (8, 60)
MIN_WIDTH = 384  # small videos are enlarged (by a whole factor) so that the label fits
BAND_HEIGHT = 28
CRF = 23

BAND_BG = (22, 24, 29)
BAR = (94, 160, 255)


@dataclass(frozen=True)
class ProgressionFormat:
    """How a video's steps are played: which frames, how fast, at what size."""

    stride: int  # play frames 0, stride, 2 * stride, ... of each step
    fps: int
    width: int  # of the picture; the label band is added above it
    height: int
    band: int = BAND_HEIGHT

    def frames_of(self, count: int) -> range:
        """The indices played of a step with ``count`` frames."""
        return range(0, count, self.stride)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height + self.band


def progression_format(frames: int, frame_width: int, frame_height: int) -> ProgressionFormat:
    """The format for steps like this one (``frames`` frames of ``frame_width x frame_height``)."""
    stride = max(1, math.ceil(frames / MAX_FRAMES_PER_STEP))
    played = len(range(0, frames, stride))
    fps = int(min(max(round(played / STEP_SECONDS), FPS_RANGE[0]), FPS_RANGE[1]))
    scale = max(1, math.ceil(MIN_WIDTH / max(1, frame_width)))
    width, height = frame_width * scale, frame_height * scale
    return ProgressionFormat(stride, fps, width + width % 2, height + height % 2)


class ProgressionWriter:
    """An ffmpeg encoder fed step by step; the file appears at its final path only on ``close``."""

    def __init__(self, path: Path, fmt: ProgressionFormat, steps: int) -> None:
        import imageio_ffmpeg

        self.path, self.fmt, self.steps = path, fmt, steps
        self.tmp = temp_path(path)
        self.frames = 0
        self.writer = imageio_ffmpeg.write_frames(
            str(self.tmp), fmt.size, fps=fmt.fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(CRF), "-preset", "veryfast", "-movflags", "+faststart", "-f", "mp4"])
        self.writer.send(None)

    def _band(self, step: StepView, position: int) -> np.ndarray:
        from PIL import Image, ImageDraw

        width, band = self.fmt.width, self.fmt.band
        image = Image.new("RGB", (width, band), BAND_BG)
        draw = ImageDraw.Draw(image)
        face = font(15)
        counter = f"{position}/{self.steps}"
        right = width - 8 - draw.textlength(counter, font=face)
        draw.text((right, 5), counter, font=face, fill=(150, 156, 170))
        draw.text((8, 5), fit_text(draw, "  ·  ".join(step.label()), int(right) - 20, face), font=face,
                  fill=(232, 234, 240))
        draw.rectangle((0, band - 3, round(width * position / max(1, self.steps)) - 1, band - 1), fill=BAR)
        return np.asarray(image)

    def add(self, step: StepView, position: int, frames: list[np.ndarray]) -> None:
        """Step number ``position`` (1-based) of ``steps``: its played frames under its label."""
        band = self._band(step, position)
        for index in self.fmt.frames_of(len(frames)):
            picture = resize(frames[index], self.fmt.width, self.fmt.height)
            self.writer.send(np.ascontiguousarray(np.concatenate([band, picture], axis=0)))
            self.frames += 1

    def close(self) -> None:
        try:
            self.writer.close()
            os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # the encoder may be what failed
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ProgressionWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
