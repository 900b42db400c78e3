"""Ray executor: the compute stage on the same worker class as Ray actors, one per GPU (or N on CPU).

It is a ``pipeline.Executor``: the pipeline reads ahead, writes and commits (in the driver, with
``io="driver"``); this module decides where each item's compute runs and survives the cluster. Ray
stays at the edge: it is imported here only, and the worker class is wrapped with ``ray.remote``
when the pool starts. Each ``poll`` is a ``ray.wait`` over ``{ref: call}``, which knows which item
each result or failure belongs to:

* each actor works on a few items at once (``actor_class``): one decodes while the ones before
  it encode on other threads, so the device does not wait for x264; the driver keeps that many
  items in flight per actor, and an actor with room takes the next one, so mixed cards and latent
  sizes balance;
* results come back one by one and are handed on to the pipeline as they arrive (written and
  committed there), so a killed driver loses only the items in flight;
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
from pathlib import Path
from typing import Any

from .. import heap
from ..errors import (ClusterError, DecodeError, DeviceFailure, LatentDecoderError, PoisonItemError, RunStoppedError,
                      describe_error, first_line)
from ..experiment import LatentStep
from ..lifecycle import ItemWork
from ..models import ResolvedModel, resolve_model
from ..pipeline import HandOn
from ..resources import usable_cpus
from ..settings import RunSettings
from ..stop import critical
from ..compute import Worker
from ..worker import DecodeWorker
from .ray_pool import (CPU_ACTOR_CPUS, GPU_ACTOR_CPUS, ActorPool, Ask, Capacity, Slot, actor_error, plan_actors,
                       resources_text)

__all__ = ["RayExecutor", "actor_class", "CPU_ACTOR_CPUS", "GPU_ACTOR_CPUS", "RESTART_WAIT_S"]

log = logging.getLogger(__name__)

MAX_ENCODERS = 4  # encode threads per actor, at most: x264 is multi-threaded itself
RESTART_WAIT_S = 300.0  # how long a lost actor may take to come back before its slot is dropped
REPLACEMENTS_PER_WORKER = 3  # new actors for slots whose restarts are spent, before the pool gives up


@dataclass
class _Call:
    slot: Slot
    step: LatentStep
    item: ItemWork | LatentStep  # what was sent, sent again when its worker is lost
    tries: int = 0  # workers this item has killed (or hung) so far


class RayExecutor:
    """``pipeline.Executor`` on a pool of Ray actors; ``start()`` (Ray, the actors, the model) before the
    pipeline runs, ``close()`` after. With ``io="driver"`` it takes prepared items (the driver reads
    the latents and writes the outputs: workers need no shared storage); with ``io="shared"`` bare
    steps, which the actors read, decode and write themselves."""

    def __init__(
        self,
        settings: RunSettings,
        worker_cls: type[Worker] = DecodeWorker,
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
        self.prepared = settings.executor.io == "driver"
        self.pool: ActorPool | None = None
        self.queue: deque[tuple[ItemWork | LatentStep, int]] = deque()  # (item, tries): to send, retries first
        self.calls: dict[Any, _Call] = {}  # item calls in flight on actors
        self.ready: deque[tuple[LatentStep, ItemWork | Any]] = deque()  # results to hand on at the next poll
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

    # ------------------------------------------------------------------ the Executor protocol

    def room(self) -> int:
        """Free item places on the live actors, less the items already queued here (at least one item
        is always taken, so that the pipeline keeps polling while actors are still being placed)."""
        free = sum(max(0, s.concurrency - len(s.outstanding)) for s in self.pool.live)
        return max(free, 1) - len(self.queue)

    def submit(self, item: ItemWork | LatentStep) -> None:
        self.queue.append((item, 0))

    def busy(self) -> bool:
        return bool(self.queue or self.calls or self.ready)

    def poll(self, timeout: float | None, hand_on: HandOn) -> None:
        """Deadlines, dispatch to actors with room, one ``ray.wait`` over the item calls and pings, and
        every result (or loss) handled: what finished is handed on, what was lost goes back in the queue."""
        ray, pool = self._ray, self.pool
        try:
            self._tick()
            self._hung(hand_on)
            for slot in pool.live:
                while self.queue and self._takes(slot, self.queue[0][1]):
                    self._send(slot, *self.queue.popleft())
            self._hand_on_ready(hand_on)
            if (self.queue or self.calls) and not pool.hopeful():
                raise self._gone()
            refs = list(self.calls) + pool.ping_refs()
            wait_s = max(0.01, pool.next_event(time.monotonic()) - time.monotonic())
            if timeout is not None:
                wait_s = min(wait_s, timeout)
            if refs:
                ready, _ = ray.wait(refs, num_returns=1, timeout=wait_s)
            else:  # only waiting (for a restart, a placement): sleep, never spin
                ready = []
                time.sleep(wait_s)
            for ref in ready:
                if pool.is_ping(ref):
                    self._pinged(ref)
                elif ref in self.calls:
                    self._result(ref, hand_on)
        except KeyboardInterrupt as exc:
            raise self._interrupt(exc) from None

    def stop(self, hand_on: HandOn) -> None:
        """Hand on the results already back; items still running are decoded again next time."""
        ray = self._ray
        self.queue.clear()
        self._hand_on_ready(hand_on)
        items = list(self.calls)
        ready, _ = ray.wait(items, num_returns=len(items), timeout=0) if items else ([], [])
        for ref in ready:
            step = self.calls[ref].step
            try:
                value = ray.get(ref)
                with critical():
                    del self.calls[ref]
                    hand_on(step, value)
            except (ray.exceptions.RayError, LatentDecoderError, OSError) as exc:
                log.warning("item %s lost while stopping: %s", step.key, first_line(exc))
        if self.calls:
            log.warning("interrupted: %d item(s) in flight on Ray workers will be decoded next time", len(self.calls))
        self.calls.clear()

    def finish(self) -> None:
        """Said once per run (a watch calls this every round): workers never placed."""
        if self.pool.pending and not self._told_pending:
            self._told_pending = True
            self._warn_unplaced(len(self.pool.pending), "not started before the items ran out")

    # ------------------------------------------------------------------ scheduling

    def _send(self, slot: Slot, item: ItemWork | LatentStep, tries: int) -> None:
        """The item to the slot's actor (its whole body with shared io); a latent the driver could not
        read is recorded failed without a worker."""
        if isinstance(item, ItemWork):
            if item.error is not None:
                item.identity = slot.identity
                self.ready.append((item.step, item))
                return
            ref, step = slot.actor.compute.remote(item), item.step
        else:
            ref, step = slot.actor.run_item.remote(item), item
        self.calls[ref] = _Call(slot, step, item, tries)
        slot.outstanding.append(ref)
        self.pool.started(slot, time.monotonic())

    def _hand_on_ready(self, hand_on: HandOn) -> None:
        while self.ready:
            with critical():
                hand_on(*self.ready.popleft())

    def _takes(self, slot: Slot, tries: int) -> bool:
        """Whether the slot takes the next item (charged ``tries`` times so far): up to its actor's
        concurrency, but a charged item runs alone, so that its next death is charged to it alone."""
        if any(self.calls[ref].tries for ref in slot.outstanding):
            return False
        return not slot.outstanding if tries else len(slot.outstanding) < slot.concurrency

    def _result(self, ref: Any, hand_on: HandOn) -> None:
        ray = self._ray
        call = self.calls[ref]
        try:
            value = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            self._lose(call.slot, actor_error(exc))
            return
        except ray.exceptions.RayTaskError as exc:
            value = self._failed_in_worker(call, exc)
        with critical():  # untracked and handed on together: with shared io its files are written
            del self.calls[ref]
            self.pool.finished(call.slot, ref, time.monotonic())
            hand_on(call.step, value)

    def _failed_in_worker(self, call: _Call, exc: Exception) -> ItemWork:
        """An error the worker's stages did not record: a full disk (shared io) stops the run as it does
        in the driver; anything else (a bug) becomes the item's failure."""
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, RunStoppedError):
            raise cause from None
        return ItemWork(call.step, error=DecodeError(f"{call.step.path}: worker raised {describe_error(cause)}"),
                        identity=call.slot.identity)

    def _lose(self, slot: Slot, reason: str, hung: bool = False) -> None:
        """The slot's actor died (or hung): keep finished results, re-queue the rest. Every call sent
        to the actor was running there, so a death is charged to each; a hang only to the oldest
        (the one past its deadline). An item that killed ``poison_after`` workers fails as poison."""
        ray = self._ray
        failed: list[tuple[_Call, int]] = []
        for position, ref in enumerate(slot.outstanding):
            ready, _ = ray.wait([ref], timeout=0)
            with critical():  # untracked and kept (to hand on, or to retry) together
                call = self.calls.pop(ref)
                if ready:
                    try:
                        self.ready.append((call.step, ray.get(ref)))
                        continue
                    except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
                        pass
                    except ray.exceptions.RayTaskError as exc:
                        self.ready.append((call.step, self._failed_in_worker(call, exc)))
                        continue
                failed.append((call, call.tries + (1 if position == 0 or not hung else 0)))
        self.pool.lose(slot, reason)
        for call, tries in reversed(failed):
            if tries >= self.poison_after:
                what = "hung" if hung else "killed"
                error = PoisonItemError(f"{call.step.path}: {what} its worker {tries} times (poison item); "
                                        f"last: {reason}")
                self.ready.append((call.step, ItemWork(call.step, error=error, identity=slot.identity)))
            else:
                self.queue.appendleft((call.item, tries))
        log.warning("Ray worker %d lost (%s); %d item(s) back in the queue", slot.index, reason, len(failed))

    def _hung(self, hand_on: HandOn) -> None:
        """Items past their deadline: kill their actor (Ray restarts it) and charge them one try."""
        pool = self.pool
        for slot, seconds in pool.hung(time.monotonic()):
            reason = f"timed out: no result after {seconds:.0f} s (item timeout {pool.item_timeout:.0f} s)"
            pool.kill_hung(slot)
            self._lose(slot, reason, hung=True)
        self._hand_on_ready(hand_on)

    def _gone(self) -> ClusterError:
        lost = [f"{s.name}: {s.failure}" for s in self.pool.slots if s.failure]
        left = len(self.queue) + len(self.calls)
        return ClusterError(f"every Ray worker is gone ({'; '.join(lost[:3]) or 'none started'}); "
                            f"{left} item(s) not decoded: run again to resume")


def actor_class(worker_cls: type[Worker]) -> type[Worker]:
    """``worker_cls`` as a threaded actor (``max_concurrency``) that works on a few items at once (its
    ``concurrency``): each call runs the whole item body on its own thread, and a lock lets one decode
    at a time (the VAE keeps its causal cache on the module). So one item decodes, the next one waits
    for the device, already shipped, and earlier ones encode. A sticky device error ends the actor's
    process, so that Ray restarts it on a fresh CUDA context and the items it held are charged one
    try, as for a crash."""

    class RayDecodeWorker(worker_cls):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            heap.own_process()  # an actor's process is the tool's own
            super().__init__(*args, **kwargs)
            heap.settle()
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
