"""``decode_summary.json``: the experiment's figures, aggregated from the journal.

It describes the experiment as it is now: every item of the latents folder, as last scanned, counted
as successful, failed or pending (never decoded, changed input, other settings, outputs gone).
Per-step detail lives in the journal (``latent-decoder status``), so the file stays small (a
capped list of failures, no per-step records) and is only rewritten when its figures change.
"""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .journal import FAILURES_IN_SUMMARY, Journal
from .layout import OutputLayout
from .states import DONE, FAILED, PENDING_STATES
from .video import write_file_atomic

SUMMARY_SCHEMA = 2


def _counters(states: dict[str, int], decode_time: float, encode_time: float) -> dict[str, Any]:
    total = sum(states.values())
    ok = states.get(DONE, 0)
    return {
        "total_steps": total,
        "successful_steps": ok,
        "failed_steps": states.get(FAILED, 0),
        "pending_steps": sum(states.get(s, 0) for s in PENDING_STATES),
        "success_rate": ok / total if total else 0.0,
        "total_decode_time": round(decode_time, 4),
        "avg_decode_time": round(decode_time / ok, 4) if ok else 0.0,
        "total_encode_time": round(encode_time, 4),
        "pending": {s: states[s] for s in PENDING_STATES if states.get(s)},
    }


def versions() -> dict[str, str]:
    from .version import __version__

    found = {"latent_decoder": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "numpy", "imageio_ffmpeg", "ray"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found


@dataclass
class RunInfo:
    """What a run adds to the summary beyond the journal's figures."""

    settings: dict[str, Any]
    experiment: str
    output_dir: str
    model: dict[str, Any] | None = None
    wall_seconds: float | None = None
    interrupted: bool = False
    stopped: str | None = None  # why the run stopped early (disk full, broken device)
    duplicates: tuple[str, ...] = ()
    view: str = "xt"  # "xt": the stored latents; "x0": the model's x0 prediction (x0.py)
    x0: str | None = None  # the x0 view's label: exact or approximate, where sigma came from
    unavailable: tuple[str, ...] = ()  # x0 view: steps without an x0 (first stored step without noise)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, duplicates=list(self.duplicates), unavailable=list(self.unavailable))


def build_summary(journal: Journal, run: RunInfo) -> dict[str, Any]:
    """Figures from the journal (one aggregate query, no per-item work in Python beyond the failures)."""
    videos: dict[str, dict[str, Any]] = {}
    total_states: dict[str, int] = {}
    total_decode = total_encode = 0.0
    for prompt, video, state, count, decode_s, encode_s in journal.counts():
        v = videos.setdefault(f"{prompt}/{video}", {"prompt": prompt, "video": video, "states": {}, "decode": 0.0,
                                                    "encode": 0.0})
        v["states"][state] = v["states"].get(state, 0) + count
        total_states[state] = total_states.get(state, 0) + count
        if state == DONE:
            v["decode"] += decode_s
            v["encode"] += encode_s
            total_decode += decode_s
            total_encode += encode_s
    failures = [{"item": r.item, "error": r.error, "error_type": r.error_type}
                for r in journal.records(state=FAILED, limit=FAILURES_IN_SUMMARY)]
    counters = _counters(total_states, total_decode, total_encode)
    return {
        **counters,
        "video_summaries": {key: {"prompt": v["prompt"], "video": v["video"],
                                  **_counters(v["states"], v["decode"], v["encode"])}
                            for key, v in videos.items()},
        "failures": failures,
        "failures_not_listed": max(0, counters["failed_steps"] - len(failures)),
        "settings": run.settings,
        "model": run.model,
        "experiment": run.experiment,
        "output_dir": run.output_dir,
        "duplicates": list(run.duplicates),
        "view": run.view,
        **({"x0": run.x0, "unavailable": list(run.unavailable[:FAILURES_IN_SUMMARY])} if run.view == "x0" else {}),
        "last_run": {
            "finished_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "wall_seconds": round(run.wall_seconds, 3) if run.wall_seconds is not None else None,
            "interrupted": run.interrupted,
            "stopped": run.stopped,
        },
        "versions": versions(),
        "details": "per-step records: latent-decoder status EXP [--json]",
        "schema": SUMMARY_SCHEMA,
    }


def write_summary(layout: OutputLayout, summary: dict[str, Any]) -> None:
    write_file_atomic(layout.summary_path, json.dumps(summary, indent=2).encode())


def read_summary(layout: OutputLayout) -> dict[str, Any] | None:
    try:
        return json.loads(layout.summary_path.read_text())
    except (OSError, ValueError):
        return None


FIGURES = ("total_steps", "successful_steps", "failed_steps", "pending_steps", "video_summaries", "failures",
           "duplicates", "unavailable")


def figures_differ(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a summary on disk says something other than ``new`` about the items (run info aside)."""
    return old is None or any(old.get(k) != new.get(k) for k in FIGURES)
