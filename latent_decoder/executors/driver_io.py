"""The Ray driver's reads and writes with ``--io driver``, off the scheduling thread.

Reading a latent and writing an item's outputs (two fsync'd files) one item after another on the
scheduling thread kept runs under 200 items/s (BENCHMARKS.md); here they run on a few threads and
the scheduling loop only submits, waits and hands records on.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable

from ..experiment import LatentStep
from ..journal import StepRecord
from ..lifecycle import ItemWork, prepare
from ..stop import critical

READ_THREADS = 2  # reading and fsync'd writing wait on the disk, not the CPU
WRITE_THREADS = 4


class DriverIO:
    """``--io driver``: latents read ahead and outputs written on a few threads, so the scheduling
    thread only submits, waits and hands records on (a read and two fsync'd writes per item, one
    item after another there, kept runs under 200 items/s). Each record still reaches ``on_result``
    on the scheduling thread, after its outputs are in place."""

    def __init__(self, commit: Callable[[ItemWork], StepRecord]) -> None:
        self.commit = commit
        # Two pools: a read never queues behind fsyncs.
        self.readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ld-read")
        self.writers = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="ld-write")
        self.reads: dict[str, Future] = {}  # item key -> its prepared ItemWork
        self.writes: dict[Future, LatentStep] = {}  # -> its record

    def read_ahead(self, steps: Iterable[LatentStep]) -> None:
        for step in steps:
            if step.key not in self.reads:
                self.reads[step.key] = self.readers.submit(prepare, step)

    def take(self, step: LatentStep) -> ItemWork | None:
        """The step's prepared work, or None while it is being read."""
        self.read_ahead([step])
        read = self.reads[step.key]
        if not read.done():
            return None
        del self.reads[step.key]
        return read.result()

    def write(self, step: LatentStep, work: ItemWork) -> None:
        with critical():  # tracked as soon as it is submitted: an interrupt cannot orphan its files
            self.writes[self.writers.submit(self.commit, work)] = step

    def finished(self, block: bool = False) -> list[tuple[LatentStep, Future]]:
        """Writes that are over (all of them, with ``block``), each with its step; still tracked
        until ``hand_on`` passes each record on."""
        done = wait(self.writes).done if block and self.writes else [f for f in self.writes if f.done()]
        return [(self.writes[future], future) for future in done]

    def hand_on(self, step: LatentStep, written: Future, on_result: Callable[[LatentStep, StepRecord], None]) -> None:
        """One finished write's record to ``on_result``; untracked in the same critical section, so an
        interrupt leaves it either still tracked (the drain hands it on) or committed."""
        with critical():
            del self.writes[written]
            on_result(step, written.result())

    def busy(self) -> bool:
        """Whether a read or a write is still running (the loop then looks again soon)."""
        return bool(self.writes) or not all(read.done() for read in self.reads.values())

    def close(self) -> None:
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.writers.shutdown(wait=True, cancel_futures=True)
