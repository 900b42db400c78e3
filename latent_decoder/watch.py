"""``decode --watch``: decode while the generation is still writing its steps.

Generators write step files in place, not atomically, so a file is taken only when it is complete:
its size and mtime have not changed for ``SETTLE_S``, and its payload proves it whole (an ``.npy``
holds the bytes its header declares, a gzip stream reaches its trailer, a ``torch.save`` zip has its
central directory). A torn file is never decoded and never recorded failed: it is looked at again
when it changes. New files are noticed through filesystem events (``watchfiles``: inotify and its
kin) or, on NFS or with ``--poll``, by rescanning every ``POLL_S``; each round decodes what became
ready with the same worker (or Ray pool) as the first. The summary and the views of the videos
that changed are redrawn every ``refresh_every`` seconds at most, and at every stop.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from .errors import LatentDecoderError
from .experiment import LatentStep
from .settings import WatchOptions

log = logging.getLogger(__name__)

SETTLE_S = 0.5  # a file must keep its size and mtime this long before it counts as written
POLL_S = 1.0  # rescan interval without filesystem events (NFS, --poll)
def is_complete(path: Path) -> bool:
    """Whether a latent file is whole: its format's own structure says so (no torn write)."""
    from .latents import is_torch_file, read_array
    from .npyfile import read_npy_header

    try:
        if not str(path).endswith(".gz") and not is_torch_file(path):
            read_npy_header(path)  # checks the size against the header's declaration
        else:
            read_array(path.read_bytes(), path)  # a cut gzip stream or zip archive does not parse
    except (LatentDecoderError, OSError):
        return False
    return True


@dataclass
class Settling:
    """Remembers each file's last (size, mtime) and since when it has not changed."""

    seen: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    def ready(self, step: LatentStep, now: float) -> bool:
        stat = (step.size, step.mtime_ns)
        last = self.seen.get(step.file)
        if last is None or last[:2] != stat:
            self.seen[step.file] = (*stat, now)
            return False
        return now - last[2] >= SETTLE_S and is_complete(step.path)


def ready_steps(todo: list[LatentStep], settling: Settling, done_files: set[str]) -> list[LatentStep]:
    """The steps of ``todo`` whose files are complete now (each file is handed out once per content)."""
    now = time.monotonic()
    ready = []
    for step in todo:
        marker = f"{step.file}:{step.size}:{step.mtime_ns}"
        if marker not in done_files and settling.ready(step, now):
            done_files.add(marker)
            ready.append(step)
    return ready


class Watcher:
    """Hands out rounds of complete steps until the generation has been idle for ``idle_exit``; then
    ``incomplete`` lists the steps still torn (never decoded: the run says so and exits non-zero).

    With filesystem events, a Ctrl-C or SIGTERM while waiting reaches the caller as KeyboardInterrupt
    (``raise_interrupt``: watchfiles would otherwise swallow it, end its generator and leave the loop
    spinning on an exhausted watch). A latents folder that does not exist yet is waited for by polling."""

    def __init__(self, latents_dir: Path, options: WatchOptions) -> None:
        self.latents_dir = latents_dir
        self.options = options
        self.incomplete: list[str] = []
        self._changes: Iterator | None = None

    def wait(self, seconds: float) -> None:
        """Return on the next filesystem change under the latents folder, or after ``seconds``."""
        if self._changes is None and not self.options.poll and self.latents_dir.is_dir():
            try:
                import watchfiles
            except ImportError:
                log.info("watchfiles is not installed: polling %s every %.0fs", self.latents_dir, POLL_S)
                self.options = replace(self.options, poll=True)
            else:
                self._changes = watchfiles.watch(self.latents_dir, debounce=200, step=50,
                                                 rust_timeout=int(POLL_S * 1000), yield_on_timeout=True,
                                                 raise_interrupt=True)
        if self._changes is None:
            time.sleep(seconds)
        else:
            next(self._changes)

    def rounds(self, first: list[LatentStep], replan: Callable[[], list[LatentStep]]) -> Iterator[list[LatentStep]]:
        """Batches of complete steps to decode: what is ready now, then what becomes ready, until no new
        complete step has appeared for ``idle_exit`` seconds. ``replan()`` gives the steps not yet done
        (a fresh plan against the journal)."""
        settling, handed = Settling(), set()
        todo = first
        last_new = time.monotonic()
        log.info("watching %s for new steps (exits after %.0fs without one; Ctrl-C stops)", self.latents_dir,
                 self.options.idle_exit)
        while True:
            batch = ready_steps(todo, settling, handed)
            if batch:
                yield batch
                last_new = time.monotonic()
            waiting = [s for s in todo if f"{s.file}:{s.size}:{s.mtime_ns}" not in handed]
            if not batch and time.monotonic() - last_new >= self.options.idle_exit:
                self.incomplete = [s.key for s in waiting]
                log.info("no new step for %.0fs: done watching", self.options.idle_exit)
                return
            self.wait(SETTLE_S if waiting else POLL_S)
            todo = replan()
