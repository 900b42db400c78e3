"""Work items, where their outputs go, their on-disk records, and the resume decision.

Completion is decided from disk only: an item is done when its record (written last,
atomically) says "ok" with the current output settings and every output it lists exists
with the recorded size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .experiment import LatentStep
from .settings import OutputSettings, RunSettings
from .video import write_file_atomic

RECORDS_DIRNAME = ".records"
RECORD_SCHEMA = 1


@dataclass(frozen=True)
class OutputLayout:
    """Output paths of every item under one output folder, mirroring ``latents/``."""

    root: Path

    def video_path(self, step: LatentStep, fmt: str) -> Path:
        base = self.root / step.prompt / step.video
        return base / (f"{step.step}.mp4" if fmt == "mp4" else step.step)

    def thumbnail_path(self, step: LatentStep) -> Path:
        return self.root / step.prompt / step.video / f"{step.step}.jpg"

    def record_path(self, step: LatentStep) -> Path:
        return self.root / RECORDS_DIRNAME / step.prompt / step.video / f"{step.step}.json"

    @property
    def records_dir(self) -> Path:
        return self.root / RECORDS_DIRNAME

    @property
    def summary_path(self) -> Path:
        return self.root / "decode_summary.json"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


@dataclass
class StepRecord:
    """What happened to one item; the unit the summary is rebuilt from."""

    item: str
    prompt: str
    video: str
    step: str
    step_index: int
    status: str  # "ok" | "failed"
    latent_path: str
    settings: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)  # kind -> path relative to output root
    output_sizes: dict[str, int] = field(default_factory=dict)  # kind -> bytes (or frame count for png)
    error: str | None = None
    error_type: str | None = None
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    load_seconds: float = 0.0
    latent_shape: list[int] | None = None
    latent_dtype: str | None = None
    frames_shape: list[int] | None = None
    device: str | None = None
    host: str | None = None
    worker: str | None = None  # "inline", or the Ray actor ("ray-0", ...) that decoded it
    pid: int | None = None  # of the worker process
    finished_at: str | None = None
    metadata: dict[str, Any] | None = None
    schema: int = RECORD_SCHEMA

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepRecord":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def write_record(layout: OutputLayout, step: LatentStep, record: StepRecord) -> None:
    write_file_atomic(layout.record_path(step), json.dumps(record.to_dict(), indent=1).encode())


def read_record(path: Path) -> StepRecord | None:
    """A record, or None if it is missing or unreadable (then the item is simply not done)."""
    try:
        return StepRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def output_size(path: Path) -> int | None:
    """Bytes of a file, or the number of entries of a PNG-frames folder; None if absent."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(1 for p in path.iterdir() if p.suffix == ".png")
    return None


class ItemState(str, Enum):
    TODO = "todo"  # never decoded, or its outputs are gone
    DONE = "done"  # decoded with the current settings; skipped
    STALE = "stale"  # decoded with other settings; decoded again
    FAILED = "failed"  # failed last time; tried again
    FORCED = "forced"  # done, but --force


def item_state(layout: OutputLayout, step: LatentStep, settings: OutputSettings, force: bool = False) -> ItemState:
    record = read_record(layout.record_path(step))
    if record is None:
        return ItemState.TODO
    if not record.ok:
        return ItemState.FAILED
    if record.settings != settings.fingerprint():
        return ItemState.STALE
    for kind, rel in record.outputs.items():
        if output_size(layout.root / rel) != record.output_sizes.get(kind):
            return ItemState.TODO
    return ItemState.FORCED if force else ItemState.DONE


@dataclass
class Plan:
    items: list[LatentStep]
    states: dict[str, ItemState]

    @property
    def todo(self) -> list[LatentStep]:
        return [s for s in self.items if self.states[s.key] is not ItemState.DONE]

    def count(self, state: ItemState) -> int:
        return sum(1 for s in self.states.values() if s is state)


def make_plan(settings: RunSettings) -> Plan:
    layout = OutputLayout(settings.output_dir)
    items = settings.experiment.discover(settings.filters)
    states = {s.key: item_state(layout, s, settings.output, settings.force) for s in items}
    return Plan(items, states)
