"""Bringing an output folder's views up to date: which videos need new views, building them, the index.

A video's views are rebuilt when its journal digest changed since they were built (a step added,
decoded again, failed, deleted), when one of its view files is missing, or when its sheet is older
than its newest step output. Otherwise nothing is read but the digest query and the state file, and
nothing is written: the index is rewritten only when its text changes.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GalleryError, first_line
from ..journal import Journal
from ..layout import OutputLayout
from ..resources import usable_cpus
from ..summary import read_summary
from ..experiment import VIDEOS_DIRNAME
from ..settings import X0_SUFFIX
from ..tiny import TINY_DIRNAME
from ..video import write_file_atomic
from .collect import StepView, VideoDigest, VideoView, short_reason, video_digests, video_views
from .frames import FrameReadError, read_frames
from .gallery import (FULL_LABEL, PAGE_NAME, TINY_LABEL, X0_LABEL, XT_LABEL, Sibling, VideoEntry, entries_in_order,
                      render_index, render_video_page, view_note)
from .progression_video import PROGRESSION_NAME, ProgressionWriter, progression_format
from .sheet import DEFAULT_GEOMETRY, SHEET_NAME, SHEET_THUMB_NAME, Sheet, sheet_geometry
from .stats import STATS_NAME, stats_bytes

log = logging.getLogger(__name__)

STATE_NAME = ".latent-decoder-views.json"
VIEWS_VERSION = 1  # bump when the views' look changes: every video is rebuilt once
FAILURES_LISTED = 100
MAX_WORKERS = 8  # videos drawn at once (each holds one step's frames in memory)
NOTICE_ROWS = 200  # drawing this many steps' rows takes a while: one line says so


@dataclass
class ViewsResult:
    """What a views update did."""

    index: Path
    rebuilt: list[str] = field(default_factory=list)  # prompt/video keys whose views were built
    index_written: bool = False
    problems: list[str] = field(default_factory=list)  # one line per video whose views could not be built


def _read_state(root: Path) -> dict[str, Any]:
    try:
        state = json.loads((root / STATE_NAME).read_text())
    except (OSError, ValueError):
        return {"videos": {}}
    if not isinstance(state, dict) or state.get("version") != VIEWS_VERSION:
        return {"videos": {}}
    state.setdefault("videos", {})
    return state


def _write_if_changed(path: Path, text: str) -> bool:
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_file_atomic(path, data)
    return True


def _current(root: Path, digest: VideoDigest, entry: dict[str, Any] | None) -> bool:
    """Whether a video's views on disk are those of ``digest``."""
    if entry is None or not entry.get("built") or entry.get("signature") != digest.signature:
        return False
    folder = root / digest.prompt / digest.video
    files = ((PAGE_NAME, "page"), (SHEET_NAME, "sheet"), (SHEET_THUMB_NAME, "sheet"), (PROGRESSION_NAME, "progression"),
             (STATS_NAME, "stats"))
    wanted = [name for name, flag in files if entry.get(flag)]
    for name in wanted:
        try:
            mtime = (folder / name).stat().st_mtime
        except OSError:
            return False
        if name == SHEET_NAME and digest.newest is not None and mtime < digest.newest:
            return False
    return True


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def build_video(root: Path, view: VideoView, note: str | None = None) -> VideoEntry:
    """A video's views: ``progression.png``, ``progression.mp4``, ``latent_stats.json`` and its page.
    A video with nothing attempted yet gets none (and no folder): the index lists it as pending."""
    d = view.digest
    folder = root / d.prompt / d.video
    entry = VideoEntry(d.prompt, d.video, d.signature, view.prompt_text, d.items, d.done, d.failed,
                       round(d.decode_seconds, 4), built=True)
    stats = [s.stats.get("std") for s in view.steps if s.stats]
    rows = view.rows
    if not rows and not stats:
        for name in (PAGE_NAME, SHEET_NAME, SHEET_THUMB_NAME, PROGRESSION_NAME, STATS_NAME):
            _remove(folder / name)
        return entry
    folder.mkdir(parents=True, exist_ok=True)
    entry.page = True
    entry.spark = [round(float(v), 5) for v in stats if isinstance(v, (int, float))][-200:]
    entry.stats = bool(stats)
    if entry.stats:
        write_file_atomic(folder / STATS_NAME, stats_bytes(view))
    else:
        _remove(folder / STATS_NAME)
    entry.rows = len(rows)
    decoded = [s for s in rows if s.status == "ok"]
    entry.poster = next((s.thumbnail for s in reversed(decoded) if s.thumbnail), None)
    if rows:
        entry.sheet, entry.progression = _draw(root, folder, rows, decoded)
    if not entry.sheet:
        _remove(folder / SHEET_NAME)
        _remove(folder / SHEET_THUMB_NAME)
    if not entry.progression:
        _remove(folder / PROGRESSION_NAME)
    siblings = [s for s in sibling_trees(root) if (root.with_name(s.tree) / d.prompt / d.video / SHEET_NAME).is_file()]
    write_file_atomic(folder / PAGE_NAME, render_video_page(view, entry, siblings, note).encode())
    return entry


