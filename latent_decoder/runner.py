"""One decode run, in the steps ``run_decode`` reads as:

1. plan (read-only: the experiment as scanned now against the journal);
2. nothing to do: bring the journal, summary and views up to date where they are behind, else write
   nothing at all;
3. otherwise start the executor: everything that can refuse the run (device, model, family rule,
   weights, Ray workers) happens here, before any file is created;
4. under the folder lock: decode every item (in rounds with ``--watch``), committing each;
5. close the run in the journal, write the summary, and draw the views of every video whose views are
   missing or behind its journal (also after an interrupt: a second signal skips them).

Every user-facing entry point (CLI, API, demo, bench) goes through ``run_decode``; they differ only
in how they build ``RunSettings`` and print the report.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import heap
from .compute import Worker
from .errors import OutputDirError, RunLockedError, RunStoppedError
from .executors import InlineExecutor
from .experiment import LatentStep
from .journal import Journal, StepRecord
from .layout import OutputLayout
from .lifecycle import GroupCommit
from .lock import OutputLock
from .models import resolve_model
from .pipeline import Executor, run_items
from .plan import Plan, make_plan, migration, plan_run
from .states import ItemState
from .settings import RunSettings
from .stop import StopSignals, interrupt_signal
from .summary import RunInfo, build_summary, figures_differ, read_summary, write_summary
from .video import remove_stale_temps
from .watch import Watcher
from .worker import DecodeWorker, resolve_device

log = logging.getLogger(__name__)


SUMMARY_EVERY_S = 60.0  # a long run refreshes decode_summary.json this often


@dataclass
class RunReport:
    plan: Plan
    records: dict[str, StepRecord] = field(default_factory=dict)  # this run's latest attempt per item key
    attempts: int = 0  # decode attempts this run made (a watch may decode a changed step twice)
    skipped: int = 0
    summary: dict[str, Any] | None = None
    interrupted: int | None = None  # signal number
    stopped: RunStoppedError | None = None  # why the run stopped before the end (disk full, broken device)
    incomplete: list[str] = field(default_factory=list)  # --watch: steps still torn when the watch ended
    wall_seconds: float = 0.0

    @property
    def failed(self) -> list[StepRecord]:
        return [r for r in self.records.values() if not r.ok]

    @property
    def succeeded(self) -> int:
        return sum(1 for r in self.records.values() if r.ok)

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return 128 + self.interrupted
        return 1 if self.failed or self.stopped is not None or self.incomplete else 0


class Progress:
    """Items done / total, rate and ETA on a tty; one log line per item otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.total = total
        self.done = 0
        self.failed = 0
        self.bar = tqdm(total=total, unit="item", desc="decoding", dynamic_ncols=True, file=sys.stderr,
                        disable=(not enabled) or None, smoothing=0.1)
        self.line_mode = self.bar.disable and enabled

    def update(self, step: LatentStep, record: StepRecord) -> None:
        self.done += 1
        if not record.ok:
            self.failed += 1
            if not self.line_mode:
                self.bar.write(f"failed: {record.error}", file=sys.stderr)
        self.bar.update(1)
        if self.failed:
            self.bar.set_postfix(failed=self.failed, refresh=False)
        if self.line_mode:
            took = (f": {record.error}" if not record.ok else
                    f" decode {record.decode_seconds:.2f}s encode {record.encode_seconds:.2f}s")
            log.info("[%d/%d] %s %s%s", self.done, self.total, step.key, record.status, took)

    def grow(self, items: int) -> None:
        """More items to do (``--watch`` finds them as the generation writes)."""
        self.total += items
        self.bar.total = self.total
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_decode(
    settings: RunSettings,
    worker: Worker | None = None,
    progress: bool = True,
    on_result: Callable[[LatentStep, StepRecord], None] | None = None,
    worker_cls: type[Worker] | None = None,
) -> RunReport:
    """Decode every planned item that is not done, committing each to the journal as it finishes;
    then update the summary and the views.

    Nothing is created before the setup is known good (experiment, filters, settings, output folder,
    device, model, family rule, weights, Ray workers): a refused run leaves no output folder. A run
    with nothing to do writes only what is behind (the journal's view of deleted or touched latents,
    the summary, views), and nothing at all on a read-only folder. ``settings.executor.decided()``
    picks in-process decoding or a Ray actor pool of ``worker_cls`` (default: the class of
    ``--decoder``, ``decoder_class``); a given ``worker`` is always used in-process.
    """
    start = time.perf_counter()
    check_output_dir(settings.output_dir)
    run = Run(settings, plan_run(settings), progress, on_result, start)
    with StopSignals() as signals:
        try:
            if not run.plan.todo and settings.watch is None:
                run.reconcile()
            else:
                OutputLock(settings.output_dir).ensure_free()  # before a model load or a Ray start
                executor = start_executor(settings, run.info, worker, worker_cls)
                try:
                    with OutputLock(settings.output_dir):
                        run.decode(executor, signals)
                finally:
                    executor.close()
        except BaseException as exc:
            signum = interrupt_signal(exc, signals)
            if signum is None or not run.started:
                raise  # not an interrupt, or one before anything was written: the caller says "interrupted"
            run.report.interrupted = signum
    run.report.wall_seconds = time.perf_counter() - start
    return run.report


