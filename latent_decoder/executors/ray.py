"""Ray executor: the same ``DecodeWorker`` as actors, one per GPU (or N on CPU), fed by the driver.

Ray stays at the edge: it is imported here only, and the worker class is wrapped with
``ray.remote`` when the pool starts. The scheduling loop is a ``ray.wait`` over
``{ref: call}``, which knows which item each result or failure belongs to:

* an idle actor takes the next item (at most ``in_flight`` per actor), so mixed cards and
  mixed latent sizes balance;
* results come back one by one and are committed (outputs, then record) as they arrive, so a
  killed driver loses only the items in flight;
* an actor that dies is restarted by Ray (``max_restarts``) or replaced; the item it was
  running is charged one try, the items queued behind it go back unharmed; an item that
  killed ``poison_after`` workers is recorded failed as poison;
* an error inside an item is recorded by the worker's own stages and never retried here.

With ``io="driver"`` (default) the driver reads the latent bytes and writes every output, so
workers need no shared storage; with ``io="shared"`` workers read and write the experiment
path themselves and return only the record.
"""
from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from ..errors import (ClusterError, DecodeError, LatentDecoderError, LatentFileError, PoisonItemError, describe_error,
                      first_line)
from ..experiment import LatentStep
from ..latents import read_latent_bytes
from ..models import ResolvedModel, resolve_model
from ..plan import ItemState, OutputLayout, item_state
from ..settings import RunSettings
from ..worker import DecodeWorker, ItemWork, WorkerIdentity, commit_item
from .inline import ResultCallback

log = logging.getLogger(__name__)

RESTART_WAIT_S = 300.0  # how long a restarting actor may stay unavailable before it is replaced
PING_EVERY_S = 0.5
REPLACEMENTS_PER_WORKER = 3  # new actors for slots whose restarts are spent, before the pool gives up
GPU_ACTOR_CPUS = 0.25  # a GPU actor mostly waits on its card; a whole CPU each would starve small nodes
CPU_ACTOR_CPUS = 1.0


@dataclass
class _Slot:
    """One actor position in the pool; the handle is replaced when its actor is gone for good."""

    index: int
    actor: Any
    identity: WorkerIdentity | None = None
    live: bool = False  # answered a ping since it last died
    lost_at: float = 0.0  # monotonic time it was last found dead
    ping_at: float | None = None  # when to ask again whether a restarting actor is back
    outstanding: list[Any] = field(default_factory=list)  # item refs, in submission order


@dataclass
class _Call:
    slot: _Slot
    step: LatentStep | None  # None: a health ping
    tries: int = 0  # workers this item has killed so far


