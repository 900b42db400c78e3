"""In-process executor: the compute stage here, on this process's device.

The device work (``decode_stage``) runs on the calling thread, one item at a time, with the next
item already read by the pipeline; CPU encoding (``encode_stage``: x264, PNG) runs on a small pool,
so the device decodes the next latent while earlier ones encode. A Ctrl-C lands in the decode
itself: that item is dropped (decoded again next time) and the ones already decoded are finished.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from ..compute import Worker
from ..experiment import LatentStep
from ..lifecycle import ItemWork
from ..pipeline import HandOn
from ..resources import usable_cpus
from ..stop import critical


class InlineExecutor:
    """``pipeline.Executor`` in this process, with one worker (``compute.Worker``: a VAE on a device,
    or a model-free preview). ``owns_worker``: ``close()`` frees it (not a worker lent by a caller)."""

    prepared = True

    def __init__(self, worker: Worker, encode_threads: int | None = None, owns_worker: bool = False) -> None:
        self.worker = worker
        self.encode_threads = encode_threads or max(1, min(4, usable_cpus() // 2))
        self.owns_worker = owns_worker
        self.waiting: deque[ItemWork] = deque()  # read, waiting for the device
        self.encodes: dict[Future, LatentStep] = {}
        self._encoder: ThreadPoolExecutor | None = None

    @property
    def encoder(self) -> ThreadPoolExecutor:
        if self._encoder is None:
            self._encoder = ThreadPoolExecutor(self.encode_threads, thread_name_prefix="ld-encode")
        return self._encoder

    def room(self) -> int:
        return 0 if self.waiting else 1  # one item ready for the device; the pipeline reads more ahead

    def submit(self, item: ItemWork | LatentStep) -> None:
        self.waiting.append(item)

    def busy(self) -> bool:
        return bool(self.waiting or self.encodes)

    def poll(self, timeout: float | None, hand_on: HandOn) -> None:
        """Decode the next item on this thread (while the encoders keep up: their queue holds decoded
        frames), then hand on the encodes that finished; else wait for one."""
        if self.waiting and len(self.encodes) <= self.encode_threads:
            work = self.worker.decode_stage(self.waiting.popleft())
            self.encodes[self.encoder.submit(self.worker.encode_stage, work)] = work.step
            timeout = 0
        if self.encodes:
            for future in wait(self.encodes, timeout=timeout, return_when=FIRST_COMPLETED).done:
                with critical():  # untracked and handed on together
                    hand_on(self.encodes.pop(future), future.result())

    def stop(self, hand_on: HandOn) -> None:
        """Finish the items already decoded (their encodes); the ones not decoded yet are dropped."""
        self.waiting.clear()
        for future in list(self.encodes):
            with critical():
                hand_on(self.encodes.pop(future), future.result())

    def finish(self) -> None:
        """Nothing to say when the items run out."""

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.shutdown(wait=True, cancel_futures=True)
            self._encoder = None
        if self.owns_worker:
            self.worker.close()
