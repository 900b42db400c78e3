"""The item pipeline, written once: prepare ahead -> compute -> write -> commit, with stop and drain.

An executor decides only where each item's compute stage runs (``Executor``): this process
(``executors/inline.py``) or a pool of Ray actors (``executors/ray.py``). Everything around it is
here, for both:

* latents are read ahead on a few threads (``lifecycle.prepare``), as many as the executor has room
  for and ``prefetch`` more, so the device never waits for gunzip;
* outputs are written on a few threads (``lifecycle.write_outputs``: fsync-bound, not CPU-bound);
* each record reaches ``on_result`` (which commits it to the journal) on the calling thread. An item
  is handed from stage to stage inside ``stop.critical()``: the executor hands a computed item on in
  the same section in which it stops tracking it, and a written item's record goes to ``on_result``
  in the same section in which the pipeline stops tracking it, so an interrupt never separates an
  item's files from its record;
* on an interrupt or a run-level stop (full disk, broken device) no new item starts; what is already
  computed is written and committed (as far as the disk allows), then the exception goes on.
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Protocol, Union

from .experiment import LatentStep
from .journal import StepRecord
from .layout import OutputLayout
from .lifecycle import ItemWork, prepare, write_outputs
from .settings import OutputSettings
from .stop import critical

log = logging.getLogger(__name__)

READ_THREADS = 2  # reading waits on the disk (and gunzip), not on the device
WRITE_THREADS = 4  # writing is fsync-bound: a few threads overlap the disk's latency
WRITES_IN_FLIGHT = 2 * WRITE_THREADS  # no new item starts while this many wait to be written (their bytes are in memory)
IO_POLL_S = 0.02  # how soon the loop looks again while a read or a write runs

Result = Union[ItemWork, StepRecord]  # computed (its outputs still to write) or already written where computed
HandOn = Callable[[LatentStep, Result], None]
ResultCallback = Callable[[LatentStep, StepRecord], None]


class Executor(Protocol):
    """Where the compute stage runs. The pipeline feeds it items while it has ``room``; it hands each
    result on through ``hand_on`` inside ``stop.critical()``, in the same section in which it stops
    tracking the item, so an interrupt leaves every item either still tracked or handed on."""

    prepared: bool  # True: it takes prepared ``ItemWork`` (the bytes read here); False: bare steps it reads itself

    def room(self) -> int:
        """How many more items it takes now."""
        ...

    def submit(self, item: ItemWork | LatentStep) -> None: ...

    def busy(self) -> bool:
        """Whether it holds items not handed on yet (then the pipeline waits in ``poll``)."""
        ...

    def poll(self, timeout: float | None, hand_on: HandOn) -> None:
        """Make progress and hand on what finished; wait at most ``timeout`` seconds (None: until
        something finishes) when there is nothing to do."""
        ...

    def stop(self, hand_on: HandOn) -> None:
        """Stopping: hand on what has already been computed; drop the rest (decoded again next time)."""
        ...

    def finish(self) -> None:
        """The items ran out (end of a run or of a ``--watch`` round)."""
        ...

    def close(self) -> None: ...


def run_items(steps: Iterable[LatentStep], executor: Executor, layout: OutputLayout, output: OutputSettings,
              on_result: ResultCallback, prefetch: int = 2) -> None:
    """Every step through prepare -> compute (``executor``) -> write -> ``on_result``, on this thread."""
    queue = deque(steps)
    reads: deque[Future] = deque()
    writes: dict[Future, LatentStep] = {}
    readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ld-read")
    writers = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="ld-write")

    def write(work: ItemWork) -> StepRecord:
        return write_outputs(layout, output, work)

    def hand_on(step: LatentStep, result: Result) -> None:  # the executor calls it inside critical()
        if isinstance(result, StepRecord):
            on_result(step, result)
        else:
            writes[writers.submit(write, result)] = step

    def written(block: bool) -> None:
        """Hand on the records of finished writes (of all of them, with ``block``)."""
        if not writes:
            return
        finished = wait(writes).done if block else [f for f in writes if f.done()]
        for future in finished:
            with critical():
                on_result(writes.pop(future), future.result())

    def feed() -> None:
        if not executor.prepared:
            while queue and executor.room() > 0:
                executor.submit(queue.popleft())
            return
        while queue and len(reads) < executor.room() + prefetch:
            reads.append(readers.submit(prepare, queue.popleft()))
        while reads and reads[0].done() and executor.room() > 0:
            executor.submit(reads.popleft().result())

    try:
        while queue or reads or writes or executor.busy():
            if len(writes) < WRITES_IN_FLIGHT:
                feed()
            reading = bool(reads) and not reads[0].done()
            if executor.busy():
                executor.poll(IO_POLL_S if reading or writes else None, hand_on)
            elif reading or writes:  # nothing computing: wait for the next read or write
                wait([*([reads[0]] if reading else []), *writes], return_when=FIRST_COMPLETED)
            written(block=False)
        executor.finish()
    except BaseException:
        for future in reads:
            future.cancel()
        _drain(executor, hand_on, writes, on_result)
        raise
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)


def _drain(executor: Executor, hand_on: HandOn, writes: dict[Future, LatentStep], on_result: ResultCallback) -> None:
    """Stopping: write and commit what is already computed, as far as the disk allows; a second
    interrupt waits for the item being committed."""
    try:
        executor.stop(hand_on)
    except Exception as exc:  # noqa: BLE001 - stopping anyway; what was not handed on is decoded next time
        log.warning("while stopping: %s", exc)
    if writes:
        log.warning("stopping: finishing %d item(s) already decoded", len(writes))
    for future, step in list(writes.items()):
        try:
            with critical():
                record = future.result()
                del writes[future]
                on_result(step, record)
        except Exception as exc:  # noqa: BLE001 - e.g. the disk filled up: the item is decoded again next time
            log.warning("item %s not committed while stopping: %s", step.key, exc)
