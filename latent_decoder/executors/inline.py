"""In-process executor: one worker, the lifecycle's stages overlapped on threads.

A serial read -> decode -> encode loop leaves the device idle while the CPU gunzips and runs
x264. Here one thread prepares ahead, the calling thread drives the device, and a small pool
encodes and writes finished items, so the device always has the next latent ready. Results reach
``on_result`` on the calling thread, which commits them to the journal.
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable

from ..experiment import LatentStep
from ..journal import StepRecord
from ..layout import OutputLayout
from ..lifecycle import ItemWork, prepare, write_outputs
from ..resources import usable_cpus
from ..stop import critical
from ..worker import DecodeWorker

log = logging.getLogger(__name__)

ResultCallback = Callable[[LatentStep, StepRecord], None]


WRITE_THREADS = 4  # writing is fsync-bound, not CPU-bound: a few threads overlap the disk's latency


class InlineExecutor:
    def __init__(self, worker: DecodeWorker, layout: OutputLayout, encode_threads: int | None = None,
                 prefetch: int = 2, owns_worker: bool = False) -> None:
        self.worker = worker
        self.layout = layout
        self.owns_worker = owns_worker  # close() frees the worker's model (not a worker lent by the caller)
        self.encode_threads = encode_threads or max(1, min(4, usable_cpus() // 2))
        self.prefetch = max(1, prefetch)

    def _write(self, work: ItemWork) -> StepRecord:
        return write_outputs(self.layout, self.worker.output, work)

    def run(self, steps: Iterable[LatentStep], on_result: ResultCallback) -> None:
        """Decode every step; ``on_result(step, record)`` once per item, on this thread.

        Stages: prepare (reader thread) -> decode (this thread) -> encode (CPU pool) -> write
        (I/O pool). On KeyboardInterrupt, or a run-level stop (full disk, broken device), no new item
        starts; items already decoded are still encoded, written and committed, then the exception
        propagates.
        """
        pending_steps = deque(steps)
        reads: deque[tuple[LatentStep, Future]] = deque()
        encodes: dict[Future, LatentStep] = {}
        writes: dict[Future, LatentStep] = {}
        reader = ThreadPoolExecutor(1, thread_name_prefix="ld-read")
        encoder = ThreadPoolExecutor(self.encode_threads, thread_name_prefix="ld-encode")
        writer = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="ld-write")

        def collect(block: bool) -> None:
            if not encodes and not writes:
                return
            done, _ = wait([*encodes, *writes], timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                with critical():  # an interrupt never lands between an item's files and its record
                    if future in encodes:
                        writes[writer.submit(self._write, future.result())] = encodes.pop(future)
                    else:
                        on_result(writes.pop(future), future.result())

        try:
            while pending_steps or reads:
                while pending_steps and len(reads) < self.prefetch:
                    step = pending_steps.popleft()
                    reads.append((step, reader.submit(prepare, step)))
                step, read = reads.popleft()
                work = self.worker.decode_stage(read.result())
                while len(encodes) + len(writes) >= self.encode_threads * 2 + WRITE_THREADS:
                    collect(block=True)
                encodes[encoder.submit(self.worker.encode_stage, work)] = step
                collect(block=False)
            while encodes or writes:
                collect(block=True)
        except BaseException:
            if encodes or writes:
                log.warning("stopping: finishing %d decoded item(s) already in flight", len(encodes) + len(writes))
            for _, read in reads:
                read.cancel()
            self._drain(encodes, writes, on_result)
            raise
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            encoder.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self.owns_worker:
            self.worker.close()

    def _drain(self, encodes: dict[Future, LatentStep], writes: dict[Future, LatentStep],
               on_result: ResultCallback) -> None:
        """Stopping: commit what is already decoded, as far as the disk allows."""
        for future, step in [*writes.items(), *encodes.items()]:
            try:
                with critical():  # a second Ctrl-C waits for the item being committed
                    record = future.result() if future in writes else self._write(future.result())
                    on_result(step, record)
            except Exception as exc:
                log.warning("item %s not committed while stopping: %s", step.key, exc)
