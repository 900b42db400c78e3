"""``executors/ray_pool.py`` against a fake ``ray`` module, in milliseconds: what the pool asks of the
cluster, which slots are pending, live, lost or dropped, and every deadline (start, restart, item).

The real-Ray tests (test_ray_executor.py, test_ray_robustness.py, test_ray_nodes.py,
test_ray_autoscale.py, test_ray_overlap.py) keep one run per concern; the branches are checked here.
Time is never waited for: each call is given a ``now`` past the deadline it tests.
"""
from __future__ import annotations

import itertools
import logging
import time
import types
from typing import Any

import pytest

from latent_decoder.errors import ClusterError
from latent_decoder.executors.ray_pool import (CPU_ACTOR_CPUS, GPU_ACTOR_CPUS, ITEM_TIME_FACTOR, MAX_WAIT_S,
                                               PING_EVERY_S, ActorPool, Ask, Capacity, actor_error, plan_actors,
                                               resources_text)
from latent_decoder.settings import ExecutorSettings


# ---------------------------------------------------------------------- the fake ray module

class RayError(Exception):
    pass


class RayActorError(RayError):
    def __init__(self, message: str = "The actor died unexpectedly before finishing this task.",
                 init_failed: str | None = None) -> None:
        super().__init__(message)
        self.actor_init_failed = init_failed is not None
        self.error_msg = init_failed or ""


class ActorUnavailableError(RayActorError):
    pass


class Ref:
    """An object ref: what ``get`` returns or raises is set by the test."""

    ids = itertools.count()

    def __init__(self, actor: "FakeActor") -> None:
        self.actor = actor
        self.id = next(Ref.ids)

    def __repr__(self) -> str:
        return f"Ref({self.id} of {self.actor.name})"


class Method:
    def __init__(self, actor: "FakeActor") -> None:
        self.actor = actor

    def remote(self) -> Ref:
        ref = Ref(self.actor)
        self.actor.pings.append(ref)
        return ref


class FakeActor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.pings: list[Ref] = []
        self.describe = Method(self)
        self.killed: list[bool] = []  # the no_restart of each ray.kill


class FakeRay(types.SimpleNamespace):
    """The parts of ``ray`` the pool uses: remote calls are refs whose outcome the test sets."""

    def __init__(self, total: dict[str, float] | None = None, free: dict[str, float] | None = None) -> None:
        super().__init__()
        self.exceptions = types.SimpleNamespace(RayError=RayError, RayActorError=RayActorError,
                                                ActorUnavailableError=ActorUnavailableError)
        self.total = total or {"CPU": 2.0}
        self.free = dict(self.total) if free is None else free
        self.outcomes: dict[Ref, Any] = {}

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.total)

    def available_resources(self) -> dict[str, float]:
        return dict(self.free)

    def get(self, ref: Ref) -> Any:
        outcome = self.outcomes.pop(ref)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def kill(self, actor: FakeActor, no_restart: bool = True) -> None:
        actor.killed.append(no_restart)


def described(index: int, pid: int = 100) -> dict[str, Any]:
    return {"host": "node-a", "device": "cpu", "worker": f"ray-{index}", "pid": pid + index, "concurrency": 3}


class Harness:
    """An ``ActorPool`` on a ``FakeRay``; ``actors`` lists every actor it made, in order."""

    def __init__(self, count: int = 1, start_in: float = 60.0, restart_wait_s: float = 30.0, replacements: int = 3,
                 item_timeout_s: float = 300.0) -> None:
        self.ray = FakeRay()
        self.actors: list[FakeActor] = []
        self.pool = ActorPool(self.ray, self.new_actor, count, time.monotonic() + start_in, restart_wait_s,
                              replacements, item_timeout_s)

    def new_actor(self, index: int) -> FakeActor:
        actor = FakeActor(f"ray-{index}#{len(self.actors)}")
        self.actors.append(actor)
        return actor

    def answer(self, slot_index: int, outcome: Any, at: float | None = None) -> tuple[Any, Any]:
        """Send the pings due (at ``at``, default now), then let slot ``slot_index``'s ping come back
        with ``outcome``."""
        self.pool.tick(time.monotonic() if at is None else at)
        slot = self.pool.slots[slot_index]
        ref = slot.ping
        assert ref is not None and self.pool.is_ping(ref), f"{slot.name} has no ping in flight"
        self.ray.outcomes[ref] = outcome
        return self.pool.pinged(ref)

    def live(self, *indices: int) -> None:
        for i in indices:
            slot, info = self.answer(i, described(i))
            assert info is not None and slot.state == "live"
            slot.joined = True  # as the executor marks a slot that answered once


