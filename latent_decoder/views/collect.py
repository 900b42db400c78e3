"""What the views show, read from the journal: per video, one cheap digest (to tell whether its views
are current) and, for videos that need rebuilding, each step's row.

The digest is one aggregate query over the journal's items, so a run with nothing new costs no
per-step work: no record parsing, no metadata reads, no stat of any step output.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from ..experiment import LatentStep, metadata_timestep, tell_bad_timesteps
from ..families import FAMILIES
from ..journal import Journal, StepRecord
from ..states import DONE, FAILED

# Per video: items, which successful attempts they show (ids only grow), states, decode time, and when
# the newest output was written. A failed retry that fails the same way changes none of these.
_DIGEST_SQL = f"""
SELECT i.prompt, i.video, COUNT(*), TOTAL(CASE WHEN a.status = 'ok' THEN i.last END),
       TOTAL(CASE WHEN a.status = 'ok' THEN i.last * (i.step_index + 1) END),
       TOTAL(i.state = '{DONE}'), TOTAL(i.state = '{FAILED}'), TOTAL(CASE WHEN i.state = '{DONE}' THEN a.decode_s END),
       MAX(CASE WHEN a.status = 'ok' THEN a.finished_at END)
FROM items i LEFT JOIN attempts a ON a.id = i.last
GROUP BY i.prompt, i.video ORDER BY i.prompt, i.video
"""
# The failed steps and their reasons, which the views show.
_FAILED_SQL = """
SELECT i.prompt, i.video, i.step_index, a.error FROM items i JOIN attempts a ON a.id = i.last
WHERE a.status = 'failed' ORDER BY i.prompt, i.video, i.step_index
"""


@dataclass(frozen=True)
class VideoDigest:
    """One video as the journal sees it, from one aggregate query."""

    prompt: str
    video: str
    items: int
    done: int
    failed: int
    decode_seconds: float
    signature: str  # changes when what its views show changes: steps added, gone, decoded, failing otherwise
    newest: float | None  # when its newest step output was written (epoch seconds)

    @property
    def key(self) -> str:
        return f"{self.prompt}/{self.video}"

    @property
    def pending(self) -> int:
        return self.items - self.done - self.failed


def video_digests(journal: Journal) -> list[VideoDigest]:
    """Every video of the journal, in prompt/video order."""
    failed: dict[tuple[str, str], Any] = {}
    for prompt, video, index, error in journal.conn.execute(_FAILED_SQL):
        failed.setdefault((prompt, video), hashlib.sha1()).update(f"{index}\t{error}\n".encode())
    found = []
    for prompt, video, items, last_sum, last_weighted, done, failed_n, decode_s, newest in \
            journal.conn.execute(_DIGEST_SQL).fetchall():
        reasons = failed.get((prompt, video))
        signature = (f"{items}:{int(last_sum)}:{int(last_weighted)}:{int(done)}:{int(failed_n)}:"
                     f"{reasons.hexdigest()[:16] if reasons else '-'}")
        found.append(VideoDigest(prompt, video, items, int(done), int(failed_n), float(decode_s or 0.0), signature,
                                 _timestamp(newest)))
    return found


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@dataclass
class StepView:
    """One step of a video as the views show it: a decoded row, a failed row, or nothing (no outputs)."""

    step: str
    index: int
    status: str | None  # "ok" | "failed" | None (never attempted)
    state: str | None
    error: str | None = None
    video: str | None = None  # output path relative to the output folder (an .mp4, or a folder of PNG frames)
    thumbnail: str | None = None
    timestep: float | None = None
    sigma: float | None = None
    stats: dict[str, Any] | None = None  # mean, std, channel_norms of the stored latent
    decode_seconds: float = 0.0
    latent_path: str | None = None

    @property
    def shown(self) -> bool:
        """Failed steps show as failed; decoded ones only while their outputs are on disk."""
        return self.status == "failed" or (self.status == "ok" and self.video is not None)

    @property
    def frames_dir(self) -> bool:
        return self.video is not None and not self.video.endswith(".mp4")

    def label(self) -> list[str]:
        """The lines that name the step in the sheet and the progression video."""
        lines = [self.step]
        if self.timestep is not None:
            lines.append(f"t = {format_number(self.timestep)}")
        if self.sigma is not None:
            lines.append(f"sigma = {self.sigma:.3f}")
        return lines


def short_reason(step: StepView) -> str:
    """A failed step's reason without its latent file's folder (the row already says which step)."""
    reason = step.error or "failed"
    if step.latent_path:
        reason = reason.replace(step.latent_path, Path(step.latent_path).name)
    return reason


@dataclass
class VideoView:
    """A video's steps in order, with what its views need beyond the journal."""

    digest: VideoDigest
    prompt_text: str | None
    steps: list[StepView] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.digest.key

    @property
    def rows(self) -> list[StepView]:
        return [s for s in self.steps if s.shown]

    @property
    def decoded(self) -> list[StepView]:
        return [s for s in self.steps if s.status == "ok" and s.video is not None]


