"""The Ray executor's pool of actors: which slots exist, which are live, and when to give up on one.

A slot is one position in the pool (``ray-N``). It is *pending* until its actor first answers a ping
(placed and constructed), *live* while it takes items, *lost* from the moment one of its calls fails
until Ray has restarted it, and *dropped* once given up. No wait is unbounded, so a run never hangs:

* pending slots of the first pool wait until the start deadline (``--start-timeout``); decoding
  starts with the first live slot and the others join as they are placed (an autoscaling cluster
  grows); those still unplaced at the deadline are dropped, with a warning that says what was asked
  and what the cluster has;
* a lost slot waits for Ray's restart for ``restart_wait_s``; an actor not back by then (its node is
  gone and nothing else can host it) is dropped, so the pool shrinks; an actor dead for good (its
  restarts spent) is replaced by a new one, which gets a window of its own;
* the oldest item running on a live slot gets ``max(--item-timeout, 10 x median item time)`` from
  when it started or became the oldest; past it the actor is killed (Ray restarts it) and the item
  is charged one try, as for a crash.
"""
from __future__ import annotations

import logging
import re
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ClusterError, first_line
from ..lifecycle import WorkerIdentity
from ..settings import ExecutorSettings

log = logging.getLogger(__name__)

GPU_ACTOR_CPUS = 0.25  # a GPU actor mostly waits on its card; a whole CPU each would starve small nodes
CPU_ACTOR_CPUS = 1.0
PING_EVERY_S = 0.5  # how often to ask a restarting actor whether it is back
MAX_WAIT_S = 5.0  # the longest the driver blocks without looking at its deadlines
ITEM_TIME_FACTOR = 10.0  # an item may take this many times the median item time (or the floor)
ITEM_TIMES_KEPT = 1001  # the median is over the most recent completed items


# ---------------------------------------------------------------------- placement

@dataclass(frozen=True)
class Ask:
    """What the pool asks of the cluster."""

    count: int
    gpus: float  # each
    cpus: float  # each
    device: str  # what the workers are told: "auto" (GPU workers) or "cpu"

    def __str__(self) -> str:
        each = f"{self.gpus:g} GPU" if self.gpus else f"{self.cpus:g} CPU"
        return f"asked for {self.count} worker{'s' if self.count != 1 else ''} with {each} each"


def plan_actors(ray: Any, opts: ExecutorSettings, device: str, fixed: bool) -> Ask:
    """What to ask for, from the options and the cluster's resources now. A ``fixed`` cluster (a
    local runtime of our own) never grows, so asking it for more GPUs than it has fails at once; a
    cluster we joined may be autoscaling, so there unplaced actors wait for the start deadline."""
    total_gpus = int(ray.cluster_resources().get("GPU", 0))
    if opts.gpus and device == "cpu":
        raise ClusterError("--gpus asks for GPU workers; drop --device cpu (or use --workers)")
    if opts.workers is not None or device == "cpu" or (total_gpus == 0 and not opts.gpus):
        if device == "cuda":
            hint = "" if fixed else "; on an autoscaling cluster pass --gpus N to ask for GPU workers"
            raise ClusterError(f"--device cuda: the Ray cluster has no GPU{hint}")
        if not fixed and opts.workers is None and device == "auto":
            log.info("Ray: the cluster has no GPU now: decoding on one CPU worker "
                     "(pass --gpus N to ask an autoscaling cluster for GPU workers)")
        return Ask(opts.workers or 1, 0.0, CPU_ACTOR_CPUS, "cpu")
    gpus = opts.gpus or total_gpus
    if fixed and gpus > total_gpus:
        have = f"only {total_gpus} GPU(s)" if total_gpus else "no GPU"
        raise ClusterError(f"--gpus {gpus}: the Ray cluster has {have}")
    return Ask(gpus * opts.actors_per_gpu, 1.0 / opts.actors_per_gpu, GPU_ACTOR_CPUS, "auto")


