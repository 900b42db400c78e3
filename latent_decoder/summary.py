"""``decode_summary.json``: rebuilt from every per-item record on disk, written atomically.

Because it is rebuilt from records rather than from what one run remembers, the summary of
a resumed (or filtered, or repeated) run covers every item ever decoded into the folder.
"""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .plan import OutputLayout, StepRecord, read_record
from .video import write_file_atomic

SUMMARY_SCHEMA = 1


def _counters(records: list[StepRecord]) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    total_time = sum(r.decode_seconds for r in ok)
    return {
        "total_steps": len(records),
        "successful_steps": len(ok),
        "failed_steps": len(records) - len(ok),
        "success_rate": len(ok) / len(records) if records else 0.0,
        "total_decode_time": round(total_time, 4),
        "avg_decode_time": round(total_time / len(ok), 4) if ok else 0.0,
        "total_encode_time": round(sum(r.encode_seconds for r in ok), 4),
    }


def load_records(layout: OutputLayout) -> list[StepRecord]:
    """Every readable record under the output folder, ordered by item."""
    if not layout.records_dir.is_dir():
        return []
    records = [read_record(p) for p in layout.records_dir.rglob("*.json")]
    return sorted((r for r in records if r is not None), key=lambda r: (r.prompt, r.video, r.step_index))


def versions() -> dict[str, str]:
    from . import __version__

    found = {"latent_decoder": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "numpy", "imageio_ffmpeg"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found


@dataclass
class RunInfo:
    """What this run adds to the summary beyond the records."""

    settings: dict[str, Any]
    experiment: str
    output_dir: str
    model: dict[str, Any] | None = None
    wall_seconds: float | None = None
    interrupted: bool = False


def build_summary(records: list[StepRecord], run: RunInfo) -> dict[str, Any]:
    by_video: dict[str, list[StepRecord]] = {}
    for record in records:
        by_video.setdefault(f"{record.prompt}/{record.video}", []).append(record)
    return {
        **_counters(records),
        "video_summaries": {key: {"prompt": rs[0].prompt, "video": rs[0].video, **_counters(rs)}
                            for key, rs in by_video.items()},
        "failures": [{"item": r.item, "error": r.error} for r in records if not r.ok],
        "settings": run.settings,
        "model": run.model,
        "experiment": run.experiment,
        "output_dir": run.output_dir,
        "last_run": {
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(run.wall_seconds, 3) if run.wall_seconds is not None else None,
            "interrupted": run.interrupted,
        },
        "versions": versions(),
        "schema": SUMMARY_SCHEMA,
        "steps": [r.to_dict() for r in records],
    }


def write_summary(layout: OutputLayout, run: RunInfo) -> dict[str, Any]:
    summary = build_summary(load_records(layout), run)
    write_file_atomic(layout.summary_path, json.dumps(summary, indent=2).encode())
    return summary