class RayExecutor:
    """Decode items on a pool of Ray actors; ``start()`` before ``run()``, ``close()`` after."""

    def __init__(
        self,
        settings: RunSettings,
        worker_cls: type[DecodeWorker] = DecodeWorker,
        in_flight: int = 2,
        max_restarts: int = 3,
        poison_after: int = 3,
    ) -> None:
        self.settings = settings
        self.options = settings.executor
        self.worker_cls = worker_cls
        self.in_flight = max(1, in_flight)
        self.max_restarts = max_restarts
        self.poison_after = poison_after
        self.layout = OutputLayout(settings.output_dir)
        self.slots: list[_Slot] = []
        self.replacements_left = 0
        self._started_ray = False
        self._ray: Any = None
        self._remote_cls: Any = None
        self._actor_options: dict[str, Any] = {}
        self._actor_args: tuple[Any, ...] = ()

    # ------------------------------------------------------------------ pool

    def _init_ray(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise ClusterError("the Ray executor needs Ray: pip install 'latent-decoder[ray]'") from exc
        if not ray.is_initialized():
            # No address: a private local runtime, never some cluster that happens to run here
            # (plain ray.init() would join one); RAY_ADDRESS, as set inside a Ray job, still counts.
            address = self.options.address or os.environ.get("RAY_ADDRESS") or "local"
            try:
                ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = "a new local runtime" if address == "local" else address
                raise ClusterError(f"cannot start Ray on {where}: {first_line(exc)}") from exc
            self._started_ray = True
        return ray

    def _plan_actors(self, ray: Any) -> tuple[int, float, float, str]:
        """(actors, GPUs each, CPUs each, device) from the cluster's resources and the options."""
        opts = self.options
        total_gpus = int(ray.cluster_resources().get("GPU", 0))
        if opts.workers is not None or self.settings.device == "cpu" or total_gpus == 0:
            if opts.gpus or self.settings.device == "cuda":
                raise ClusterError(f"{'--gpus' if opts.gpus else '--device cuda'}: the Ray cluster has no GPU")
            return opts.workers or 1, 0.0, CPU_ACTOR_CPUS, "cpu"
        gpus = opts.gpus or total_gpus
        if gpus > total_gpus:
            raise ClusterError(f"--gpus {gpus}: the Ray cluster has only {total_gpus} GPU(s)")
        return gpus * opts.actors_per_gpu, 1.0 / opts.actors_per_gpu, GPU_ACTOR_CPUS, "auto"

    def _model_for_actors(self) -> ResolvedModel | None:
        """A local model folder travels as an absolute path; a repo id is resolved on each node."""
        source = self.settings.output.model
        if not Path(source).expanduser().exists():
            return None
        model = resolve_model(source, self.settings.output.vae_subfolder, self.settings.output.vae_config)
        return replace(model, folder=model.folder.resolve())

    def _new_actor(self, index: int) -> Any:
        return self._remote_cls.options(**self._actor_options).remote(*self._actor_args, name=f"ray-{index}")

    def start(self) -> dict[str, Any]:
        """Start (or join) Ray and the actors; fail with a one-line error if a worker cannot load."""
        ray = self._ray = self._init_ray()
        count, gpus, cpus, device = self._plan_actors(ray)
        output_dir = self.settings.output_dir.resolve() if self.options.io == "shared" else None
        self._remote_cls = ray.remote(self.worker_cls)
        self._actor_options = {"num_gpus": gpus, "num_cpus": cpus, "max_restarts": self.max_restarts,
                               "max_task_retries": 0}
        self._actor_args = (self.settings.output, output_dir, device, self._model_for_actors(), self.settings.force)
        self.slots = [_Slot(i, self._new_actor(i)) for i in range(count)]
        self.replacements_left = count * REPLACEMENTS_PER_WORKER
        log.info("Ray: %d worker(s) (%s each), io=%s", count,
                 f"{gpus:g} GPU" if gpus else f"{cpus:g} CPU", self.options.io)
        described: list[dict[str, Any]] = []
        for slot in self.slots:
            try:
                described.append(ray.get(slot.actor.describe.remote()))
                slot.identity = _identity(described[-1])
            except ray.exceptions.RayActorError as exc:
                raise ClusterError(f"Ray worker {slot.index} failed to start: {_actor_error(exc)}") from exc
            slot.live = True
        if gpus and any(d["device"] == "cpu" for d in described):
            warnings.warn("Ray assigned GPUs but torch sees no CUDA in the workers: decoding on CPU", stacklevel=2)
        info = dict(described[0])
        info["workers"] = [d["device"] for d in described]
        return info

    def close(self) -> None:
        """Stop the actors, and Ray itself if this executor started it."""
        if self._ray is None:
            return
        for slot in self.slots:
            self._ray.kill(slot.actor, no_restart=True)
        self.slots = []
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

    # ------------------------------------------------------------------ scheduling

    def _submit(self, slot: _Slot, step: LatentStep, tries: int, calls: dict[Any, _Call],
                on_result: ResultCallback) -> None:
        if self.options.io == "shared":
            ref = slot.actor.run.remote(replace(step, path=step.path.resolve()))
        else:
            if item_state(self.layout, step, self.settings.output, self.settings.force) is ItemState.DONE:
                on_result(step, None)
                return
            try:
                data = read_latent_bytes(step.path)
            except LatentFileError as exc:
                on_result(step, self._commit(ItemWork(step, error=exc, identity=slot.identity)))
                return
            ref = slot.actor.process.remote(step, data)
        calls[ref] = _Call(slot, step, tries)
        slot.outstanding.append(ref)

    def _commit(self, work: ItemWork) -> Any:
        return commit_item(self.layout, self.settings.output, work)

    def _finish(self, call: _Call, value: Any, on_result: ResultCallback) -> None:
        """A result came back: commit it here (driver io) or report the worker's record (shared io)."""
        on_result(call.step, self._commit(value) if self.options.io == "driver" else value)

    def _lose(self, slot: _Slot, calls: dict[Any, _Call], queue: deque, on_result: ResultCallback,
              reason: str) -> None:
        """The slot's actor died: keep finished results, charge the running item, re-queue the rest."""
        ray = self._ray
        failed: list[_Call] = []
        for ref in slot.outstanding:
            call = calls.pop(ref)
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                try:
                    self._finish(call, ray.get(ref), on_result)
                    continue
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
                    pass
                except ray.exceptions.RayTaskError as exc:
                    self._failed_in_worker(call, exc, on_result)
                    continue
            failed.append(call)
        slot.outstanding = []
        slot.live = False
        slot.lost_at = time.monotonic()
        for position, call in reversed(list(enumerate(failed))):
            tries = call.tries + (1 if position == 0 else 0)  # calls run in order: the first was running
            if tries >= self.poison_after:
                error = PoisonItemError(f"{call.step.path}: killed its worker {tries} times (poison item); "
                                        f"last: {reason}")
                on_result(call.step, self._commit(ItemWork(call.step, error=error, identity=slot.identity)))
            else:
                queue.appendleft((call.step, tries))
        log.warning("Ray worker %d lost (%s); %d item(s) back in the queue", slot.index, reason, len(failed))
        slot.ping_at = time.monotonic()

    def _failed_in_worker(self, call: _Call, exc: Exception, on_result: ResultCallback) -> None:
        """An error the worker's stages did not record (a bug, or a disk error with shared io): record it."""
        cause = getattr(exc, "cause", None) or exc
        error = DecodeError(f"{call.step.path}: worker raised {describe_error(cause)}")
        on_result(call.step, self._commit(ItemWork(call.step, error=error, identity=call.slot.identity)))

    def _revive(self, slot: _Slot) -> None:
        """A ping to a dead slot failed: its restarts are spent, so put a new actor in its place."""
        if self.replacements_left <= 0:
            return
        self.replacements_left -= 1
        self._ray.kill(slot.actor, no_restart=True)
        slot.actor = self._new_actor(slot.index)
        slot.lost_at = slot.ping_at = time.monotonic()

    def _pinged(self, call: _Call, ref: Any) -> None:
        """A lost slot answered: live again, still restarting (ask later), or gone (replace it)."""
        ray, slot = self._ray, call.slot
        try:
            slot.identity = _identity(ray.get(ref))
            slot.live = True
            log.info("Ray worker %d is back (pid %d)", slot.index, slot.identity.pid)
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() - slot.lost_at < RESTART_WAIT_S:
                slot.ping_at = time.monotonic() + PING_EVERY_S
            else:
                self._revive(slot)
        except ray.exceptions.RayActorError:
            self._revive(slot)

    def run(self, steps: Iterable[LatentStep], on_result: ResultCallback) -> None:
        """Decode every step on the pool; ``on_result(step, record)`` is called once per item."""
        ray = self._ray
        queue: deque[tuple[LatentStep, int]] = deque((step, 0) for step in steps)
        calls: dict[Any, _Call] = {}
        try:
            while queue or any(call.step is not None for call in calls.values()):  # pings alone: done
                now = time.monotonic()
                for slot in self.slots:
                    if slot.ping_at is not None and slot.ping_at <= now:
                        slot.ping_at = None
                        calls[slot.actor.describe.remote()] = _Call(slot, None)
                    while slot.live and queue and len(slot.outstanding) < self.in_flight:
                        step, tries = queue.popleft()
                        self._submit(slot, step, tries, calls, on_result)
                waiting = any(slot.ping_at is not None for slot in self.slots)
                if not calls and not waiting:
                    if queue:
                        raise ClusterError("every Ray worker is gone and could not be replaced")
                    break
                ready, _ = ray.wait(list(calls), num_returns=1, timeout=PING_EVERY_S if waiting else None)
                if not ready:
                    continue
                ref = ready[0]
                call = calls.pop(ref)
                if call.step is None:
                    self._pinged(call, ref)
                    continue
                try:
                    value = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                    calls[ref] = call
                    self._lose(call.slot, calls, queue, on_result, _actor_error(exc))
                    continue
                except ray.exceptions.RayTaskError as exc:
                    value = exc
                call.slot.outstanding.remove(ref)
                if isinstance(value, Exception):
                    self._failed_in_worker(call, value, on_result)
                else:
                    self._finish(call, value, on_result)
        except KeyboardInterrupt:
            self._drain(calls, on_result)
            raise

    def _drain(self, calls: dict[Any, _Call], on_result: ResultCallback) -> None:
        """Stopping: commit the results already back; items still running are redone next time."""
        ray = self._ray
        items = [ref for ref, call in calls.items() if call.step is not None]
        ready, _ = ray.wait(items, num_returns=len(items), timeout=0) if items else ([], [])
        for ref in ready:
            try:
                self._finish(calls[ref], ray.get(ref), on_result)
            except (ray.exceptions.RayError, LatentDecoderError, OSError):
                log.exception("item %s lost while stopping", calls[ref].step.key)
        if len(ready) < len(items):
            log.warning("interrupted: %d item(s) in flight on Ray workers will be decoded next time",
                        len(items) - len(ready))


def _identity(described: dict[str, Any]) -> WorkerIdentity:
    return WorkerIdentity(described["host"], described["device"], described["worker"], described["pid"])


def _actor_error(exc: BaseException) -> str:
    """One line about why an actor is gone; for a failed constructor, the error it raised."""
    if getattr(exc, "actor_init_failed", False):
        lines = [line.strip() for line in str(getattr(exc, "error_msg", "")).splitlines() if line.strip()]
        if lines:
            return re.sub(r"^(?:\w+\.)+(\w+): ", r"\1: ", lines[-1])  # latent_decoder.errors.X: -> X:
    return first_line(exc)
