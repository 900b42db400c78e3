"""Views of a decoded experiment, to see the whole denoising at a glance.

Per video (beside its steps): ``progression.png`` (contact sheet, one row per step),
``progression.mp4`` (the steps played in turn), ``latent_stats.json`` (mean, std and channel norms of
each step's latent) and ``index.html``; for the output folder: ``index.html``, the gallery.

The views are derived state, like a build output: ``stale_videos`` says (read-only, from one journal
query, the views' state file and a stat per view file) which videos' views are missing or behind the
journal; ``refresh_views`` is the run's hook that redraws exactly those, and never fails the run.
"""
from __future__ import annotations

import logging

import os
from pathlib import Path

from ..errors import GalleryError, first_line
from ..layout import OutputLayout
from ..lock import OutputLock
from ..video import remove_stale_temps
from .build import STATE_NAME, ViewsResult, build_views, stale_videos

__all__ = ["GalleryError", "STATE_NAME", "ViewsResult", "build_views", "refresh_views", "stale_videos",
           "update_gallery"]

log = logging.getLogger(__name__)


def refresh_views(layout: OutputLayout) -> ViewsResult | None:
    """Bring the views up to date at the end of a run (the caller holds the folder lock): every video
    whose views are missing or behind the journal. Skipped where the folder is read-only or has no
    journal; a failure is one warning (the run's own outcome stands). An interrupt propagates."""
    if not layout.journal_path.is_file():
        return None
    try:
        result = build_views(layout.root)
    except GalleryError as exc:  # not writable: nothing to say, the run has said it
        log.debug("views not built: %s", exc)
        return None
    except Exception as exc:  # noqa: BLE001 - views must never fail a run
        log.warning("could not build the views in %s: %s", layout.root, first_line(exc))
        return None
    if result.problems:
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        log.warning("could not build the views of %s%s", result.problems[0], more)
    return result


def update_gallery(root: Path, force: bool = False) -> ViewsResult:
    """``latent-decoder gallery``: the views brought up to date under the folder's lock, as a run does
    (a run's temp-file cleanup would delete files being drawn, and temp files an interrupted drawing
    left are removed first). ``RunLockedError`` when another run holds the folder."""
    layout = OutputLayout(Path(root))
    if not layout.journal_path.is_file():
        raise GalleryError(f"{layout.root}: nothing decoded there yet (no {layout.journal_path.name}); "
                           "run latent-decoder decode EXP first")
    if not os.access(layout.root, os.W_OK):
        raise GalleryError(f"{layout.root}: the output folder is not writable")
    with OutputLock(layout.root):
        remove_stale_temps(layout.root)
        return build_views(layout.root, force=force)
