"""Where everything goes under one output folder, mirroring ``latents/``."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .experiment import LatentStep

JOURNAL_NAME = ".latent-decoder.db"
LEGACY_RECORDS_DIRNAME = ".records"  # per-step JSON records of older versions, migrated into the journal
SUMMARY_NAME = "decode_summary.json"


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    def video_path(self, step: LatentStep, fmt: str) -> Path:
        base = self.root / step.prompt / step.video
        return base / (f"{step.step}.mp4" if fmt == "mp4" else step.step)

    def thumbnail_path(self, step: LatentStep) -> Path:
        return self.root / step.prompt / step.video / f"{step.step}.jpg"

    @property
    def journal_path(self) -> Path:
        return self.root / JOURNAL_NAME

    @property
    def legacy_records_dir(self) -> Path:
        return self.root / LEGACY_RECORDS_DIRNAME

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY_NAME

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def output_size(path: Path | str) -> int | None:
    """Bytes of a file, or the number of PNG frames in a folder; None if absent."""
    try:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            return st.st_size
        return sum(1 for name in os.listdir(path) if name.endswith(".png"))
    except OSError:
        return None