# ---------------------------------------------------------------------- placement: plan_actors, Capacity

def opts(**kwargs) -> ExecutorSettings:
    return ExecutorSettings(kind="ray", **kwargs)


def test_plan_actors_cpu_workers_gpu_workers_and_what_cannot_be_asked():
    no_gpu, two_gpus = FakeRay({"CPU": 4.0}), FakeRay({"CPU": 4.0, "GPU": 2.0})
    assert plan_actors(no_gpu, opts(), "auto", fixed=True) == Ask(1, 0.0, CPU_ACTOR_CPUS, "cpu")
    assert plan_actors(no_gpu, opts(workers=3), "auto", fixed=True) == Ask(3, 0.0, CPU_ACTOR_CPUS, "cpu")
    assert plan_actors(two_gpus, opts(workers=2), "auto", fixed=True) == Ask(2, 0.0, CPU_ACTOR_CPUS, "cpu")
    assert plan_actors(two_gpus, opts(), "cpu", fixed=True) == Ask(1, 0.0, CPU_ACTOR_CPUS, "cpu")
    # One actor per GPU (or a share of one), each with a quarter CPU.
    assert plan_actors(two_gpus, opts(), "auto", fixed=True) == Ask(2, 1.0, GPU_ACTOR_CPUS, "auto")
    assert plan_actors(two_gpus, opts(gpus=1), "auto", fixed=True) == Ask(1, 1.0, GPU_ACTOR_CPUS, "auto")
    assert plan_actors(two_gpus, opts(actors_per_gpu=2), "auto", fixed=True) == Ask(4, 0.5, GPU_ACTOR_CPUS, "auto")
    # A cluster we joined may autoscale: GPUs it lacks now may come.
    assert plan_actors(no_gpu, opts(gpus=2), "auto", fixed=False) == Ask(2, 1.0, GPU_ACTOR_CPUS, "auto")
    with pytest.raises(ClusterError, match=r"--gpus 3: the Ray cluster has only 2 GPU\(s\)"):
        plan_actors(two_gpus, opts(gpus=3), "auto", fixed=True)
    with pytest.raises(ClusterError, match="--gpus 1: the Ray cluster has no GPU"):
        plan_actors(no_gpu, opts(gpus=1), "auto", fixed=True)
    with pytest.raises(ClusterError, match="drop --device cpu"):
        plan_actors(two_gpus, opts(gpus=1), "cpu", fixed=True)
    with pytest.raises(ClusterError, match=r"--device cuda: the Ray cluster has no GPU$"):
        plan_actors(no_gpu, opts(), "cuda", fixed=True)
    with pytest.raises(ClusterError, match="on an autoscaling cluster pass --gpus N"):
        plan_actors(no_gpu, opts(), "cuda", fixed=False)


def test_plan_actors_on_a_joined_cluster_without_gpus_says_how_to_ask_for_them(caplog):
    with caplog.at_level(logging.INFO, logger="latent_decoder"):
        plan_actors(FakeRay({"CPU": 4.0}), opts(), "auto", fixed=False)
        plan_actors(FakeRay({"CPU": 4.0}), opts(), "auto", fixed=True)
    assert [r.getMessage() for r in caplog.records] == [
        "Ray: the cluster has no GPU now: decoding on one CPU worker "
        "(pass --gpus N to ask an autoscaling cluster for GPU workers)"]


def test_ask_says_what_it_asks_for():
    assert str(Ask(1, 0.0, 1.0, "cpu")) == "asked for 1 worker with 1 CPU each"
    assert str(Ask(4, 0.5, 0.25, "auto")) == "asked for 4 workers with 0.5 GPU each"


