"""Ray that never hangs, on a real local Ray runtime: actors that cannot be placed, items that hang
their worker, SIGTERM. One runtime for the module: 1 CPU and 2 fake GPUs (torch sees no CUDA, so
GPU workers decode on CPU).

Worker classes that misbehave are built inside functions so Ray ships them by value; they use marker
files, never timing, to decide when to misbehave. A test whose run would hang under a regression is
cut short by ``hang_guard`` and fails instead of blocking the suite.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind every Ray node to 127.0.0.1
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # test runtimes only

ray = pytest.importorskip("ray")

from latent_decoder.experiment import Experiment  # noqa: E402
from latent_decoder.runner import run_decode  # noqa: E402
from latent_decoder.settings import CliOptions, RunSettings, resolve_settings  # noqa: E402
from latent_decoder.worker import DecodeWorker  # noqa: E402

from conftest import REPO_ROOT, journal_records, run_cli, hang_guard  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Ray assigned GPUs but torch sees no CUDA:UserWarning")

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    ray.init(address="local", num_cpus=1, num_gpus=2, object_store_memory=80 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


def wait_for_free(resource: str, amount: float, seconds: float = 60) -> None:
    """Actors of the previous test release their resources asynchronously."""
    deadline = time.monotonic() + seconds
    while ray.available_resources().get(resource, 0) < amount:
        assert time.monotonic() < deadline, f"{resource} not free: {ray.available_resources()}"
        time.sleep(0.2)


def ray_settings(exp: Path, **opts) -> RunSettings:
    return resolve_settings(Experiment.load(exp), CliOptions(executor="ray", **opts))


def hanging_worker_cls(item_key: str, marker_dir: Path | None) -> type[DecodeWorker]:
    """A worker whose compute hangs (as a CUDA deadlock would) on ``item_key``: on its first try only
    when ``marker_dir`` is given (the marker says it already hung once), else on every try."""
    class HangingWorker(DecodeWorker):
        def compute(self, work):
            if work.step.key == item_key:
                marker = marker_dir / "hung-once" if marker_dir is not None else None
                if marker is None or not marker.exists():
                    if marker is not None:
                        marker.touch()
                    time.sleep(3600)
            return super().compute(work)

    return HangingWorker


# ---------------------------------------------------------------------- actors that cannot be placed

class TouchOnLog(logging.Handler):
    """Touches ``path`` when a log message contains ``text``: lets a worker wait for the driver."""

    def __init__(self, text: str, path: Path) -> None:
        super().__init__()
        self.text, self.path = text, path

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.path.touch()


def gated_worker_cls(gate: Path) -> type[DecodeWorker]:
    """A worker whose items wait until ``gate`` exists (at most two minutes)."""
    class GatedWorker(DecodeWorker):
        def compute(self, work):
            deadline = time.monotonic() + 120
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            return super().compute(work)

    return GatedWorker


def test_workers_that_cannot_all_be_placed_run_on_those_that_started(make_experiment, tmp_path, caplog):
    """--workers 2 on 1 CPU: one CPU worker fits. Decoding starts with it; at the start deadline the
    run says what it asked for and what the cluster has, and goes on (items wait for that warning)."""
    wait_for_free("CPU", 1)
    exp = make_experiment(prompts=1, videos=1, steps=2)
    settings = ray_settings(exp, workers=2, start_timeout=20)
    gate = tmp_path / "deadline-passed"
    touch = TouchOnLog("not started within 20 s (--start-timeout)", gate)
    logging.getLogger("latent_decoder").addHandler(touch)
    try:
        with caplog.at_level(logging.INFO, logger="latent_decoder"), hang_guard(180):
            report = run_decode(settings, progress=False, worker_cls=gated_worker_cls(gate))
    finally:
        logging.getLogger("latent_decoder").removeHandler(touch)
    assert report.exit_code == 0 and report.succeeded == 2
    records = journal_records(settings.output_dir)
    assert len(records) == 2 and len({r["worker"] for r in records.values()}) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert ("asked for 2 workers with 1 CPU each; the cluster has 1 CPU (0 free): 1 of them not started "
            "within 20 s (--start-timeout); going on with 1") in warned, warned


def test_no_worker_placed_is_a_one_line_cluster_error_with_progress(make_experiment):
    """Both fake GPUs held by another job: the CLI waits --start-timeout, printing progress, then exits 2."""
    @ray.remote(num_gpus=2, num_cpus=0)
    class GpuHog:
        def ready(self) -> bool:
            return True

    hog = GpuHog.remote()
    try:
        ray.get(hog.ready.remote(), timeout=60)
        exp = make_experiment(prompts=1, videos=1, steps=1)
        address = ray.get_runtime_context().gcs_address
        started = time.monotonic()
        proc = run_cli("decode", str(exp), "--address", address, "--start-timeout", "4", env=LOOPBACK, timeout=180)
        took = time.monotonic() - started
    finally:
        ray.kill(hog)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: asked for 2 workers with 1 GPU each; the cluster has 2 GPU (0 free), 1 CPU (1 free): "
                      "no worker started within 4 s (--start-timeout)"], proc.stderr
    assert "waiting for Ray workers: 0 of 2 started after" in proc.stderr
    assert "Traceback" not in proc.stderr and took < 120
    assert journal_records(exp / "latents_videos") == {}


# ---------------------------------------------------------------------- hung workers

def test_item_that_hangs_once_is_killed_and_retried(make_experiment, tmp_path):
    """One worker; its first try of one item hangs: the actor is killed and restarted, the item is
    decoded on the retry, the item queued behind it is decoded once."""
    exp = make_experiment(prompts=1, videos=1, steps=4)
    settings = ray_settings(exp, gpus=1, item_timeout=5)
    hang = "prompt_000/vid_001/step_001"
    calls: Counter[str] = Counter()
    with hang_guard(240):
        report = run_decode(settings, progress=False, on_result=lambda step, rec: calls.update([step.key]),
                            worker_cls=hanging_worker_cls(hang, tmp_path))
    assert (tmp_path / "hung-once").exists()
    assert report.exit_code == 0 and report.succeeded == 4
    assert len(calls) == 4 and set(calls.values()) == {1}
    records = journal_records(settings.output_dir)
    assert all(r["status"] == "ok" for r in records.values())
    first = records["prompt_000/vid_001/step_000"]["pid"]
    assert records[hang]["pid"] != first  # decoded by the restarted actor


def test_item_that_always_hangs_is_recorded_as_poison_and_the_run_ends(make_experiment, caplog):
    exp = make_experiment(prompts=1, videos=1, steps=4)
    settings = ray_settings(exp, item_timeout=5)
    hang = "prompt_000/vid_001/step_002"
    with caplog.at_level(logging.WARNING, logger="latent_decoder"), hang_guard(300):
        report = run_decode(settings, progress=False, worker_cls=hanging_worker_cls(hang, None))
    assert report.exit_code == 1 and report.succeeded == 3
    records = journal_records(settings.output_dir)
    assert len(records) == 4
    failed = records.pop(hang)
    assert failed["status"] == "failed" and failed["error_type"] == "PoisonItemError"
    assert "hung its worker 3 times (poison item)" in failed["error"] and "timed out" in failed["error"]
    assert all(r["status"] == "ok" for r in records.values())
    assert sum("lost (timed out: no result after" in r.getMessage() for r in caplog.records) >= 3


# ---------------------------------------------------------------------- SIGTERM

SIGTERM_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import slow_worker_cls
from latent_decoder.experiment import Experiment
from latent_decoder.runner import run_decode
from latent_decoder.settings import CliOptions, resolve_settings

settings = resolve_settings(Experiment.load({exp!r}), CliOptions(workers=1))
report = run_decode(settings, progress=False, worker_cls=slow_worker_cls(1.0))
sys.exit(report.exit_code)
"""