def decoder_class(decoder: str) -> type[Worker]:
    """The worker class of ``--decoder`` vae or tiny (the preview's worker runs in-process, without a device)."""
    if decoder == "tiny":
        from .tiny.worker import TinyWorker

        return TinyWorker
    return DecodeWorker


def start_executor(settings: RunSettings, info: RunInfo, worker: Worker | None = None,
                   worker_cls: type[Worker] | None = None) -> Executor:
    """Everything that can refuse the run, before the output folder is touched: the device, the model,
    its family rule and weights (in-process), or the Ray workers, which load them. A given ``worker``
    stays its caller's; one made here is closed with the executor."""
    worker_cls = worker_cls or decoder_class(settings.output.decoder)
    if worker is not None:
        info.model = worker.describe()
        return InlineExecutor(worker)
    if settings.output.decoder == "preview":
        from .previews.worker import PreviewWorker  # no model, no device, no Ray: in-process

        worker = PreviewWorker(settings.output, settings.output_dir)
    elif settings.executor.decided().kind == "ray":
        from .executors.ray import RayExecutor

        executor = RayExecutor(settings, worker_cls=worker_cls)
        try:
            info.model = executor.start()
        except BaseException:
            executor.close()
            raise
        return executor
    else:
        resolve_device(settings.device)
        o = settings.output
        # the tiny decoder reads the model's config only, never downloading it (TinyWorker finds it)
        model = None if o.decoder == "tiny" else resolve_model(o.model, o.vae_subfolder, o.vae_config)
        worker = worker_cls(o, settings.output_dir, settings.device, model=model)
        heap.settle()
    info.model = worker.describe()
    return InlineExecutor(worker, owns_worker=True)


