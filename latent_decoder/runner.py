"""One decode run: plan -> lock -> journal -> worker -> executor -> commit -> summary, with progress.

Everything a user-facing entry point (CLI, API, compat script) needs goes through
``run_decode``; they differ only in how they build ``RunSettings`` and print the report.
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

from .errors import ExperimentError, OutputDirError, RunStoppedError
from .executors import InlineExecutor
from .experiment import LatentStep
from .journal import Journal, Migration, StepRecord
from .layout import OutputLayout
from .lifecycle import GroupCommit
from .lock import OutputLock
from .models import resolve_model
from .plan import ItemState, Plan, make_plan
from .settings import RunSettings
from .stop import Interrupted, StopSignals
from .summary import RunInfo, build_summary, figures_differ, read_summary, write_summary
from .video import remove_stale_temps
from .watch import rounds as watch_rounds
from .worker import DecodeWorker, resolve_device

log = logging.getLogger(__name__)


SUMMARY_EVERY_S = 60.0  # a long run refreshes decode_summary.json this often


@dataclass
class RunReport:
    plan: Plan
    records: dict[str, StepRecord] = field(default_factory=dict)  # this run's, by item key
    skipped: int = 0
    summary: dict[str, Any] | None = None
    interrupted: int | None = None  # signal number
    stopped: RunStoppedError | None = None  # why the run stopped before the end (disk full, broken device)
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
        return 1 if self.failed or self.stopped is not None else 0


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


def plan_run(settings: RunSettings) -> Plan:
    """The plan of a run, from the experiment as scanned now and the journal, read-only. An experiment
    with no step to decode (none stored, or none passing the filters) is a setup error."""
    layout = OutputLayout(settings.output_dir)
    with Journal.open(layout, write=False, migration=_migration(settings)) as journal:
        plan = make_plan(settings, journal)
        plan.journal_behind = journal.sync(plan.present, plan.stored, plan.refreshed, plan.entries)
    if not plan.items and settings.watch is None:  # watching, an empty start just waits for steps
        raise _nothing_to_decode(settings, plan)
    return plan


def _migration(settings: RunSettings) -> Migration:
    return Migration(settings.experiment.latents_dir, settings.output.geometry)


def _nothing_to_decode(settings: RunSettings, plan: Plan) -> ExperimentError:
    latents = settings.experiment.latents_dir
    f = settings.filters
    if plan.unavailable:
        key, why = next(iter(plan.unavailable.items()))
        return ExperimentError(f"no step has an x0 to decode ({len(plan.unavailable)} without): {key}: {why}")
    if f.prompts or f.videos or f.steps:
        return ExperimentError(f"no latent steps under {latents} match the filters")
    return ExperimentError(f"no latent steps under {latents} (expected <prompt>/<video>/step_NNN.npy.gz)")


def run_decode(
    settings: RunSettings,
    worker: DecodeWorker | None = None,
    progress: bool = True,
    on_result: Callable[[LatentStep, StepRecord], None] | None = None,
    worker_cls: type[DecodeWorker] = DecodeWorker,
) -> RunReport:
    """Decode every planned item that is not done, committing each to the journal as it finishes,
    then update the summary.

    Nothing is created before the setup is known good (experiment, filters, output folder, device,
    model). A run with nothing to do writes only what has changed (the journal's view of deleted or
    touched latents, the summary), and nothing at all on a read-only folder.
    ``settings.executor.decided()`` picks in-process decoding or a Ray actor pool of ``worker_cls``;
    a given ``worker`` is always used in-process.
    """
    start = time.perf_counter()
    check_output_dir(settings.output_dir)
    plan = plan_run(settings)
    report = RunReport(plan, skipped=plan.count(ItemState.DONE))
    layout = OutputLayout(settings.output_dir)
    todo = plan.todo
    run_info = RunInfo(settings=settings.output.to_dict(), experiment=str(settings.experiment.root),
                       output_dir=str(settings.output_dir), duplicates=tuple(plan.all_duplicates),
                       view=settings.output.view, x0=plan.x0_label,
                       unavailable=tuple(f"{k}: {why}" for k, why in plan.unavailable.items()))
    if not todo and settings.watch is None:
        if _update_without_decoding(layout, settings, plan, run_info, report):
            refresh_views(layout, report)  # the gallery follows the journal; never fails the run
        report.wall_seconds = time.perf_counter() - start
        return report
    model = None
    if worker is None and settings.output.decoder == "preview":
        # A preview needs no model, no device and no Ray: in-process, and it fails fast here too.
        from .previews.worker import PreviewWorker

        worker = PreviewWorker(settings.output, settings.output_dir)
    use_ray = worker is None and settings.executor.decided().kind == "ray"
    if worker is None and not use_ray:
        # Fail fast on a bad device or model, before touching the output folder.
        resolve_device(settings.device)
        model = resolve_model(settings.output.model, settings.output.vae_subfolder, settings.output.vae_config)
    executor: InlineExecutor | Any = None
    with StopSignals() as signals:
        try:
            if use_ray:  # workers that cannot start are a setup error: before anything is created
                from .executors.ray import RayExecutor

                executor = RayExecutor(settings, worker_cls=worker_cls)
                run_info.model = executor.start()
            with OutputLock(settings.output_dir):
                removed = remove_stale_temps(settings.output_dir)
                if removed:
                    log.info("removed %d temp file(s) left by an interrupted run", removed)
                bar: Progress | None = None
                run_id: int | None = None
                committer: GroupCommit | None = None
                last_summary = time.monotonic()
                journal: Journal | None = None
                try:
                    journal = Journal.open(layout, write=True, migration=_migration(settings))
                    journal.sync(plan.present, plan.stored, plan.refreshed, plan.entries)
                    run_id = journal.begin_run(run_info.to_dict())
                    committer = GroupCommit(journal, layout, run_id)
                    if not use_ray:
                        if worker is None:
                            worker = worker_cls(settings.output, settings.output_dir, settings.device, model=model)
                        else:
                            worker.layout = layout
                        run_info.model = worker.describe()
                        executor = InlineExecutor(worker, layout)
                    bar = Progress(len(todo) if settings.watch is None else 0, progress)

                    def record(step: LatentStep, rec: StepRecord) -> None:
                        nonlocal last_summary
                        with signals.critical():
                            committer.add(rec)
                            report.records[step.key] = rec
                        bar.update(step, rec)
                        if on_result is not None:
                            on_result(step, rec)
                        if time.monotonic() - last_summary > SUMMARY_EVERY_S:
                            committer.flush()
                            write_summary(layout, build_summary(journal, run_info))
                            last_summary = time.monotonic()

                    if settings.watch is None:
                        executor.run(todo, record)
                    else:
                        def replan() -> list[LatentStep]:
                            committer.flush()
                            fresh = make_plan(settings, journal)
                            journal.sync(fresh.present, fresh.stored, fresh.refreshed, fresh.entries)
                            return fresh.todo

                        for batch in watch_rounds(todo, replan, settings.experiment.latents_dir, settings.watch):
                            bar.grow(len(batch))
                            executor.run(batch, record)
                except KeyboardInterrupt as exc:
                    report.interrupted = exc.signum if isinstance(exc, Interrupted) else signals.raised or signal.SIGINT
                except RunStoppedError as exc:
                    report.stopped = exc
                finally:
                    if bar is not None:
                        bar.close()
                    report.stopped = _flush(committer, report.stopped)
                    report.wall_seconds = time.perf_counter() - start
                    run_info.wall_seconds = report.wall_seconds
                    run_info.interrupted = report.interrupted is not None
                    run_info.stopped = str(report.stopped) if report.stopped is not None else None
                    if journal is not None:
                        report.summary = _finish(journal, layout, run_info, run_id)
                        refresh_views(layout, report)  # the gallery and per-video views (see views/)
        finally:
            if use_ray and executor is not None:
                executor.close()
    return report


def _flush(committer: GroupCommit | None, stopped: RunStoppedError | None) -> RunStoppedError | None:
    """Commit what is still waiting; a full disk here stops the run like anywhere else."""
    try:
        if committer is not None:
            committer.flush()
    except RunStoppedError as exc:
        return stopped or exc
    return stopped


def _finish(journal: Journal, layout: OutputLayout, run_info: RunInfo, run_id: int | None) -> dict[str, Any] | None:
    """Close the run in the journal and write the summary: as much as the disk still allows."""
    try:
        if run_id is not None:
            journal.end_run(run_id, run_info.to_dict())
        summary = build_summary(journal, run_info)
        write_summary(layout, summary)
        return summary
    except (OSError, RunStoppedError) as exc:
        log.warning("could not write %s: %s", layout.summary_path, exc)
        return None
    finally:
        journal.close()


def _update_without_decoding(layout: OutputLayout, settings: RunSettings, plan: Plan, run_info: RunInfo,
                             report: RunReport) -> bool:
    """Nothing to decode: bring the journal and summary up to date if they are behind, else write
    nothing. Returns whether anything was written."""
    if not plan.journal_behind:
        with Journal.open(layout, write=False) as journal:
            summary = build_summary(journal, run_info)
        report.summary = summary
        if not figures_differ(read_summary(layout), summary):
            return False
    if not os.access(settings.output_dir, os.W_OK):
        log.info("%s is read-only: nothing decoded, nothing written", settings.output_dir)
        return False
    with OutputLock(settings.output_dir):
        remove_stale_temps(settings.output_dir)
        with Journal.open(layout, write=True, migration=_migration(settings)) as journal:
            journal.sync(plan.present, plan.stored, plan.refreshed)
            report.summary = build_summary(journal, run_info)
        write_summary(layout, report.summary)
    return True


def refresh_views(layout: OutputLayout, report: RunReport) -> None:
    """The gallery and per-video views (``views/``), imported only when a run has something to show."""
    from .views import refresh_views as refresh

    refresh(layout, report)


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