def test_sigterm_stops_a_ray_run_cleanly(make_experiment, tmp_path):
    """ray.init installs its own SIGTERM handler (exit 15, stack dump); the run's must win."""
    exp = make_experiment(prompts=1, videos=1, steps=6)
    out = exp / "latents_videos"
    script = tmp_path / "decode.py"
    script.write_text(SIGTERM_SCRIPT.format(tests=str(REPO_ROOT / "tests"), exp=str(exp)))
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, **LOOPBACK}, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not ((out / ".latent-decoder.db").exists() and journal_records(out)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no item committed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "SystemExit" not in stderr, stderr
    records = journal_records(out)
    assert 1 <= len(records) < 6 and all(r["status"] == "ok" for r in records.values())
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["last_run"]["interrupted"] is True
    assert summary["successful_steps"] == len(records)


# ---------------------------------------------------------------------- options

def test_timeouts_are_carried_over_and_checked():
    from click.testing import CliRunner

    from latent_decoder.cli import cli
    from latent_decoder.errors import SetupError
    from latent_decoder.settings import ExecutorSettings, resolve_executor

    got = resolve_executor(CliOptions(workers=2, start_timeout=5, item_timeout=30))
    assert (got.start_timeout, got.item_timeout) == (5, 30)
    assert (ExecutorSettings().start_timeout, ExecutorSettings().item_timeout) == (60, 300)
    with pytest.raises(SetupError, match="--item-timeout must be a positive number of seconds"):
        resolve_executor(CliOptions(workers=2, item_timeout=0))
    help_text = CliRunner().invoke(cli, ["decode", "--help"]).output
    assert "--start-timeout SECONDS" in help_text and "--item-timeout SECONDS" in help_text
