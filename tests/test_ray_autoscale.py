"""``--gpus N`` on an autoscaling Ray cluster that has no GPU node yet (loopback only).

The cluster is Ray's fake multi-node autoscaler (what ``ray.cluster_utils.AutoscalingCluster`` runs):
a head with 1 CPU and no GPU, and a ``gpu_node`` type of {CPU: 1, GPU: 1}, min 0, max 2, whose
nodes the autoscaler starts as local processes. It is started here with ``ray start --head --block``
in a session of its own rather than with ``AutoscalingCluster.start()``, whose ``ray stop --force``
would stop every Ray process on the machine; teardown ends exactly this session's processes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("ray")

from latent_decoder.experiment import Experiment  # noqa: E402
from latent_decoder.runner import run_decode  # noqa: E402
from latent_decoder.settings import CliOptions, resolve_settings  # noqa: E402
from latent_decoder.compute import Worker  # noqa: E402

from conftest import hang_guard, journal_records, model_free_worker_cls, stop_shared_ray  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Ray assigned GPUs but torch sees no CUDA:UserWarning")

STORE = 80 * 2**20
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def autoscaling_config(gcs: str) -> dict:
    """The launcher config ``AutoscalingCluster._generate_config`` builds from a YAML this Ray wheel lacks."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": 2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_node": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": STORE}, "node_config": {},
                         "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1,
        "idle_timeout_minutes": 5,
        "auth": {}, "docker": {}, "head_node": {}, "worker_nodes": {}, "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [], "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def session_pids(sid: int) -> list[int]:
    """Every process of session ``sid`` (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def autoscaling_head() -> Iterator[str]:
    """The head's GCS address."""
    stop_shared_ray()  # the run must join this cluster, not the session's runtime
    root = Path(tempfile.mkdtemp(prefix="ld-as-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    gcs = f"127.0.0.1:{port}"
    config = root / "cluster.json"
    config.write_text(json.dumps(autoscaling_config(gcs)))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (root / "head.log").open("w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--autoscaling-config={config}",
         "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1", "--num-gpus", "0",
         "--object-store-memory", str(STORE), "--include-dashboard", "false",
         "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
         "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(root / "ray")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (root / "head.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (root / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        yield gcs
    finally:
        for pid in session_pids(proc.pid):  # the head's processes and the nodes its autoscaler started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def growing_worker_cls(markers: Path, patience: float = 120.0) -> type[Worker]:
    """Workers that prove the pool grows while it decodes. The first actor constructed goes ahead;
    the second finishes its constructor only once an item is being decoded (so it cannot be live
    before decoding starts), and says so with a marker. Items wait until the second is live, so both
    decode some."""
    def wait_for(path: Path) -> bool:
        deadline = time.monotonic() + patience
        while not path.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    class GrowingWorker(model_free_worker_cls()):
        def __init__(self, *args, **kwargs):
            try:
                os.close(os.open(markers / "first-constructed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                self.first = True
            except FileExistsError:
                self.first = False
                if wait_for(markers / "item-started"):
                    (markers / "second-joined-while-decoding").touch()
            super().__init__(*args, **kwargs)

        def describe(self):
            if not self.first:
                (markers / "second-live").touch()
            return super().describe()

        def compute(self, work):
            (markers / "item-started").touch()
            wait_for(markers / "second-live")
            return super().compute(work)

    return GrowingWorker


def test_gpus_on_an_autoscaling_cluster_without_gpu_nodes_grow_the_pool(autoscaling_head, make_experiment, tmp_path,
                                                                        caplog):
    exp = make_experiment(prompts=1, videos=1, steps=6)
    settings = resolve_settings(Experiment.load(exp), CliOptions(address=autoscaling_head, gpus=2, start_timeout=150))
    markers = tmp_path / "markers"
    markers.mkdir()
    with caplog.at_level(logging.INFO, logger="latent_decoder"), hang_guard(360):
        report = run_decode(settings, progress=False, worker_cls=growing_worker_cls(markers))
    assert report.exit_code == 0 and report.succeeded == 6
    records = journal_records(settings.output_dir)
    assert all(r["status"] == "ok" for r in records.values())
    assert {r["worker"] for r in records.values()} == {"ray-0", "ray-1"}
    assert (markers / "second-joined-while-decoding").exists()  # decoding began with one worker live
    summary = json.loads((settings.output_dir / "decode_summary.json").read_text())
    assert summary["model"]["workers"] == ["cpu", "cpu"]  # fake GPUs: torch sees no CUDA
    messages = [r.getMessage() for r in caplog.records]
    assert any("asked the autoscaler for 2 x {'GPU': 1}" in m for m in messages), messages
    assert any("joined" in m for m in messages), messages