def sibling_trees(root: Path) -> list[Sibling]:
    """The trees beside ``root`` whose sheets its video pages show next to their own: the other view
    (``latents_videos`` <-> ``latents_videos_x0``), and the full VAE's and the tiny decoder's trees
    (``latents_videos`` <-> ``latents_tiny``)."""
    name = root.name
    found = []
    if name.endswith(X0_SUFFIX):
        found.append(Sibling(name[: -len(X0_SUFFIX)], "x_t and x0", X0_LABEL, XT_LABEL, mine_first=False))
    else:
        found.append(Sibling(name + X0_SUFFIX, "x_t and x0", XT_LABEL, X0_LABEL, mine_first=True))
    if name == VIDEOS_DIRNAME:
        found.append(Sibling(TINY_DIRNAME, "full VAE and tiny decoder", FULL_LABEL, TINY_LABEL, mine_first=True))
    elif name == TINY_DIRNAME:
        found.append(Sibling(VIDEOS_DIRNAME, "full VAE and tiny decoder", TINY_LABEL, FULL_LABEL, mine_first=False))
    return found


def _draw(root: Path, folder: Path, rows: list[StepView], decoded: list[StepView]) -> tuple[bool, bool]:
    """The sheet and the progression video, reading each decoded step's frames once."""
    cache: dict[str, list[np.ndarray] | FrameReadError] = {}

    def frames_of(step: StepView) -> list[np.ndarray] | FrameReadError:
        if step.step not in cache:
            cache.clear()  # one step's frames in memory at a time (the first is read ahead for the geometry)
            try:
                cache[step.step] = read_frames(root / step.video)
            except FrameReadError as exc:
                cache[step.step] = exc
        return cache[step.step]

    first = next((f for f in (frames_of(s) for s in decoded) if not isinstance(f, FrameReadError)), None)
    if first is None:
        geometry, fmt = DEFAULT_GEOMETRY, None
    else:
        height, width = first[0].shape[:2]
        geometry, fmt = sheet_geometry(width, height, len(first)), progression_format(len(first), width, height)
    sheet = Sheet(geometry, len(rows))
    writer = ProgressionWriter(folder / PROGRESSION_NAME, fmt, len(decoded)) if fmt is not None else None
    try:
        position = 0
        for row, step in enumerate(rows):
            if step.status != "ok":
                sheet.add_failed(row, step, short_reason(step))
                continue
            position += 1
            frames = frames_of(step)
            if isinstance(frames, FrameReadError):
                sheet.add_failed(row, step, f"unreadable output: {frames}")
                continue
            sheet.add_frames(row, step, frames)
            if writer is not None:
                writer.add(step, position, frames)
        sheet.save(folder / SHEET_NAME, folder / SHEET_THUMB_NAME)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    return True, writer is not None


