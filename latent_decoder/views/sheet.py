"""``progression.png``: the contact sheet of one video, one row per decoded (or failed) step and a few
evenly spaced frames per row, so the whole denoising reads top to bottom in one image."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .collect import StepView
from .frames import fit_text, font, resize, spaced_indices, temp_path, wrap_text

SHEET_NAME = "progression.png"
SHEET_THUMB_NAME = "progression_thumb.jpg"  # what the gallery's index shows: a full sheet can weigh megabytes
THUMB_WIDTH = 480
COLUMNS = 8  # frames per row (fewer when the video has fewer)
TILE_HEIGHT = (64, 96)  # a frame's height in the sheet: its own, within these bounds
MAX_TILE_WIDTH = 240
LABEL_WIDTH = 132
PAD = 3

BACKGROUND = (22, 24, 29)
LABEL_BG = (32, 35, 42)
TEXT = (232, 234, 240)
MUTED = (150, 156, 170)
FAILED_BG = (92, 92, 96)
FAILED_TEXT = (255, 196, 196)


@dataclass(frozen=True)
class SheetGeometry:
    """Where everything lies in a sheet: row ``r`` spans ``[r * row_height, (r + 1) * row_height)``."""

    tile_width: int
    tile_height: int
    columns: int
    label_width: int = LABEL_WIDTH
    pad: int = PAD

    @property
    def row_height(self) -> int:
        return self.tile_height + 2 * self.pad

    @property
    def width(self) -> int:
        return self.label_width + self.columns * (self.tile_width + self.pad) + self.pad

    def height(self, rows: int) -> int:
        return rows * self.row_height

    def tile_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of one frame."""
        left = self.label_width + self.pad + column * (self.tile_width + self.pad)
        top = row * self.row_height + self.pad
        return left, top, left + self.tile_width, top + self.tile_height


def sheet_geometry(frame_width: int, frame_height: int, frames: int) -> SheetGeometry:
    """A sheet for frames of this size: tiles at the frame's height within ``TILE_HEIGHT``, aspect kept."""
    tile_h = min(max(frame_height, TILE_HEIGHT[0]), TILE_HEIGHT[1])
    tile_w = min(MAX_TILE_WIDTH, max(16, round(frame_width * tile_h / max(1, frame_height))))
    return SheetGeometry(tile_w, tile_h, max(1, min(COLUMNS, frames)))


DEFAULT_GEOMETRY = SheetGeometry(96, 64, COLUMNS)  # a sheet with failed rows only


class Sheet:
    """A sheet being drawn row by row; ``save`` writes it once complete."""

    def __init__(self, geometry: SheetGeometry, rows: int) -> None:
        from PIL import Image, ImageDraw

        self.geometry = geometry
        self.image = Image.new("RGB", (geometry.width, max(1, geometry.height(rows))), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

    def _label(self, row: int, lines: list[str], colour: tuple[int, int, int] = TEXT) -> None:
        g = self.geometry
        top = row * g.row_height
        self.draw.rectangle((0, top + g.pad, g.label_width - 1, top + g.row_height - g.pad - 1), fill=LABEL_BG)
        sizes = [14] + [12] * (len(lines) - 1)
        total = sum(s + 3 for s in sizes) - 3
        y = top + max(g.pad, (g.row_height - total) // 2)
        for i, (line, size) in enumerate(zip(lines, sizes)):
            face = font(size)
            self.draw.text((8, y), fit_text(self.draw, line, g.label_width - 14, face), font=face,
                           fill=colour if i == 0 else MUTED)
            y += size + 3

    def add_frames(self, row: int, step: StepView, frames: list[np.ndarray]) -> None:
        """A decoded step: its label, then ``columns`` frames spread over the whole video."""
        from PIL import Image

        g = self.geometry
        self._label(row, step.label())
        for column, index in enumerate(spaced_indices(len(frames), g.columns)):
            left, top, _, _ = g.tile_box(row, column)
            self.image.paste(Image.fromarray(resize(frames[index], g.tile_width, g.tile_height)), (left, top))

    def add_failed(self, row: int, step: StepView, reason: str) -> None:
        """A failed step: a grey row that says why."""
        g = self.geometry
        self._label(row, [step.step, "FAILED"], FAILED_TEXT)
        left, top, _, _ = g.tile_box(row, 0)
        right = g.width - g.pad - 1
        self.draw.rectangle((left, top, right, top + g.tile_height - 1), fill=FAILED_BG)
        face = font(13)
        lines = wrap_text(self.draw, reason, right - left - 20, face, max(1, (g.tile_height - 12) // 17))
        y = top + (g.tile_height - 17 * len(lines)) // 2
        for line in lines:
            self.draw.text((left + 10, y), line, font=face, fill=(245, 245, 245))
            y += 17

    def save(self, path: Path, thumb: Path | None = None) -> None:
        """Written whole to a temp name, then renamed into place; ``thumb``: also a small JPEG of it."""
        from PIL import Image

        # zlib's default level: on the demo's 839x560 sheet 96 ms and 2% larger than optimize=True (level 9
        # and a search over filters), which took 480 ms
        images = [(path, self.image, {"format": "PNG", "compress_level": 6})]
        if thumb is not None:
            width = min(THUMB_WIDTH, self.image.width)
            small = self.image.resize((width, max(1, round(self.image.height * width / self.image.width))),
                                      Image.LANCZOS)
            images.append((thumb, small, {"format": "JPEG", "quality": 82}))
        for target, image, options in images:
            tmp = temp_path(target)
            try:
                image.save(tmp, **options)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
