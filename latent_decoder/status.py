"""``latent-decoder status``: the journal's per-video and per-step view, as text or JSONL."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from .errors import SetupError
from .experiment import Experiment
from .journal import Journal, Migration, StepRecord
from .layout import OutputLayout
from .states import FAILED, PENDING, STORED



def _open(experiment: Experiment, output_dir: Path) -> Journal:
    layout = OutputLayout(output_dir)
    if not layout.journal_path.is_file() and not layout.legacy_records_dir.is_dir():
        raise SetupError(f"{output_dir}: no journal ({layout.journal_path.name}); nothing was decoded there yet")
    vs = experiment.video_settings
    geometry = {"frames": vs.frames, "height": vs.height, "width": vs.width}
    return Journal.open(layout, write=False, migration=Migration(experiment.latents_dir, geometry))


def other_experiment(experiment: Experiment, output_dir: Path) -> str | None:
    """The experiment the folder's last run decoded, when it is not this one: an output folder two
    experiments share holds the items of whichever ran last, and ``status`` must not pass them off
    as this experiment's. None when it is this one's (or no run recorded an experiment)."""
    with _open(experiment, output_dir) as journal:
        run = journal.last_run() or {}
    recorded = run.get("experiment")
    if not recorded or Path(recorded).resolve() == experiment.root.resolve():
        return None
    return str(recorded)


def status_records(experiment: Experiment, output_dir: Path, prompt: str | None = None, video: str | None = None,
                   failed: bool = False) -> Iterator[str]:
    """One JSON line per step: its state and latest attempt (status, input, outputs, timings, error)."""
    with _open(experiment, output_dir) as journal:
        for record in journal.records(state=FAILED if failed else None, prompt=prompt, video=video):
            yield json.dumps(record.to_dict())


def _line(record: StepRecord) -> str:
    took = f" decode {record.decode_seconds:.2f}s" if record.ok else ""
    why = f": {record.error}" if record.error else ""
    return f"  {record.step:<12} {record.state or PENDING:<8}{took}{why}"


def render_status(experiment: Experiment, output_dir: Path, prompt: str | None = None, video: str | None = None,
                  failed: bool = False) -> list[str]:
    with _open(experiment, output_dir) as journal:
        records = list(journal.records(state=FAILED if failed else None, prompt=prompt, video=video))
        run = journal.last_run()
    lines = [f"journal     {OutputLayout(output_dir).journal_path}"]
    if run:
        lines.append(f"last run    {run.get('settings', {}).get('model')} ({run.get('settings', {}).get('dtype')})")
    by_video: dict[str, dict[str, int]] = {}
    for r in records:
        counts = by_video.setdefault(f"{r.prompt}/{r.video}", {})
        counts[r.state or PENDING] = counts.get(r.state or PENDING, 0) + 1
    totals: dict[str, int] = {}
    for key, counts in by_video.items():
        lines.append(f"{key}: " + ", ".join(f"{counts[s]} {s}" for s in STORED if counts.get(s)))
        for s, n in counts.items():
            totals[s] = totals.get(s, 0) + n
        if failed or (prompt and video):
            lines.extend(_line(r) for r in records if f"{r.prompt}/{r.video}" == key)
    lines.append(f"total: {len(records)} steps" + "".join(f", {totals[s]} {s}" for s in STORED if totals.get(s)))
    return lines