@pytest.fixture
def autoscaler(monkeypatch):
    """The bundles each ``request_resources`` call asked for (Ray's autoscaler SDK, replaced)."""
    pytest.importorskip("ray")
    import ray.autoscaler.sdk

    asked: list[list[dict]] = []
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda bundles: asked.append(bundles))
    return asked


def test_capacity_asks_the_autoscaler_only_for_room_the_cluster_lacks_and_withdraws_it(autoscaler, caplog):
    roomy = Capacity(FakeRay({"CPU": 4.0, "GPU": 2.0}))
    roomy.request(Ask(2, 1.0, 0.25, "auto"))
    roomy.release()
    assert autoscaler == [] and not roomy.requested

    short = Capacity(FakeRay({"CPU": 1.0}))
    with caplog.at_level(logging.INFO, logger="latent_decoder"):
        short.request(Ask(2, 1.0, 0.25, "auto"))
    assert autoscaler == [[{"GPU": 1}, {"GPU": 1}]] and short.requested
    assert "Ray: asked the autoscaler for 2 x {'GPU': 1}" in [r.getMessage() for r in caplog.records]
    short.release()
    short.release()  # withdrawn once
    assert autoscaler == [[{"GPU": 1}, {"GPU": 1}], []] and not short.requested

    cpus = Capacity(FakeRay({"CPU": 1.0}))
    cpus.request(Ask(3, 0.0, 1.0, "cpu"))
    assert autoscaler[-1] == [{"CPU": 1.0}] * 3
    busy = Capacity(FakeRay({"CPU": 4.0, "GPU": 2.0}, free={"CPU": 4.0, "GPU": 1.0}))  # one GPU held elsewhere
    busy.request(Ask(2, 1.0, 0.25, "auto"))
    assert autoscaler[-1] == [{"GPU": 1}, {"GPU": 1}] and busy.requested


def test_capacity_without_an_autoscaler_api_relies_on_pending_actors(monkeypatch):
    pytest.importorskip("ray")
    import ray.autoscaler.sdk

    def unavailable(bundles):
        raise RuntimeError("Ray Client: no autoscaler SDK")

    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", unavailable)
    capacity = Capacity(FakeRay({"CPU": 1.0}))
    capacity.request(Ask(2, 1.0, 0.25, "auto"))
    assert not capacity.requested  # so release() asks nothing either
    capacity.release()


# ---------------------------------------------------------------------- start: pending -> live, start deadline

def test_pending_slots_are_pinged_once_until_they_answer_and_then_are_live():
    h = Harness(count=2)
    assert [s.state for s in h.pool.slots] == ["pending", "pending"] and h.pool.hopeful()
    now = time.monotonic()
    assert h.pool.tick(now) == []
    assert [len(a.pings) for a in h.actors] == [1, 1] and len(h.pool.ping_refs()) == 2
    h.pool.tick(now)
    assert [len(a.pings) for a in h.actors] == [1, 1], "one ping in flight per slot"
    slot, info = h.answer(0, described(0))
    assert info == described(0) and slot.state == "live" and slot.failure is None
    assert (slot.identity.worker, slot.identity.pid, slot.identity.device) == ("ray-0", 100, "cpu")
    assert [s.name for s in h.pool.live] == ["ray-0"] and [s.name for s in h.pool.pending] == ["ray-1"]
    assert not h.pool.is_ping(h.actors[0].pings[0]) and h.pool.ping_refs() == [h.actors[1].pings[0]]
    h.pool.tick(time.monotonic())
    assert len(h.actors[0].pings) == 1, "a live slot is not pinged"


def test_a_slot_not_placed_by_the_start_deadline_is_dropped_and_its_actor_killed():
    h = Harness(count=2, start_in=20)
    h.live(0)
    now = time.monotonic()
    assert h.pool.tick(now + 19) == []
    [dropped] = h.pool.tick(now + 21)
    assert dropped.name == "ray-1" and dropped.state == "dropped"
    assert dropped.failure == "not placed by the start deadline"
    assert h.actors[1].killed == [True] and dropped.ping is None and h.pool.ping_refs() == []
    assert [s.name for s in h.pool.live] == ["ray-0"] and h.pool.hopeful()
    assert h.pool.tick(now + 100) == [], "dropped once"


