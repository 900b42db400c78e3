"""One decode run: plan -> lock -> worker -> executor -> summary, with progress and a report.

Everything a user-facing entry point (CLI, API, compat script) needs goes through
``run_decode``; they differ only in how they build ``RunSettings`` and print the report.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from contextlib import contextmanager

from .executors import InlineExecutor
from .experiment import LatentStep
from .lock import OutputLock
from .plan import ItemState, OutputLayout, Plan, StepRecord, make_plan
from .settings import RunSettings
from .summary import RunInfo, write_summary
from .video import remove_stale_temps
from .models import resolve_model
from .worker import DecodeWorker, resolve_device

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: stop starting items, keep finished ones."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let ``kill PID`` (SIGTERM) stop a run as cleanly as Ctrl-C does."""
    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RunReport:
    plan: Plan
    records: dict[str, StepRecord] = field(default_factory=dict)  # this run's, by item key
    skipped: int = 0
    summary: dict[str, Any] | None = None
    interrupted: int | None = None  # signal number
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
        return 1 if self.failed or not self.plan.items else 0


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

    def update(self, step: LatentStep, record: StepRecord | None) -> None:
        self.done += 1
        if record is not None and not record.ok:
            self.failed += 1
            if not self.line_mode:
                self.bar.write(f"failed: {record.error}", file=sys.stderr)
        self.bar.update(1)
        if self.failed:
            self.bar.set_postfix(failed=self.failed, refresh=False)
        if self.line_mode:
            status = "done before" if record is None else record.status
            took = "" if record is None else f" decode {record.decode_seconds:.2f}s encode {record.encode_seconds:.2f}s"
            if record is not None and not record.ok:
                took = f": {record.error}"
            log.info("[%d/%d] %s %s%s", self.done, self.total, step.key, status, took)

    def close(self) -> None:
        self.bar.close()


def run_decode(
    settings: RunSettings,
    worker: DecodeWorker | None = None,
    progress: bool = True,
    on_result: Callable[[LatentStep, StepRecord | None], None] | None = None,
    worker_cls: type[DecodeWorker] = DecodeWorker,
) -> RunReport:
    """Decode every planned item not already done, then rebuild the summary from all records
    (a setup failure in a folder that holds no records leaves none behind).

    ``settings.executor.decided()`` picks in-process decoding or a Ray actor pool of ``worker_cls``;
    a given ``worker`` is always used in-process.
    """
    start = time.perf_counter()
    plan = make_plan(settings)
    report = RunReport(plan)
    layout = OutputLayout(settings.output_dir)
    todo = plan.todo
    model = None
    use_ray = bool(todo) and worker is None and settings.executor.decided().kind == "ray"
    if todo and worker is None and not use_ray:
        # Fail fast on a bad device or model, before touching the output folder.
        resolve_device(settings.device)
        model = resolve_model(settings.output.model, settings.output.vae_subfolder, settings.output.vae_config)
    with OutputLock(settings.output_dir), sigterm_as_interrupt():
        removed = remove_stale_temps(settings.output_dir)
        if removed:
            log.info("removed %d temp file(s) left by an interrupted run", removed)
        report.skipped = plan.count(ItemState.DONE)
        model_info: dict[str, Any] | None = None
        bar: Progress | None = None
        executor: InlineExecutor | Any = None
        try:
            if todo:
                if use_ray:
                    from .executors.ray import RayExecutor

                    executor = RayExecutor(settings, worker_cls=worker_cls)
                    model_info = executor.start()
                else:
                    if worker is None:
                        worker = worker_cls(settings.output, settings.output_dir, settings.device, model=model,
                                            force=settings.force)
                    else:
                        worker.layout, worker.force = layout, settings.force
                    model_info = worker.describe()
                    executor = InlineExecutor(worker)
                bar = Progress(len(todo), progress)

                def record(step: LatentStep, rec: StepRecord | None) -> None:
                    if rec is None:
                        report.skipped += 1
                    else:
                        report.records[step.key] = rec
                    bar.update(step, rec)
                    if on_result is not None:
                        on_result(step, rec)

                executor.run(todo, record)
        except KeyboardInterrupt as exc:
            report.interrupted = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        finally:
            if bar is not None:
                bar.close()
            if use_ray and executor is not None:
                executor.close()
            report.wall_seconds = time.perf_counter() - start
            # A setup failure before any decode leaves no summary behind in a fresh folder.
            if report.interrupted is not None or bar is not None or layout.records_dir.is_dir():
                report.summary = write_summary(layout, RunInfo(
                    settings=settings.output.to_dict(), experiment=str(settings.experiment.root),
                    output_dir=str(settings.output_dir), model=model_info, wall_seconds=report.wall_seconds,
                    interrupted=report.interrupted is not None,
                ))
    return report
