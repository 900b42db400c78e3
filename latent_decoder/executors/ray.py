"""Ray executor: the same ``DecodeWorker`` as actors, one per GPU (or N on CPU), fed by the driver.

Ray stays at the edge: it is imported here only, and the worker class is wrapped with
``ray.remote`` when the pool starts. The scheduling loop is a ``ray.wait`` over
``{ref: call}``, which knows which item each result or failure belongs to:

* each actor works on a few items at once (``actor_class``): one decodes while the ones before
  it encode on other threads, so the device does not wait for x264; the driver keeps that many
  items in flight per actor, and an actor with room takes the next one, so mixed cards and latent
  sizes balance;
* results come back one by one and are committed (outputs, then record) as they arrive, so a
  killed driver loses only the items in flight;
* an actor that dies is restarted by Ray (``max_restarts``) or replaced; the items it was
  running are charged one try each and then run alone, so that a later death is charged to the
  item that caused it; an item that killed ``poison_after`` workers (or hung them past the item
  deadline) is recorded failed as poison;
* an error inside an item is recorded by the worker's own stages and never retried here; a full
  disk (``RunStoppedError``) stops the run, wherever the outputs are written.

Every wait has a deadline (``ray_pool.py``): actors that cannot be placed, items that hang,
actors that never come back. Decoding starts with the first live actor; the others join as the
cluster places them, and with ``--gpus N`` on a cluster we joined, the autoscaler is asked for N GPUs.

With ``io="driver"`` (default) the driver reads the latent bytes and writes every output, so
workers need no shared storage; with ``io="shared"`` workers read and write the experiment
path themselves and return only the record.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any, Iterable

from ..errors import (ClusterError, DecodeError, DeviceFailure, LatentDecoderError, PoisonItemError, RunStoppedError,
                      describe_error, first_line)
from ..experiment import LatentStep
from ..layout import OutputLayout
from ..lifecycle import ItemWork, write_outputs
from ..models import ResolvedModel, resolve_model
from ..resources import usable_cpus
from ..settings import RunSettings
from ..stop import critical
from ..worker import DecodeWorker
from .driver_io import DriverIO
from .inline import ResultCallback
from .ray_pool import (CPU_ACTOR_CPUS, GPU_ACTOR_CPUS, ActorPool, Ask, Capacity, Slot, actor_error, plan_actors,
                       resources_text)

__all__ = ["RayExecutor", "actor_class", "CPU_ACTOR_CPUS", "GPU_ACTOR_CPUS", "RESTART_WAIT_S"]

log = logging.getLogger(__name__)

IO_POLL_S = 0.02  # how soon the loop looks again while a read or write runs
MAX_ENCODERS = 4  # encode threads per actor, at most: x264 is multi-threaded itself
RESTART_WAIT_S = 300.0  # how long a lost actor may take to come back before its slot is dropped
REPLACEMENTS_PER_WORKER = 3  # new actors for slots whose restarts are spent, before the pool gives up


@dataclass
class _Call:
    slot: Slot
    step: LatentStep
    tries: int = 0  # workers this item has killed (or hung) so far


class RayExecutor:
    """Decode items on a pool of Ray actors; ``start()`` before ``run()``, ``close()`` after."""

    def __init__(
        self,
        settings: RunSettings,
        worker_cls: type[DecodeWorker] = DecodeWorker,
        max_restarts: int = 3,
        poison_after: int = 3,
        restart_wait_s: float = RESTART_WAIT_S,
    ) -> None:
        self.settings = settings
        self.options = settings.executor
        self.worker_cls = worker_cls
        self.max_restarts = max_restarts
        self.poison_after = poison_after
        self.restart_wait_s = restart_wait_s
        self.layout = OutputLayout(settings.output_dir)
        self.pool: ActorPool | None = None
        self.info: dict[str, Any] = {}
        self._ask: Ask | None = None
        self._capacity: Capacity | None = None  # what was asked of the autoscaler
        self._started_ray = False  # this executor called ray.init (so it calls ray.shutdown)
        self._own_runtime = False  # ... and started a private local runtime, which never grows
        self._warned_no_cuda = False
        self._told_pending = False
        self._ray: Any = None
        self._sigterm: Any = None  # the SIGTERM handler ray.init replaced, when we put it back
        self._signalled: BaseException | None = None  # what that handler raised
        self._io: DriverIO | None = None  # the driver's reads and writes, during run() with io="driver"

    # ------------------------------------------------------------------ starting

    def _init_ray(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise ClusterError("the Ray executor needs Ray, a dependency of latent-decoder: "
                               "pip install 'ray[default]>=2.60,<3'") from exc
        if not ray.is_initialized():
            # No address: a private local runtime, never some cluster that happens to run here
            # (plain ray.init() would join one); RAY_ADDRESS, as set inside a Ray job, still counts.
            address = self.options.address or os.environ.get("RAY_ADDRESS") or "local"
            main = threading.current_thread() is threading.main_thread()
            sigterm = signal.getsignal(signal.SIGTERM) if main else None
            try:
                ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = "a new local runtime" if address == "local" else address
                raise ClusterError(f"cannot start Ray on {where}: {first_line(exc)}") from exc
            finally:
                if sigterm is not None:
                    self._restore_sigterm(sigterm)
            self._started_ray = True
            self._own_runtime = address == "local"
        return ray

    def _restore_sigterm(self, previous: Any) -> None:
        """ray.init makes SIGTERM exit at once (status 15, stack dump): put back the handler installed
        before (the runner's stops the run cleanly). Ray turns an exception raised by a handler inside
        its own calls into a plain KeyboardInterrupt, so remember what the handler raised."""
        if not callable(previous):
            signal.signal(signal.SIGTERM, previous)
            return

        def handler(signum: int, frame: Any) -> None:
            try:
                previous(signum, frame)
            except BaseException as exc:
                self._signalled = exc
                raise

        self._sigterm = previous
        signal.signal(signal.SIGTERM, handler)

    def _interrupt(self, exc: KeyboardInterrupt) -> BaseException:
        """The exception the signal handler raised, even when Ray replaced it on the way up."""
        return self._signalled if self._signalled is not None else exc

    def _model_for_actors(self) -> ResolvedModel | None:
        """A local model folder travels as an absolute path; a repo id is resolved on each node."""
        source = self.settings.output.model
        if not Path(source).expanduser().exists():
            return None
        model = resolve_model(source, self.settings.output.vae_subfolder, self.settings.output.vae_config)
        return replace(model, folder=model.folder.resolve())

    def start(self) -> dict[str, Any]:
        """Start (or join) Ray and the actors; return once one is live, which describes the model.

        Raises a one-line ``ClusterError`` if no actor starts within the start deadline (what was
        asked and what the cluster has), or if the actors cannot load the model. ``info["workers"]``
        lists the live workers' devices and grows as more join."""
        ray = self._ray = self._init_ray()
        ask = self._ask = plan_actors(ray, self.options, self.settings.device, fixed=self._own_runtime)
        output_dir = self.settings.output_dir.resolve() if self.options.io == "shared" else None
        remote_cls = ray.remote(actor_class(self.worker_cls))
        actor_options = {"num_gpus": ask.gpus, "num_cpus": ask.cpus, "max_restarts": self.max_restarts,
                         "max_task_retries": 0, "max_concurrency": MAX_ENCODERS + 2}
        args = (self.settings.output, output_dir, ask.device, self._model_for_actors())
        self._capacity = Capacity(ray)
        if not self._own_runtime:  # a cluster we joined may autoscale
            self._capacity.request(ask)
        started = time.monotonic()
        deadline = started + self.options.start_timeout
        self.pool = ActorPool(
            ray, lambda i: remote_cls.options(**actor_options).remote(*args, name=f"ray-{i}"), ask.count, deadline,
            self.restart_wait_s, ask.count * REPLACEMENTS_PER_WORKER, self.options.item_timeout)
        log.info("Ray: %d worker(s) (%s each), io=%s", ask.count,
                 f"{ask.gpus:g} GPU" if ask.gpus else f"{ask.cpus:g} CPU", self.options.io)
        every = min(10.0, max(1.0, self.options.start_timeout / 10))
        report_at = started + every
        try:
            while not self.pool.live:
                now = time.monotonic()
                if now >= deadline or not self.pool.hopeful():
                    self._no_worker_started()
                if now >= report_at:
                    log.info("waiting for Ray workers: 0 of %d started after %.0f s (--start-timeout %g s); "
                             "the cluster has %s", ask.count, now - started, self.options.start_timeout,
                             resources_text(ray, bool(ask.gpus)))
                    report_at = now + every
                self._wait_pings(min(deadline, report_at, self.pool.next_event(now)))
        except KeyboardInterrupt as exc:
            raise self._interrupt(exc) from None
        return self.info

    def _no_worker_started(self) -> None:
        pool = self.pool
        if pool.init_errors:
            raise ClusterError(pool.init_errors[0])
        has = resources_text(self._ray, bool(self._ask.gpus))
        raise ClusterError(f"{self._ask}; the cluster has {has}: no worker started within "
                           f"{self.options.start_timeout:g} s (--start-timeout)")

    def _wait_pings(self, until: float) -> None:
        """Wait (at most until ``until``) for pings only: used while no item runs."""
        self.pool.tick(time.monotonic())
        refs = self.pool.ping_refs()
        timeout = max(0.01, until - time.monotonic())
        if not refs:
            time.sleep(timeout)
            return
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
        for ref in ready:
            self._pinged(ref)

    def _pinged(self, ref: Any) -> None:
        """A slot answered a ping: the first live one describes the run's model, later ones join
        (the pool grows) or come back from a restart."""
        slot, described = self.pool.pinged(ref)
        if slot.state == "dropped" and self.pool.hopeful():
            log.warning("Ray worker %d given up (%s); %d worker(s) left", slot.index, slot.failure,
                        len(self.pool.live))
        if described is None:
            return
        slot.concurrency = described["concurrency"]
        if slot.joined:
            log.info("Ray worker %d is back (pid %d)", slot.index, slot.identity.pid)
            return
        slot.joined = True
        if not self.info:
            self.info.update(described, workers=[])
        else:
            log.info("Ray worker %d joined (%s on %s)", slot.index, described["device"], described["host"])
        self.info["workers"].append(described["device"])
        if self._ask.gpus and described["device"] == "cpu" and not self._warned_no_cuda:
            self._warned_no_cuda = True
            warnings.warn("Ray assigned GPUs but torch sees no CUDA in the workers: decoding on CPU", stacklevel=2)
        if not self.pool.pending:
            self._capacity.release()

    def _tick(self) -> None:
        """Deadlines of the pool: warn about the slots it gives up."""
        dropped = self.pool.tick(time.monotonic())
        unplaced = [s for s in dropped if not s.joined]
        if unplaced:
            self._warn_unplaced(len(unplaced), "not started within "
                                f"{self.options.start_timeout:g} s (--start-timeout)")
        for slot in dropped:
            if slot.joined:
                log.warning("Ray worker %d given up (%s); %d worker(s) left", slot.index, slot.failure,
                            len(self.pool.live))
        if dropped and not self.pool.pending:
            self._capacity.release()

    def _warn_unplaced(self, count: int, what: str) -> None:
        has = resources_text(self._ray, bool(self._ask.gpus))
        log.warning("%s; the cluster has %s: %d of them %s; going on with %d", self._ask, has, count, what,
                    len(self.pool.live))

    def close(self) -> None:
        """Stop the actors, and Ray itself if this executor started it."""
        if self._ray is None:
            return
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self._capacity is not None:
            self._capacity.release()
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False
        if self._sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None

    # ------------------------------------------------------------------ scheduling

    def _submit(self, slot: Slot, step: LatentStep, tries: int, calls: dict[Any, _Call]) -> bool:
        """Send the step to the slot's actor; False while its latent is still being read (driver io)."""
        if self._io is None:
            ref = slot.actor.run_item.remote(step)
        else:
            work = self._io.take(step)
            if work is None:
                return False
            if work.error is not None:  # unreadable: recorded failed without a worker
                work.identity = slot.identity
                self._io.write(step, work)
                return True
            ref = slot.actor.compute.remote(work)
        calls[ref] = _Call(slot, step, tries)
        slot.outstanding.append(ref)
        self.pool.started(slot, time.monotonic())
        return True

    def _commit(self, work: ItemWork) -> Any:
        return write_outputs(self.layout, self.settings.output, work)

    def _finish(self, call: _Call, value: Any, on_result: ResultCallback) -> None:
        """A result came back: write its outputs here (driver io), or report the worker's record."""
        if self._io is None:
            on_result(call.step, value)
        else:
            self._io.write(call.step, value)

    def _lose(self, slot: Slot, calls: dict[Any, _Call], queue: deque, on_result: ResultCallback,
              reason: str, hung: bool = False) -> None:
        """The slot's actor died (or hung): keep finished results, re-queue the rest. Every call sent
        to the actor was running there, so a death is charged to each; a hang only to the oldest
        (the one past its deadline)."""
        ray = self._ray
        failed: list[tuple[_Call, int]] = []
        for position, ref in enumerate(slot.outstanding):
            ready, _ = ray.wait([ref], timeout=0)
            with critical():  # untracked and handed on together, as in _result
                call = calls.pop(ref)
                if ready:
                    try:
                        self._finish(call, ray.get(ref), on_result)
                        continue
                    except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
                        pass
                    except ray.exceptions.RayTaskError as exc:
                        self._failed_in_worker(call, exc, on_result)
                        continue
                failed.append((call, call.tries + (1 if position == 0 or not hung else 0)))
        self.pool.lose(slot, reason)
        for call, tries in reversed(failed):
            if tries >= self.poison_after:
                what = "hung" if hung else "killed"
                error = PoisonItemError(f"{call.step.path}: {what} its worker {tries} times (poison item); "
                                        f"last: {reason}")
                on_result(call.step, self._commit(ItemWork(call.step, error=error, identity=slot.identity)))
            else:
                queue.appendleft((call.step, tries))
        log.warning("Ray worker %d lost (%s); %d item(s) back in the queue", slot.index, reason, len(failed))

    def _failed_in_worker(self, call: _Call, exc: Exception, on_result: ResultCallback) -> None:
        """An error the worker's stages did not record: a full disk (shared io) stops the run as it
        does in the driver; anything else (a bug) is recorded as the item's failure."""
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, RunStoppedError):
            raise cause from None
        error = DecodeError(f"{call.step.path}: worker raised {describe_error(cause)}")
        on_result(call.step, self._commit(ItemWork(call.step, error=error, identity=call.slot.identity)))

    def _hung(self, calls: dict[Any, _Call], queue: deque, on_result: ResultCallback) -> None:
        """Items past their deadline: kill their actor (Ray restarts it) and charge them one try."""
        pool = self.pool
        for slot, seconds in pool.hung(time.monotonic()):
            reason = f"timed out: no result after {seconds:.0f} s (item timeout {pool.item_timeout:.0f} s)"
            pool.kill_hung(slot)
            self._lose(slot, calls, queue, on_result, reason, hung=True)

    def _gone(self, queue: deque, calls: dict[Any, _Call]) -> ClusterError:
        lost = [f"{s.name}: {s.failure}" for s in self.pool.slots if s.failure]
        left = len(queue) + len(calls)
        return ClusterError(f"every Ray worker is gone ({'; '.join(lost[:3]) or 'none started'}); "
                            f"{left} item(s) not decoded: run again to resume")

    def run(self, steps: Iterable[LatentStep], on_result: ResultCallback) -> None:
        """Decode every step on the pool; ``on_result(step, record)`` is called once per item."""
        ray, pool = self._ray, self.pool
        queue: deque[tuple[LatentStep, int]] = deque((step, 0) for step in steps)
        calls: dict[Any, _Call] = {}
        io = self._io = DriverIO(self._commit) if self.options.io == "driver" else None
        try:
            while queue or calls or (io and io.writes):
                self._tick()
                self._hung(calls, queue, on_result)
                if io is not None:  # enough reads ahead to refill every actor at once
                    io.read_ahead(step for step, _ in islice(queue, sum(s.concurrency for s in pool.live)))
                for slot in pool.live:
                    while queue and self._takes(slot, queue[0][1], calls):
                        step, tries = queue[0]
                        if not self._submit(slot, step, tries, calls):
                            break  # its latent is still being read
                        queue.popleft()
                if (queue or calls) and not pool.hopeful():
                    self._written(on_result, block=True)
                    raise self._gone(queue, calls)
                refs = list(calls) + pool.ping_refs()
                timeout = max(0.01, pool.next_event(time.monotonic()) - time.monotonic())
                if io is not None and io.busy():
                    timeout = min(timeout, IO_POLL_S)
                if refs:
                    ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
                else:  # only waiting (for a restart, a placement, the disk): sleep, never spin
                    ready = []
                    time.sleep(timeout)
                for ref in ready:
                    if pool.is_ping(ref):
                        self._pinged(ref)
                    elif ref in calls:
                        self._result(ref, calls, queue, on_result)
                self._written(on_result)
            if pool.pending and not self._told_pending:  # said once, also when run() is called per batch
                self._told_pending = True
                self._warn_unplaced(len(pool.pending), "not started before the items ran out")
        except KeyboardInterrupt as exc:
            self._drain(calls, on_result)
            raise self._interrupt(exc) from None
        finally:
            if io is not None:
                io.close()
            self._io = None

    def _written(self, on_result: ResultCallback, block: bool = False) -> None:
        """Hand on the records of the outputs written so far (of all being written, with ``block``)."""
        for step, written in self._io.finished(block) if self._io is not None else ():
            self._io.hand_on(step, written, on_result)

    @staticmethod
    def _takes(slot: Slot, tries: int, calls: dict[Any, _Call]) -> bool:
        """Whether the slot takes the next item (charged ``tries`` times so far): up to its actor's
        concurrency, but a charged item runs alone, so that its next death is charged to it alone."""
        if any(calls[ref].tries for ref in slot.outstanding):
            return False
        return not slot.outstanding if tries else len(slot.outstanding) < slot.concurrency

    def _result(self, ref: Any, calls: dict[Any, _Call], queue: deque, on_result: ResultCallback) -> None:
        ray = self._ray
        call = calls[ref]
        try:
            value = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            self._lose(call.slot, calls, queue, on_result, actor_error(exc))
            return
        except ray.exceptions.RayTaskError as exc:
            value = exc
        with critical():  # untracked and handed on together: with worker io its files are written
            del calls[ref]
            self.pool.finished(call.slot, ref, time.monotonic())
            if isinstance(value, Exception):
                self._failed_in_worker(call, value, on_result)
            else:
                self._finish(call, value, on_result)

    def _drain(self, calls: dict[Any, _Call], on_result: ResultCallback) -> None:
        """Stopping: commit the results already back (and outputs being written); items still
        running are redone next time."""
        ray = self._ray
        items = list(calls)
        ready, _ = ray.wait(items, num_returns=len(items), timeout=0) if items else ([], [])
        for ref in ready:
            try:
                with critical():
                    self._finish(calls[ref], ray.get(ref), on_result)
            except (ray.exceptions.RayError, LatentDecoderError, OSError):
                log.exception("item %s lost while stopping", calls[ref].step.key)
        for step, written in self._io.finished(block=True) if self._io is not None else ():
            try:
                self._io.hand_on(step, written, on_result)
            except (LatentDecoderError, OSError):
                log.exception("item %s lost while stopping", step.key)
        if len(ready) < len(items):
            log.warning("interrupted: %d item(s) in flight on Ray workers will be decoded next time",
                        len(items) - len(ready))