class Run:
    """One run's plan, report and summary facts, and the work done under the folder lock."""

    def __init__(self, settings: RunSettings, plan: Plan, progress: bool,
                 on_result: Callable[[LatentStep, StepRecord], None] | None, started_at: float) -> None:
        self.settings = settings
        self.plan = plan
        self.layout = OutputLayout(settings.output_dir)
        self.progress = progress
        self.on_result = on_result
        self.report = RunReport(plan, skipped=plan.count(ItemState.DONE))
        self.info = RunInfo(settings=settings.output.to_dict(), experiment=str(settings.experiment.root),
                            output_dir=str(settings.output_dir), duplicates=tuple(plan.all_duplicates),
                            view=settings.output.view, x0=plan.x0_label,
                            unavailable=tuple(f"{k}: {why}" for k, why in plan.unavailable.items()))
        self.started = False  # the output folder is ours: a signal now ends the run, not the setup
        self.started_at = started_at

    # ------------------------------------------------------------------ nothing to decode

    def reconcile(self) -> None:
        """Nothing to decode: bring the journal, the summary and the views up to date where they are
        behind, else write nothing. A read-only folder is left as it is (one warning when its views
        are behind); a folder another run holds is left to that run."""
        from .views import stale_videos

        with Journal.open(self.layout, write=False) as journal:
            summary = build_summary(journal, self.info)
        self.report.summary = summary
        summary_behind = self.plan.journal_behind or figures_differ(read_summary(self.layout), summary)
        views_behind = stale_videos(self.layout)
        if not summary_behind and not views_behind:
            return
        out = self.settings.output_dir
        if not os.access(out, os.W_OK):
            if views_behind:
                log.warning("warning: the views of %d video(s) in %s are out of date, but the folder is read-only: "
                            "not redrawn", len(views_behind), out)
            else:
                log.info("%s is read-only: nothing decoded, nothing written", out)
            return
        try:
            lock = OutputLock(out).acquire()
        except RunLockedError as exc:
            log.warning("warning: %s; the summary and views are left to it", exc)
            return
        with lock:
            self.started = True
            remove_stale_temps(out)
            if summary_behind:
                with Journal.open(self.layout, write=True, migration=migration(self.settings)) as journal:
                    self.plan.sync(journal)
                    self.report.summary = build_summary(journal, self.info)
                write_summary(self.layout, self.report.summary)
            self.refresh_views()

    # ------------------------------------------------------------------ decoding

    def decode(self, executor: Executor, signals: StopSignals) -> None:
        """Under the folder lock: decode every item the plan (or the watch) hands out, committing each as
        it finishes; then close the run and draw the views. An interrupt or a run-level stop (full
        disk, broken device) ends the decoding; what finished is kept either way."""
        self.started = True
        out = self.settings.output_dir
        removed = remove_stale_temps(out)
        if removed:
            log.info("removed %d temp file(s) left by an interrupted run", removed)
        journal = Journal.open(self.layout, write=True, migration=migration(self.settings))
        bar: Progress | None = None
        committer: GroupCommit | None = None
        run_id: int | None = None
        try:
            self.plan.sync(journal)
            run_id = journal.begin_run(self.info.to_dict())
            committer = GroupCommit(journal, self.layout, run_id)
            bar = Progress(len(self.plan.todo) if self.settings.watch is None else 0, self.progress)
            record = self._recorder(journal, committer, bar, signals)
            if self.settings.watch is None:
                run_items(self.plan.todo, executor, self.layout, self.settings.output, record)
            else:
                self._watch(executor, journal, committer, bar, record)
        except RunStoppedError as exc:
            self.report.stopped = exc
        except BaseException as exc:
            signum = interrupt_signal(exc, signals)
            if signum is None:
                raise
            self.report.interrupted = signum
        finally:
            if bar is not None:
                bar.close()
            self.report.stopped = _flush(committer, self.report.stopped)
            self.report.summary = self._close(journal, run_id)
        self.refresh_views()

    def _recorder(self, journal: Journal, committer: GroupCommit, bar: Progress,
                  signals: StopSignals) -> Callable[[LatentStep, StepRecord], None]:
        """What each finished item goes through: committed and counted together (an interrupt waits),
        then shown; a long run also refreshes its summary now and then."""
        last_summary = [time.monotonic()]

        def record(step: LatentStep, rec: StepRecord) -> None:
            with signals.critical():
                committer.add(rec)
                self.report.records[step.key] = rec
                self.report.attempts += 1
            bar.update(step, rec)
            if self.on_result is not None:
                self.on_result(step, rec)
            if time.monotonic() - last_summary[0] > SUMMARY_EVERY_S:
                committer.flush()
                write_summary(self.layout, build_summary(journal, self.info))
                last_summary[0] = time.monotonic()
        return record

    def _watch(self, executor: Executor, journal: Journal, committer: GroupCommit, bar: Progress,
               record: Callable[[LatentStep, StepRecord], None]) -> None:
        """``--watch``: decode what becomes ready, round after round, with the summary and the views of
        the videos that changed redrawn at most every ``refresh_every`` seconds."""
        options = self.settings.watch

        def replan() -> list[LatentStep]:
            committer.flush()
            fresh = make_plan(self.settings, journal)
            fresh.sync(journal)
            return fresh.todo

        watcher = Watcher(self.settings.experiment.latents_dir, options)
        last_refresh = time.monotonic()
        drawn = self.report.attempts
        try:
            for batch in watcher.rounds(self.plan.todo, replan):
                bar.grow(len(batch))
                run_items(batch, executor, self.layout, self.settings.output, record)
                if self.report.attempts != drawn and time.monotonic() - last_refresh >= options.refresh_every:
                    committer.flush()
                    write_summary(self.layout, build_summary(journal, self.info))
                    draw_views(self.layout)
                    last_refresh, drawn = time.monotonic(), self.report.attempts
        finally:
            self.report.incomplete = watcher.incomplete

    def _close(self, journal: Journal, run_id: int | None) -> dict[str, Any] | None:
        """Close the run in the journal and write the summary: as much as the disk still allows."""
        self.report.wall_seconds = time.perf_counter() - self.started_at
        self.info.wall_seconds = self.report.wall_seconds
        self.info.interrupted = self.report.interrupted is not None
        self.info.stopped = str(self.report.stopped) if self.report.stopped is not None else None
        try:
            if run_id is not None:
                journal.end_run(run_id, self.info.to_dict())
            summary = build_summary(journal, self.info)
            write_summary(self.layout, summary)
            return summary
        except (OSError, RunStoppedError) as exc:
            log.warning("could not write %s: %s", self.layout.summary_path, exc)
            return None
        finally:
            journal.close()

    # ------------------------------------------------------------------ views

    def refresh_views(self) -> None:
        """Draw the views of every video whose views are missing or behind the journal. After an
        interrupt too (saying so: a second signal skips them, and the next run draws them)."""
        if self.report.interrupted is not None:
            log.info("stopping: drawing the views of the videos decoded so far (interrupt again to skip)")
        try:
            draw_views(self.layout)
        except KeyboardInterrupt as exc:
            if self.report.interrupted is None:
                self.report.interrupted = getattr(exc, "signum", signal.SIGINT)


def draw_views(layout: OutputLayout) -> None:
    """The views (``views/``), imported only when a run has something to show; never fails the run."""
    from .views import refresh_views

    refresh_views(layout)


def _flush(committer: GroupCommit | None, stopped: RunStoppedError | None) -> RunStoppedError | None:
    """Commit what is still waiting; a full disk here stops the run like anywhere else."""
    try:
        if committer is not None:
            committer.flush()
    except RunStoppedError as exc:
        return stopped or exc
    return stopped


def check_output_dir(path: Path) -> None:
    """A setup error, before anything is created, for an output folder that cannot be one."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                what = "is a file" if parent == path else f"lies under {parent}, which is a file"
                raise OutputDirError(f"output folder {path} {what}")
            if not os.access(parent, os.W_OK | os.X_OK) and parent != path:
                raise OutputDirError(f"output folder {path} cannot be created: {parent} is not writable")
            return
