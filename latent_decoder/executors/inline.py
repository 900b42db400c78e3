"""In-process executor: one worker, its stages overlapped on threads.

A serial read -> decode -> encode loop leaves the device idle while the CPU gunzips and
runs x264. Here one thread reads ahead, the calling thread drives the device, and a small
pool encodes and commits finished items, so the device always has the next latent ready.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait, FIRST_COMPLETED
from typing import Callable, Iterable

from ..experiment import LatentStep
from ..plan import StepRecord
from ..worker import DecodeWorker, ItemWork

log = logging.getLogger(__name__)

ResultCallback = Callable[[LatentStep, "StepRecord | None"], None]


class InlineExecutor:
    def __init__(self, worker: DecodeWorker, encode_threads: int | None = None, prefetch: int = 2) -> None:
        self.worker = worker
        self.encode_threads = encode_threads or max(1, min(4, (os.cpu_count() or 2) // 2))
        self.prefetch = max(1, prefetch)

    def _finish(self, work: ItemWork) -> StepRecord:
        return self.worker.commit(self.worker.encode_stage(work))

    def run(self, steps: Iterable[LatentStep], on_result: ResultCallback) -> None:
        """Decode every step; ``on_result(step, record)`` gets None for items found already done.

        On KeyboardInterrupt no new item starts, items already decoded are still encoded
        and committed, then the interrupt propagates.
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
                    reads.append((step, reader.submit(self.worker.begin, step)))
                step, read = reads.popleft()
                work = read.result()
                if work is None:
                    on_result(step, None)
                    continue
                work = self.worker.decode_stage(work)
                while len(encodes) >= self.encode_threads * 2:
                    collect(block=True)
                encodes[encoder.submit(self._finish, work)] = step
                collect(block=False)
            while encodes:
                collect(block=True)
        except KeyboardInterrupt:
            if encodes:
                log.warning("interrupted: finishing %d decoded item(s) already in flight", len(encodes))
            for _, read in reads:
                read.cancel()
            for future, step in list(encodes.items()):
                try:
                    on_result(step, future.result())
                except Exception:
                    log.exception("item %s failed while stopping", step.key)
            raise
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            encoder.shutdown(wait=True, cancel_futures=True)