def test_no_slot_placed_leaves_the_pool_hopeless():
    h = Harness(count=2, start_in=5)
    h.pool.tick(time.monotonic())
    assert len(h.pool.tick(time.monotonic() + 6)) == 2
    assert not h.pool.hopeful() and h.pool.live == []


def test_a_constructor_that_raises_is_an_init_error_and_drops_the_slot():
    h = Harness(count=1)
    trace = ("Traceback (most recent call last):\n  ...\n"
             "latent_decoder.errors.ModelNotFoundError: model 'Org/NotCached' not found in the cache\n")
    slot, info = h.answer(0, RayActorError("The actor died because of an error raised in its creation task",
                                           init_failed=trace))
    assert info is None and slot.state == "dropped"
    assert h.pool.init_errors == ["Ray worker 0 failed to start: ModelNotFoundError: model 'Org/NotCached' "
                                  "not found in the cache"]
    assert slot.failure == "failed to start: ModelNotFoundError: model 'Org/NotCached' not found in the cache"
    assert not h.pool.hopeful()


def test_a_worker_class_that_cannot_describe_itself_is_dropped():
    h = Harness(count=1)
    slot, info = h.answer(0, RayError("TypeError: describe() missing 1 required positional argument\nmore"))
    assert info is None and slot.state == "dropped"
    assert slot.failure == "cannot describe itself: TypeError: describe() missing 1 required positional argument"


def test_an_unavailable_actor_is_pinged_again_after_a_pause():
    h = Harness(count=1)
    before = time.monotonic()
    slot, info = h.answer(0, ActorUnavailableError("The actor abc is unavailable: restarting"))
    assert info is None and slot.state == "pending" and slot.ping is None
    assert slot.ping_at >= before + PING_EVERY_S
    h.pool.tick(time.monotonic())
    assert len(h.actors[0].pings) == 1, "not before the pause"
    h.pool.tick(slot.ping_at)
    assert len(h.actors[0].pings) == 2


def test_a_ping_back_from_a_dropped_slot_is_ignored():
    h = Harness(count=1, start_in=5)
    h.pool.tick(time.monotonic())
    ref = h.pool.slots[0].ping
    h.pool.tick(time.monotonic() + 6)  # dropped at the deadline: the ping is forgotten
    assert not h.pool.is_ping(ref)
    h.pool._pings[ref] = h.pool.slots[0]  # it answers all the same
    h.ray.outcomes[ref] = described(0)
    slot, info = h.pool.pinged(ref)
    assert info is None and slot.state == "dropped"


# ---------------------------------------------------------------------- lost slots: restart window, replacements

def restarting(monkeypatch, answer: bool) -> list[str]:
    """Make ``_restarting`` see Ray's actor table say ALIVE/RESTARTING (``answer``) or DEAD; returns the
    actor ids looked up."""
    looked: list[str] = []

    def restarting_(slot):
        looked.append(slot.actor.name)
        return answer

    monkeypatch.setattr(ActorPool, "_restarting", staticmethod(restarting_))
    return looked


def test_a_lost_slot_waits_for_rays_restart_and_comes_back(monkeypatch):
    h = Harness(count=1, restart_wait_s=30)
    h.live(0)
    slot = h.pool.slots[0]
    slot.outstanding = ["item-a", "item-b"]
    h.pool.lose(slot, "The actor died unexpectedly")
    assert slot.state == "lost" and slot.outstanding == [] and slot.failure == "The actor died unexpectedly"
    assert slot.deadline == pytest.approx(time.monotonic() + 30, abs=1)
    looked = restarting(monkeypatch, True)
    slot_, info = h.answer(0, RayActorError())  # not back yet, and Ray still restarts it
    assert info is None and slot.state == "lost" and slot.ping_at is not None and looked == [h.actors[0].name]
    slot_, info = h.answer(0, described(0, pid=200), at=time.monotonic() + PING_EVERY_S)  # back: a new process
    assert info["pid"] == 200 and slot.state == "live" and slot.failure is None and slot.identity.pid == 200
    assert len(h.actors) == 1, "the same actor, restarted by Ray"


