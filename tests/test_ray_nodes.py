"""The Ray executor on a real several-node cluster (``ray.cluster_utils.Cluster``, loopback only)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind every Ray node to 127.0.0.1

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from latent_decoder.experiment import Experiment  # noqa: E402
from latent_decoder.runner import run_decode  # noqa: E402
from latent_decoder.settings import CliOptions, resolve_settings  # noqa: E402

from conftest import slow_worker_cls  # noqa: E402

NODE = {"num_cpus": 2, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no workers (only the driver) and two worker nodes of 2 CPUs each."""
    fast_node_death = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                       "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 2**20,
                                                            "include_dashboard": False,
                                                            "_system_config": fast_node_death})
    for _ in range(2):
        cluster.add_node(**NODE)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


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


def test_node_removed_mid_run_every_item_decoded_once(cluster, make_experiment):
    """One worker, so the run can only finish if Ray brings it back on the other node."""
    exp = make_experiment(prompts=2, videos=1, steps=4)
    settings = resolve_settings(Experiment.load(exp), CliOptions(workers=1))
    assert settings.executor.kind == "ray"
    calls: Counter[str] = Counter()
    removed: list[int] = []

    def on_result(step, record):
        calls[step.key] += 1
        if not removed and record is not None:
            removed.append(record.pid)
            cluster.remove_node(node_of(cluster, record.pid), allow_graceful=False)

    report = run_decode(settings, progress=False, on_result=on_result, worker_cls=slow_worker_cls(0.5))
    assert report.exit_code == 0
    assert set(calls.values()) == {1} and len(calls) == 8
    summary = json.loads((settings.output_dir / "decode_summary.json").read_text())
    assert sorted(s["item"] for s in summary["steps"]) == sorted(calls)
    assert summary["successful_steps"] == 8
    assert len(cluster.worker_nodes) == 1
    assert {s["worker"] for s in summary["steps"]} == {"ray-0"}
    pids = {s["pid"] for s in summary["steps"]}
    assert removed[0] in pids and len(pids) == 2  # the lost worker came back on the other node
