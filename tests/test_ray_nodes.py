"""The Ray executor on a real several-node cluster (``ray.cluster_utils.Cluster``, loopback only):
nodes lost mid-run, with room elsewhere (the actor comes back), with none (the pool shrinks, or the
run stops with a ``ClusterError`` once no worker is left)."""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from latent_decoder.errors import ClusterError  # noqa: E402
from latent_decoder.executors import ray as ray_executor  # noqa: E402
from latent_decoder.experiment import Experiment  # noqa: E402
from latent_decoder.runner import run_decode  # noqa: E402
from latent_decoder.settings import CliOptions, resolve_settings  # noqa: E402

from conftest import hang_guard, held_worker_cls, journal_records, stop_shared_ray, touch_on_log  # noqa: E402

NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}  # room for exactly one CPU worker


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no workers (only the driver); each test brings the worker nodes it needs."""
    stop_shared_ray()
    fast_node_death = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                       "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20,
                                                            "include_dashboard": False,
                                                            "_system_config": fast_node_death})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def with_worker_nodes(cluster: Cluster, count: int) -> None:
    """Exactly ``count`` worker nodes of 1 CPU each, all of it free: the nodes an earlier test left
    alive are kept (a node costs seconds to start), the missing ones added."""
    for node in list(cluster.worker_nodes)[count:]:
        cluster.remove_node(node)
    for _ in range(count - len(cluster.worker_nodes)):
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    deadline = time.monotonic() + 60
    while ray.cluster_resources().get("CPU", 0) != count or ray.available_resources().get("CPU", 0) != count:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.2)


@pytest.fixture
def restart_wait(monkeypatch):
    """Runs give lost actors ``seconds`` to come back instead of minutes."""
    def set_wait(seconds: float) -> None:
        class QuickExecutor(ray_executor.RayExecutor):
            def __init__(self, settings, worker_cls=ray_executor.DecodeWorker):
                super().__init__(settings, worker_cls=worker_cls, restart_wait_s=seconds)

        monkeypatch.setattr(ray_executor, "RayExecutor", QuickExecutor)

    return set_wait


def ancestors(pid: int) -> set[int]:
    """Parent, grandparent, ... of ``pid`` (Linux /proc)."""
    found = set()
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        found.add(pid)
    return found


def node_of(cluster: Cluster, pid: int):
    """The worker node whose raylet started process ``pid``."""
    ancestors_of_pid = ancestors(pid)
    for node in cluster.worker_nodes:
        if node.all_processes["raylet"][0].process.pid in ancestors_of_pid:
            return node
    raise AssertionError(f"pid {pid} is on no worker node")


def wait_gone(pid: int, seconds: float = 60) -> None:
    """Until process ``pid`` has ended (gone, or a zombie): a removed node's actor dies with its raylet."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs {seconds:g} s after its node was removed")


def lose_first_workers_node(cluster: Cluster, gate: Path | None):
    """(calls per item, pids whose node was removed, on_result): the node of the worker that returns
    the first result is removed at once, without grace, while the items held by ``gate``
    (``held_worker_cls``) are in flight; once that worker's process has ended, the gate opens (when
    given)."""
    calls: Counter[str] = Counter()
    removed: list[int] = []

    def on_result(step, record):
        calls[step.key] += 1
        if not removed:
            removed.append(record.pid)
            cluster.remove_node(node_of(cluster, record.pid), allow_graceful=False)
            if gate is not None:
                wait_gone(record.pid)
                gate.touch()

    return calls, removed, on_result


def test_node_removed_mid_run_every_item_decoded_once(cluster, make_experiment, tmp_path):
    """One worker, so the run can only finish if Ray brings it back on the other node."""
    with_worker_nodes(cluster, 2)
    exp = make_experiment(prompts=2, videos=1, steps=4)
    settings = resolve_settings(Experiment.load(exp), CliOptions(workers=1))
    assert settings.executor.kind == "ray"
    calls, removed, on_result = lose_first_workers_node(cluster, tmp_path / "gate")

    report = run_decode(settings, progress=False, on_result=on_result, worker_cls=held_worker_cls(tmp_path / "gate"))
    assert report.exit_code == 0
    assert set(calls.values()) == {1} and len(calls) == 8
    summary = json.loads((settings.output_dir / "decode_summary.json").read_text())
    records = journal_records(settings.output_dir)
    assert sorted(records) == sorted(calls)
    assert summary["successful_steps"] == 8
    assert len(cluster.worker_nodes) == 1
    assert {s["worker"] for s in records.values()} == {"ray-0"}
    pids = {s["pid"] for s in records.values()}
    assert removed[0] in pids and len(pids) == 2  # the lost worker came back on the other node


def test_last_worker_node_removed_is_a_cluster_error_not_a_hang(cluster, make_experiment, restart_wait, tmp_path):
    """The only node with room is gone and nothing can host the actor again: after the restart window
    the run stops with a one-line ClusterError; what was decoded before is in the journal."""
    with_worker_nodes(cluster, 1)
    restart_wait(3)
    exp = make_experiment(prompts=1, videos=1, steps=4)
    settings = resolve_settings(Experiment.load(exp), CliOptions(workers=1))
    committed: list[str] = []
    removed_at: list[tuple[float, float]] = []

    def on_result(step, record):
        committed.append(step.key)
        if not removed_at:
            cluster.remove_node(node_of(cluster, record.pid), allow_graceful=False)
            removed_at.append((time.monotonic(), time.process_time()))

    with pytest.raises(ClusterError, match=r"every Ray worker is gone \(ray-0: .*not back within 3 s\)") as info, \
            hang_guard(180):
        run_decode(settings, progress=False, on_result=on_result, worker_cls=held_worker_cls(tmp_path / "gate"))
    wall, cpu = time.monotonic() - removed_at[0][0], time.process_time() - removed_at[0][1]
    assert "\n" not in str(info.value) and "item(s) not decoded" in str(info.value)
    assert wall < 90
    assert cpu < 0.5 * wall, f"the driver used {cpu:.1f} s of CPU in {wall:.1f} s while waiting: busy loop"
    records = journal_records(settings.output_dir)
    assert sorted(records) == sorted(committed) and 1 <= len(records) < 4
    assert all(r["status"] == "ok" for r in records.values())


def test_lost_worker_that_cannot_come_back_is_dropped_and_the_run_finishes(cluster, make_experiment, restart_wait,
                                                                           caplog, tmp_path):
    """Two workers on two nodes; one node goes and nothing else has room for its actor: the pool
    shrinks to one worker, which decodes everything left (held until the other is given up)."""
    with_worker_nodes(cluster, 2)
    restart_wait(2)
    exp = make_experiment(prompts=2, videos=1, steps=5)
    settings = resolve_settings(Experiment.load(exp), CliOptions(workers=2))
    gate = tmp_path / "gate"
    calls, removed, on_result = lose_first_workers_node(cluster, None)

    with caplog.at_level(logging.WARNING, logger="latent_decoder"), hang_guard(180), touch_on_log("given up", gate):
        report = run_decode(settings, progress=False, on_result=on_result, worker_cls=held_worker_cls(gate))
    assert report.exit_code == 0 and report.succeeded == 10
    assert len(calls) == 10 and set(calls.values()) == {1}
    records = journal_records(settings.output_dir)
    assert all(r["status"] == "ok" for r in records.values())
    survivors = {r["pid"] for r in records.values()} - {removed[0]}
    assert len(survivors) == 1  # everything else was decoded by the one worker left
    assert any("given up" in r.getMessage() and "1 worker(s) left" in r.getMessage() for r in caplog.records)