class Capacity:
    """Asks an autoscaler for the pool's resources (pending actors are demand too, but this scales up
    at once). The request outlives this process, so it is made only when the cluster lacks the room,
    and withdrawn as soon as the pool is placed (or given up) and at close."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.requested = False

    def request(self, ask: Ask) -> None:
        free = self.ray.available_resources()
        if free.get("GPU", 0) >= ask.gpus * ask.count and free.get("CPU", 0) >= ask.cpus * ask.count:
            return
        gpus = round(ask.gpus * ask.count)
        bundles = [{"GPU": 1}] * gpus if ask.gpus else [{"CPU": ask.cpus}] * ask.count
        try:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
        except Exception as exc:  # no autoscaler API here (Ray Client, ...): pending actors are demand anyway
            log.debug("request_resources failed: %s", exc)
            return
        self.requested = True
        log.info("Ray: asked the autoscaler for %d x %s", len(bundles), bundles[0])

    def release(self) -> None:
        if not self.requested:
            return
        self.requested = False
        try:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])
        except Exception as exc:
            log.debug("withdrawing request_resources failed: %s", exc)


# ---------------------------------------------------------------------- the pool

@dataclass
class Slot:
    """One actor position in the pool; its actor is replaced when gone for good."""

    index: int
    actor: Any
    deadline: float  # pending or lost: given up after this (monotonic)
    state: str = "pending"  # pending | live | lost | dropped
    identity: WorkerIdentity | None = None
    ping: Any = None  # the describe() call in flight, if any
    ping_at: float | None = 0.0  # when to send the next ping; None: none due
    concurrency: int = 1  # items its actor works on at once (the executor sets it from its describe())
    outstanding: list[Any] = field(default_factory=list)  # item refs in submission order, all running
    head_since: float = 0.0  # when the first outstanding item began running (or became the oldest)
    joined: bool = False  # has been live once (so a later answer is a restart, not a join)
    failure: str | None = None  # why it is lost or dropped, for messages

    @property
    def name(self) -> str:
        return f"ray-{self.index}"


class ActorPool:
    """The slots and their deadlines; the executor owns the items, the pool owns the actors."""

    def __init__(self, ray: Any, new_actor: Callable[[int], Any], count: int, start_deadline: float,
                 restart_wait_s: float, replacements: int, item_timeout_s: float) -> None:
        self.ray = ray
        self.new_actor = new_actor
        self.restart_wait_s = restart_wait_s
        self.replacements_left = replacements
        self.item_floor_s = item_timeout_s
        self.slots = [Slot(i, new_actor(i), deadline=start_deadline) for i in range(count)]
        self._item_times: deque[float] = deque(maxlen=ITEM_TIMES_KEPT)
        self._item_timeout = item_timeout_s
        self._pings: dict[Any, Slot] = {}
        self.init_errors: list[str] = []  # constructors that raised (a model that cannot load, ...)

    # ------------------------------------------------------------------ views

    @property
    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.state == "live"]

    @property
    def pending(self) -> list[Slot]:
        return [s for s in self.slots if s.state == "pending"]

    def hopeful(self) -> bool:
        """Whether any slot is live or may still become live."""
        return any(s.state != "dropped" for s in self.slots)

    def ping_refs(self) -> list[Any]:
        return list(self._pings)

    def is_ping(self, ref: Any) -> bool:
        return ref in self._pings

    # ------------------------------------------------------------------ pings and deadlines

    def tick(self, now: float) -> list[Slot]:
        """Send the pings that are due; drop the slots past their deadline (returned)."""
        dropped = []
        for slot in self.slots:
            if slot.state in ("pending", "lost") and now >= slot.deadline:
                if slot.state == "pending" and not slot.failure:
                    reason = "not placed by the start deadline"
                else:
                    reason = f"{slot.failure or 'lost'}; not back within {self.restart_wait_s:g} s"
                self.drop(slot, reason)
                dropped.append(slot)
            elif slot.state in ("pending", "lost") and slot.ping is None and slot.ping_at is not None \
                    and slot.ping_at <= now:
                slot.ping_at = None
                slot.ping = slot.actor.describe.remote()
                self._pings[slot.ping] = slot
        return dropped

    def next_event(self, now: float) -> float:
        """The monotonic time by which the driver must look again (deadlines, pings due)."""
        soon = now + MAX_WAIT_S
        for slot in self.slots:
            if slot.state in ("pending", "lost"):
                soon = min(soon, slot.deadline)
                if slot.ping is None and slot.ping_at is not None:
                    soon = min(soon, slot.ping_at)
            elif slot.state == "live" and slot.outstanding:
                soon = min(soon, slot.head_since + self._item_timeout)
        return soon

    def pinged(self, ref: Any) -> tuple[Slot, dict[str, Any] | None]:
        """A ping came back: (slot, what its actor describes) when it is live, else (slot, None)."""
        ray = self.ray
        slot = self._pings.pop(ref)
        slot.ping = None
        if slot.state == "dropped":
            return slot, None
        try:
            described = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:  # restarting, or not reachable for a moment
            slot.ping_at = time.monotonic() + PING_EVERY_S
            return slot, None
        except ray.exceptions.RayActorError as exc:
            if getattr(exc, "actor_init_failed", False):
                reason = actor_error(exc)
                self.init_errors.append(f"Ray worker {slot.index} failed to start: {reason}")
                self.drop(slot, f"failed to start: {reason}")
            elif self._restarting(slot):
                slot.ping_at = time.monotonic() + PING_EVERY_S
            else:
                self._replace(slot, actor_error(exc))
            return slot, None
        except ray.exceptions.RayError as exc:  # describe() itself failed: a broken worker class
            self.drop(slot, f"cannot describe itself: {first_line(exc)}")
            return slot, None
        slot.identity = WorkerIdentity(described["host"], described["device"], described["worker"], described["pid"])
        slot.state, slot.failure = "live", None
        return slot, described

    def _restarting(self, slot: Slot) -> bool:
        """Whether Ray still means to (re)start this actor; when Ray cannot tell, assume not."""
        try:
            from ray._private import state

            info = state.actors(actor_id=slot.actor._actor_id.hex())
        except Exception:  # Ray Client, or a Ray without this table
            return False
        return bool(info) and info.get("State") != "DEAD"

    def _replace(self, slot: Slot, reason: str) -> None:
        """The slot's actor is dead for good: a new actor takes its place, or the slot is dropped."""
        if self.replacements_left <= 0:
            self.drop(slot, f"{reason}; no replacement left")
            return
        self.replacements_left -= 1
        self._kill(slot, no_restart=True)
        slot.actor = self.new_actor(slot.index)
        slot.state, slot.failure = "pending" if not slot.joined else "lost", reason
        slot.deadline = time.monotonic() + self.restart_wait_s
        slot.ping_at = time.monotonic()
        log.warning("Ray worker %d is gone for good (%s); starting a new one", slot.index, reason)

    def lose(self, slot: Slot, reason: str) -> None:
        """One of the slot's calls failed: wait (up to the restart window) for Ray to bring it back."""
        slot.state, slot.failure = "lost", reason
        slot.outstanding = []
        slot.deadline = time.monotonic() + self.restart_wait_s
        slot.ping_at = time.monotonic()

    def kill_hung(self, slot: Slot) -> None:
        """End the actor's process so that Ray restarts it (an item hung in it)."""
        self._kill(slot, no_restart=False)

    def _kill(self, slot: Slot, no_restart: bool) -> None:
        try:
            self.ray.kill(slot.actor, no_restart=no_restart)
        except Exception as exc:  # already gone
            log.debug("ray.kill(%s): %s", slot.name, exc)

    def drop(self, slot: Slot, reason: str) -> None:
        """Give the slot up: the pool shrinks by one."""
        slot.state, slot.failure = "dropped", reason
        slot.outstanding = []
        if slot.ping is not None:
            self._pings.pop(slot.ping, None)
            slot.ping = None
        self._kill(slot, no_restart=True)

    def close(self) -> None:
        for slot in self.slots:
            if slot.state != "dropped":
                self.drop(slot, "closed")

    # ------------------------------------------------------------------ item deadlines

    def started(self, slot: Slot, now: float) -> None:
        """An item was queued on the slot; it runs now if nothing runs there."""
        if len(slot.outstanding) == 1:
            slot.head_since = now

    def finished(self, slot: Slot, ref: Any, now: float) -> None:
        """An item call of the slot came back; when it was the oldest, the next one's deadline runs from now."""
        if slot.outstanding and slot.outstanding[0] == ref:
            self._item_times.append(now - slot.head_since)
            self._item_timeout = max(self.item_floor_s, ITEM_TIME_FACTOR * statistics.median(self._item_times))
            slot.head_since = now
        if ref in slot.outstanding:
            slot.outstanding.remove(ref)

    def hung(self, now: float) -> list[tuple[Slot, float]]:
        """Live slots whose running item is past its deadline, with how long it has run."""
        return [(s, now - s.head_since) for s in self.slots
                if s.state == "live" and s.outstanding and now - s.head_since >= self._item_timeout]

    @property
    def item_timeout(self) -> float:
        return self._item_timeout


def actor_error(exc: BaseException) -> str:
    """One line about why an actor is gone; for a failed constructor, the error it raised."""
    if getattr(exc, "actor_init_failed", False):
        lines = [line.strip() for line in str(getattr(exc, "error_msg", "")).splitlines() if line.strip()]
        if lines:
            return re.sub(r"^(?:\w+\.)+(\w+): ", r"\1: ", lines[-1])  # latent_decoder.errors.X: -> X:
    text = re.sub(r"^The actor [0-9a-f]+ is unavailable: ", "", first_line(exc))
    return text.replace(" The task may or may not have been executed on the actor.", "")


def resources_text(ray: Any, gpu: bool) -> str:
    """What the cluster has now, e.g. ``2 GPU (0 free), 1 CPU (1 free)``."""
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
    except Exception as exc:  # the GCS is unreachable right now
        return f"unknown resources ({first_line(exc)})"
    names = ("GPU", "CPU") if gpu else ("CPU",)
    return ", ".join(f"{total.get(n, 0):g} {n} ({free.get(n, 0):g} free)" for n in names)