def test_a_lost_slot_not_back_within_the_restart_window_is_dropped():
    h = Harness(count=2, restart_wait_s=3)
    h.live(0, 1)
    h.pool.lose(h.pool.slots[0], "node died")
    assert h.pool.tick(time.monotonic() + 2) == []
    [dropped] = h.pool.tick(time.monotonic() + 4)
    assert dropped.failure == "node died; not back within 3 s"
    assert h.actors[0].killed == [True] and [s.name for s in h.pool.live] == ["ray-1"] and h.pool.hopeful()
    h.pool.lose(h.pool.slots[1], "node died")
    h.pool.tick(time.monotonic() + 4)
    assert not h.pool.hopeful()


def test_an_actor_dead_for_good_is_replaced_until_the_replacements_run_out(monkeypatch, caplog):
    restarting(monkeypatch, False)  # Ray's restarts are spent
    h = Harness(count=1, restart_wait_s=30, replacements=2)
    h.live(0)
    slot = h.pool.slots[0]
    with caplog.at_level(logging.WARNING, logger="latent_decoder"):
        for n in (1, 2):
            h.pool.lose(slot, "killed")
            before = time.monotonic()
            h.answer(0, RayActorError("The actor died unexpectedly before finishing this task."))
            assert len(h.actors) == 1 + n and slot.actor is h.actors[-1]
            assert h.actors[-2].killed == [True], "the old actor is killed for good"
            assert slot.state == "lost" and slot.deadline >= before + 30, "a window of its own"
            assert h.pool.replacements_left == 2 - n
            h.live(0)
    assert sum("gone for good" in r.getMessage() and "starting a new one" in r.getMessage()
               for r in caplog.records) == 2
    h.pool.lose(slot, "killed")
    h.answer(0, RayActorError("The actor died unexpectedly before finishing this task."))
    assert slot.state == "dropped" and len(h.actors) == 3
    assert slot.failure == "The actor died unexpectedly before finishing this task.; no replacement left"


def test_a_slot_that_never_joined_is_replaced_as_pending(monkeypatch):
    restarting(monkeypatch, False)
    h = Harness(count=1)
    slot, _ = h.answer(0, RayActorError())
    assert slot.state == "pending" and slot.failure and len(h.actors) == 2


def test_restarting_asks_rays_actor_table_and_assumes_not_when_it_cannot_tell():
    h = Harness(count=1)
    assert h.pool._restarting(h.pool.slots[0]) is False  # a fake actor has no id: Ray cannot tell


def test_close_drops_every_slot_and_kills_its_actor_for_good():
    h = Harness(count=3, start_in=5)
    h.live(0)
    h.pool.tick(time.monotonic() + 6)  # ray-1, ray-2 dropped (killed once)
    h.pool.close()
    assert all(s.state == "dropped" for s in h.pool.slots)
    assert [a.killed for a in h.actors] == [[True], [True], [True]]
    assert h.pool.slots[0].failure == "closed"


# ---------------------------------------------------------------------- item deadlines

def test_the_oldest_item_past_its_deadline_is_hung_and_its_actor_killed_for_a_restart():
    h = Harness(count=2, item_timeout_s=5)
    h.live(0, 1)
    a, b = h.pool.slots
    t = 1000.0  # item clocks run on the ``now`` they are given
    a.outstanding.append("a1")
    h.pool.started(a, t)
    a.outstanding.append("a2")
    h.pool.started(a, t + 1)  # queued behind a1: a1's clock is not reset
    assert a.head_since == t
    assert h.pool.hung(t + 4.9) == []
    assert h.pool.hung(t + 5) == [(a, 5)]
    assert h.pool.next_event(t) == pytest.approx(t + 5)
    h.pool.kill_hung(a)
    assert h.actors[0].killed == [False], "killed so that Ray restarts it"
    assert b.outstanding == [] and h.pool.hung(t + 100) == [(a, 100)], "an idle slot never hangs"