def stale_videos(layout: OutputLayout) -> list[str]:
    """The videos (``prompt/video``) whose views are missing or behind the journal, read-only: one
    aggregate journal query, the state file and a stat per view file, so a run with nothing new costs
    no per-step work. ``index.html`` is listed too when the gallery itself is missing or lists videos
    the journal no longer has."""
    if not layout.journal_path.is_file():
        return []
    root = layout.root
    known = _read_state(root)["videos"]
    with Journal.open(layout, write=False) as journal:
        digests = video_digests(journal)
    stale = [d.key for d in digests if not _current(root, d, known.get(d.key))]
    if not (root / PAGE_NAME).is_file() or set(known) - {d.key for d in digests}:
        stale.append(PAGE_NAME)
    return stale


def build_views(root: Path, force: bool = False) -> ViewsResult:
    """Bring the views of the output folder ``root`` up to date: exactly the videos whose views are
    missing or behind the journal (all of them with ``force``), then the index if its text changed.

    The caller holds the folder's lock (a run's temp-file cleanup would delete files being drawn).
    Reads the journal (read-only) and ``decode_summary.json``; a video whose views cannot be built is
    reported in ``problems``, retried by the next run, and the others are built anyway.
    """
    layout = OutputLayout(Path(root))
    root = layout.root
    if not layout.journal_path.is_file():
        raise GalleryError(f"{root}: nothing decoded there yet (no {layout.journal_path.name}); "
                           "run latent-decoder decode EXP first")
    if not os.access(root, os.W_OK):
        raise GalleryError(f"{root}: the output folder is not writable")
    summary = read_summary(layout) or {}
    state = _read_state(root)
    model = summary.get("model") or state.get("model")
    family = (model or {}).get("family")
    old: dict[str, Any] = state["videos"]

    with Journal.open(layout, write=False) as journal:
        digests = video_digests(journal)
        stale = [d for d in digests if force or not _current(root, d, old.get(d.key))]
        views = video_views(journal, root, stale, family)
        if sum(len(v.rows) for v in views) >= NOTICE_ROWS:  # long enough to say what is going on
            log.info("drawing the views of %d video(s) (%d steps) in %s", len(views),
                     sum(len(v.rows) for v in views), root)
        failures = [(r.item, r.prompt, r.video, r.error)
                    for r in journal.records(state="failed", limit=FAILURES_LISTED)]
    result = ViewsResult(root / PAGE_NAME)
    entries = {d.key: VideoEntry.from_dict(old[d.key]) if d.key in old else VideoEntry(d.prompt, d.video, "")
               for d in digests}
    for view, outcome in zip(views, _build_all(root, views, view_note(summary))):
        if isinstance(outcome, VideoEntry):
            entries[view.key] = outcome
            result.rebuilt.append(view.key)
        else:  # drawn again by the next run
            result.problems.append(f"{view.key}: {first_line(outcome)}")
            entries[view.key] = VideoEntry(view.digest.prompt, view.digest.video, "", view.prompt_text, built=True,
                                           problem=first_line(outcome))
    for d in digests:
        entry = entries[d.key]
        entry.steps, entry.done, entry.failed = d.items, d.done, d.failed
        entry.decode_seconds = round(d.decode_seconds, 4)
    ordered = entries_in_order(entries.values())
    html = render_index(summary, ordered, failures, sum(d.failed for d in digests), model)
    result.index_written = _write_if_changed(root / PAGE_NAME, html)
    new_state = {"version": VIEWS_VERSION, "model": model, "videos": {e.key: e.to_dict() for e in ordered}}
    _write_if_changed(root / STATE_NAME, json.dumps(new_state, indent=1, sort_keys=True))
    return result


def _build_all(root: Path, views: list[VideoView], note: str | None) -> list[VideoEntry | Exception]:
    """``build_video`` for each view, a few at a time (the work is mostly in ffmpeg processes)."""
    if not views:
        return []
    workers = max(1, min(MAX_WORKERS, usable_cpus(), len(views)))

    def one(view: VideoView) -> VideoEntry | Exception:
        try:
            return build_video(root, view, note)
        except Exception as exc:  # noqa: BLE001 - one video's views never stop the others'
            return exc

    if workers == 1:
        return [one(v) for v in views]
    pool = ThreadPoolExecutor(workers, thread_name_prefix="views")
    try:
        return list(pool.map(one, views))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
