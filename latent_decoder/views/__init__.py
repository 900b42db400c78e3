"""Views of a decoded experiment, to see the whole denoising at a glance.

Per video (beside its steps): ``progression.png`` (contact sheet, one row per step),
``progression.mp4`` (the steps played in turn), ``latent_stats.json`` (mean, std and channel norms of
each step's latent) and ``index.html``; for the output folder: ``index.html``, the gallery.

``refresh_views`` is the run's hook: cheap when nothing changed, and never fails the run.
"""
from __future__ import annotations

import logging
import signal
from typing import Any

from ..errors import GalleryError, first_line
from ..layout import OutputLayout
from .build import STATE_NAME, ViewsResult, build_views

__all__ = ["GalleryError", "STATE_NAME", "ViewsResult", "build_views", "refresh_views"]

log = logging.getLogger(__name__)


def refresh_views(layout: OutputLayout, report: Any = None) -> ViewsResult | None:
    """Bring the views up to date at the end of a run. Skipped after Ctrl-C, or where the folder is
    read-only or has no journal; a failure is one warning (the run's own outcome stands); a Ctrl-C
    while building marks ``report`` interrupted like one during the run."""
    if report is not None and getattr(report, "interrupted", None) is not None:
        return None
    if not layout.journal_path.is_file():
        return None
    touched = {f"{r.prompt}/{r.video}" for r in getattr(report, "records", {}).values()}
    try:
        result = build_views(layout.root, touched=touched)
    except GalleryError as exc:  # not writable: nothing to say, the run has said it
        log.debug("views not built: %s", exc)
        return None
    except KeyboardInterrupt as exc:
        if report is not None:
            report.interrupted = getattr(exc, "signum", signal.SIGINT)
        return None
    except Exception as exc:  # noqa: BLE001 - views must never fail a run
        log.warning("could not build the views in %s: %s", layout.root, first_line(exc))
        return None
    if result.problems:
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        log.warning("could not build the views of %s%s", result.problems[0], more)
    return result