def actor_class(worker_cls: type[DecodeWorker]) -> type[DecodeWorker]:
    """``worker_cls`` as a threaded actor (``max_concurrency``) that works on a few items at once (its
    ``concurrency``): each call runs the whole item body on its own thread, and a lock lets one decode
    at a time (the VAE keeps its causal cache on the module). So one item decodes, the next one waits
    for the device, already shipped, and earlier ones encode. A sticky device error ends the actor's
    process, so that Ray restarts it on a fresh CUDA context and the items it held are charged one
    try, as for a crash."""

    class RayDecodeWorker(worker_cls):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._decode_lock = threading.Lock()
            encoders = max(1, min(MAX_ENCODERS, usable_cpus() // 2))
            self.concurrency = encoders + 2  # one decoding, the next waiting for the device, the rest encoding

        def decode_stage(self, work: ItemWork) -> ItemWork:
            with self._decode_lock:
                return super().decode_stage(work)

        def describe(self) -> dict[str, Any]:
            return {**super().describe(), "concurrency": self.concurrency}

        def compute(self, work: ItemWork) -> ItemWork:
            try:
                return super().compute(work)
            except DeviceFailure as exc:
                _exit_for(exc)

        def run_item(self, step: LatentStep) -> Any:
            try:
                return super().run_item(step)
            except DeviceFailure as exc:
                _exit_for(exc)

    RayDecodeWorker.__name__ = RayDecodeWorker.__qualname__ = worker_cls.__name__
    return RayDecodeWorker


def _exit_for(exc: DeviceFailure) -> None:
    log.error("%s; this worker exits so that Ray restarts it", exc)
    os._exit(70)