def test_when_the_oldest_item_finishes_the_next_ones_clock_starts():
    h = Harness(count=1, item_timeout_s=5)
    h.live(0)
    slot = h.pool.slots[0]
    t = 1000.0  # item clocks run on the ``now`` they are given
    for ref in ("i1", "i2"):  # as the executor queues them: appended, then started
        slot.outstanding.append(ref)
        h.pool.started(slot, t)
    h.pool.finished(slot, "i2", t + 0.5)  # not the oldest: the clock stays
    assert slot.head_since == t and slot.outstanding == ["i1"]
    slot.outstanding.append("i3")
    h.pool.finished(slot, "i1", t + 4)
    assert slot.head_since == t + 4 and slot.outstanding == ["i3"]
    # i1 took 4 s, so the deadline is now ten times that
    assert h.pool.item_timeout == 40
    assert h.pool.hung(t + 43.9) == [] and h.pool.hung(t + 44) == [(slot, 40)]


def test_the_item_deadline_is_the_floor_or_ten_times_the_median_item_time():
    h = Harness(count=1, item_timeout_s=5)
    h.live(0)
    slot = h.pool.slots[0]
    assert h.pool.item_timeout == 5
    t = 0.0
    for seconds in (0.1, 0.2, 0.3):  # fast items: the floor holds
        slot.outstanding.append(t)
        h.pool.started(slot, t)
        h.pool.finished(slot, t, t + seconds)
        t += seconds
    assert h.pool.item_timeout == 5
    for seconds in (2.0, 2.0, 2.0, 2.0):  # median 2 s: 20 s
        slot.outstanding.append(t)
        h.pool.started(slot, t)
        h.pool.finished(slot, t, t + seconds)
        t += seconds
    assert h.pool.item_timeout == pytest.approx(ITEM_TIME_FACTOR * 2.0)
    slot.outstanding.append("next")
    h.pool.started(slot, t)
    assert h.pool.hung(t + 19) == [] and h.pool.hung(t + 20) == [(slot, 20)]


def test_next_event_is_the_nearest_deadline_or_ping_never_later_than_max_wait():
    h = Harness(count=3, start_in=2, restart_wait_s=30, item_timeout_s=4)
    now = time.monotonic()
    assert h.pool.next_event(now) <= now + 2  # the start deadline
    h.live(0, 1, 2)
    assert h.pool.next_event(now) == now + MAX_WAIT_S  # nothing due
    slot = h.pool.slots[0]
    slot.outstanding.append("x")
    h.pool.started(slot, now)
    assert h.pool.next_event(now) == now + 4  # its item deadline
    h.pool.lose(h.pool.slots[1], "gone")  # a ping is due at once
    later = time.monotonic()
    assert h.pool.next_event(later) <= later


# ---------------------------------------------------------------------- messages

def test_actor_error_is_one_line_naming_the_cause():
    init = RayActorError(init_failed="Traceback\n  File x\nlatent_decoder.errors.SetupError: cannot read the VAE\n")
    assert actor_error(init) == "SetupError: cannot read the VAE"
    died = RayActorError("The actor 0123abcd is unavailable: The actor is restarting. The task may or may not have "
                         "been executed on the actor.\nmore detail")
    assert actor_error(died) == "The actor is restarting."


def test_resources_text_says_what_the_cluster_has_or_why_it_cannot_tell():
    ray = FakeRay({"CPU": 2.0, "GPU": 2.0}, free={"CPU": 1.0, "GPU": 0.0})
    assert resources_text(ray, gpu=True) == "2 GPU (0 free), 2 CPU (1 free)"
    assert resources_text(ray, gpu=False) == "2 CPU (1 free)"

    class Unreachable(FakeRay):
        def cluster_resources(self):
            raise ConnectionError("GCS unreachable\nretrying")

    assert resources_text(Unreachable(), gpu=False) == "unknown resources (GCS unreachable)"

