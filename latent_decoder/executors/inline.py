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
from ..worker import DecodeWorker

log = logging.getLogger(__name__)

ResultCallback = Callable[[LatentStep, StepRecord], None]


class InlineExecutor:
    def __init__(self, worker: DecodeWorker, layout: OutputLayout, encode_threads: int | None = None,
                 prefetch: int = 2) -> None:
        self.worker = worker
        self.layout = layout
        self.encode_threads = encode_threads or max(1, min(4, usable_cpus() // 2))
        self.prefetch = max(1, prefetch)

    def _finish(self, work: ItemWork) -> StepRecord:
        return write_outputs(self.layout, self.worker.output, self.worker.encode_stage(work))

    def run(self, steps: Iterable[LatentStep], on_result: ResultCallback) -> None:
        """Decode every step; ``on_result(step, record)`` once per item.

        On KeyboardInterrupt, or a run-level stop (full disk, broken device), no new item starts;
        items already decoded are still encoded and committed, then the exception propagates.
        """
        pending_steps = deque(steps)
        reads: deque[tuple[LatentStep, Future]] = deque()
        encodes: dict[Future, LatentStep] = {}
        reader = ThreadPoolExecutor(1, thread_name_prefix="ld-read")
        encoder = ThreadPoolExecutor(self.encode_threads, thread_name_prefix="ld-encode")

        def collect(block: bool) -> None:
            if not encodes:
                return
            done, _ = wait(list(encodes), timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                on_result(encodes.pop(future), future.result())

        try:
            while pending_steps or reads:
                while pending_steps and len(reads) < self.prefetch:
                    step = pending_steps.popleft()
                    reads.append((step, reader.submit(prepare, step)))
                step, read = reads.popleft()
                work = self.worker.decode_stage(read.result())
                while len(encodes) >= self.encode_threads * 2:
                    collect(block=True)
                encodes[encoder.submit(self._finish, work)] = step
                collect(block=False)
            while encodes:
                collect(block=True)
        except BaseException:
            if encodes:
                log.warning("stopping: finishing %d decoded item(s) already in flight", len(encodes))
            for _, read in reads:
                read.cancel()
            for future, step in list(encodes.items()):
                try:
                    on_result(step, future.result())
                except Exception as exc:
                    log.warning("item %s not committed while stopping: %s", step.key, exc)
            raise
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            encoder.shutdown(wait=True, cancel_futures=True)
