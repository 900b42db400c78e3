"""``latent-decoder submit`` against a real ``ray start --head`` on loopback (auth off, test only)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray")

from conftest import journal_records, run_cli, stop_shared_ray  # noqa: E402

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
            # the job's `python` is the first on the cluster's PATH: this virtualenv's
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster with its dashboard (job server) on 127.0.0.1; yields the dashboard URL."""
    stop_shared_ray()  # as before the session had one: no other Ray runtime in this process meanwhile
    port, dashboard = free_port(), free_port()
    # Every port of its own: the other pytest worker's Ray runtime holds the defaults (the dashboard
    # agent's 52365 above all: a second agent there never starts, and the job server has no agent).
    own_ports = [arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                                  "--runtime-env-agent-port", "--ray-client-server-port", "--node-manager-port",
                                  "--object-manager-port") for arg in (flag, str(free_port()))]
    ray_bin = Path(sys.executable).with_name("ray")
    # Short: Ray's socket paths must fit 107 bytes (pytest-xdist's temp folders are longer).
    temp = Path(tempfile.mkdtemp(prefix="ld-jobs-", dir="/tmp"))
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2", "--num-gpus", "0",
         "--object-store-memory", str(80 * 2**20), "--temp-dir", str(temp), *own_ports],
        env={**os.environ, **LOOPBACK}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ray start --head did not bring up its dashboard")
                time.sleep(1)
        yield url
    finally:
        # Every process of this cluster is in the session started above (and only those): stop them all.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_submit_runs_a_small_experiment_end_to_end(head, make_experiment):
    exp = make_experiment(prompts=1, videos=1, steps=2)
    proc = run_cli("submit", str(exp), "--address", head, "--", "--workers", "1", env=LOOPBACK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout and "finished: decoded 2 item(s)" in proc.stdout
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert summary["successful_steps"] == 2
    assert {r["worker"] for r in journal_records(exp / "latents_videos").values()} == {"ray-0"}


def test_submit_returns_the_jobs_failing_exit_status(head, make_experiment):
    exp = make_experiment(prompts=1, videos=1, steps=1)
    proc = run_cli("submit", str(exp), "--address", head, "--", "--workers", "1", "--model", str(exp / "nowhere"),
                   env=LOOPBACK)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "failed" in proc.stdout and "model" in proc.stdout


def test_ray_job_submit_runs_the_jobs_entrypoint(head, make_experiment):
    from conftest import REPO_ROOT

    exp = make_experiment(prompts=1, videos=1, steps=1)
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.run(
        [str(ray_bin), "job", "submit", "--address", head, "--working-dir", ".",
         "--runtime-env", "jobs/runtime_env.yaml", "--", "python", "jobs/decode_job.py", str(exp), "--workers", "1"],
        cwd=REPO_ROOT, env={**os.environ, **LOOPBACK}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished: decoded 1 item(s)" in proc.stdout + proc.stderr
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert summary["successful_steps"] == 1