def format_number(value: float) -> str:
    """A timestep as people write it: 999, 833.3, 12.5."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if not float(value).is_integer() else str(int(value))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
    return float(value) if math.isfinite(value) else None


def step_view(root: Path, record: StepRecord, family: str | None,
              bad_timesteps: dict[str, str] | None = None) -> tuple[StepView, str | None]:
    """A record as a view row, with the prompt text its metadata holds (if any). Outputs are checked
    on disk: a video whose file is gone is not shown. A metadata timestep that is not a number is
    shown as none, and noted in ``bad_timesteps`` (metadata file -> why)."""
    meta: dict[str, Any] = {}
    timestep = None
    if record.latent_path:
        step = LatentStep(record.prompt, record.video, record.step, record.step_index, record.latent_path)
        meta = step.read_metadata() or {}
        try:
            timestep = metadata_timestep(meta)
        except ValueError as exc:
            if bad_timesteps is not None:
                bad_timesteps[str(step.metadata_path)] = str(exc)
    sigma = _number(meta.get("sigma"))
    if sigma is None and timestep is not None and family in FAMILIES and FAMILIES[family].flow_matching:
        sigma = timestep / 1000.0
    view = StepView(step=record.step, index=record.step_index, status=record.status, state=record.state,
                    error=record.error, timestep=timestep, sigma=sigma, stats=record.latent_stats,
                    decode_seconds=record.decode_seconds or 0.0, latent_path=record.latent_path)
    if record.status == "ok":
        video, thumb = record.outputs.get("video"), record.outputs.get("thumbnail")
        if video and (root / video).exists():
            view.video = video
        if thumb and (root / thumb).is_file():
            view.thumbnail = thumb
    prompt = meta.get("prompt")
    return view, prompt if isinstance(prompt, str) and prompt.strip() else None


def video_views(journal: Journal, root: Path, digests: Iterable[VideoDigest], family: str | None) -> list[VideoView]:
    """The full view of each of these videos (one pass over the journal's records)."""
    wanted = {d.key: VideoView(d, None) for d in digests}
    if not wanted:
        return []
    prompts = {d.prompt for d in (v.digest for v in wanted.values())}
    only = next(iter(wanted.values())).digest if len(wanted) == 1 else None
    records = (journal.records(prompt=only.prompt, video=only.video) if only is not None else
               (r for p in sorted(prompts) for r in journal.records(prompt=p)))
    bad: dict[str, str] = {}
    for record in records:
        view = wanted.get(f"{record.prompt}/{record.video}")
        if view is None:
            continue
        step, prompt_text = step_view(root, record, family, bad)
        view.steps.append(step)
        if view.prompt_text is None and prompt_text:
            view.prompt_text = prompt_text
    tell_bad_timesteps(bad)
    return list(wanted.values())
