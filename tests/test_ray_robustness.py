"""Ray that never hangs, on a real local Ray runtime: actors that cannot be placed, items that hang
their worker, SIGTERM. The session's runtime (``shared_ray``: 2 CPUs and 2 fake GPUs; torch sees no
CUDA, so GPU workers decode on CPU), but for the SIGTERM test, whose process starts its own.

Worker classes that misbehave are built inside functions so Ray ships them by value; they use marker
files, never timing, to decide when to misbehave. A test whose run would hang under a regression is
cut short by ``hang_guard`` and fails instead of blocking the suite.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from latent_decoder.experiment import Experiment  # noqa: E402
from latent_decoder.runner import run_decode  # noqa: E402
from latent_decoder.settings import CliOptions, RunSettings, resolve_settings  # noqa: E402
from latent_decoder.compute import Worker  # noqa: E402

from conftest import REPO_ROOT, hang_guard, journal_records, model_free_worker_cls, touch_on_log  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Ray assigned GPUs but torch sees no CUDA:UserWarning")


def ray_settings(exp: Path, **opts) -> RunSettings:
    return resolve_settings(Experiment.load(exp), CliOptions(executor="ray", **opts))


def hanging_worker_cls(always: str) -> type[Worker]:
    """A worker whose compute hangs (as a CUDA deadlock would) on every try of item ``always``."""
    class HangingWorker(model_free_worker_cls()):
        def compute(self, work):
            if work.step.key == always:
                time.sleep(3600)
            return super().compute(work)

    return HangingWorker


# ---------------------------------------------------------------------- actors that cannot be placed

def gated_worker_cls(gate: Path) -> type[Worker]:
    """A worker whose items wait until ``gate`` exists (at most two minutes)."""
    class GatedWorker(model_free_worker_cls()):
        def compute(self, work):
            deadline = time.monotonic() + 120
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            return super().compute(work)

    return GatedWorker


@ray.remote(num_cpus=1)
class CpuHog:
    """Holds one CPU of the shared runtime, as another job would."""

    def ready(self) -> bool:
        return True


def test_workers_that_cannot_all_be_placed_run_on_those_that_started(shared_ray, make_experiment, tmp_path, caplog):
    """--workers 2 with 1 CPU free: one CPU worker fits. Decoding starts with it; at the start deadline
    the run says what it asked for and what the cluster has, and goes on (items wait for that warning)."""
    exp = make_experiment(prompts=1, videos=1, steps=2)
    settings = ray_settings(exp, workers=2, start_timeout=20)
    gate = tmp_path / "deadline-passed"
    hog = CpuHog.remote()
    try:
        ray.get(hog.ready.remote(), timeout=60)
        with caplog.at_level(logging.INFO, logger="latent_decoder"), hang_guard(180), \
                touch_on_log("not started within 20 s (--start-timeout)", gate):
            report = run_decode(settings, progress=False, worker_cls=gated_worker_cls(gate))
    finally:
        ray.kill(hog)
    assert report.exit_code == 0 and report.succeeded == 2
    records = journal_records(settings.output_dir)
    assert len(records) == 2 and len({r["worker"] for r in records.values()}) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert ("asked for 2 workers with 1 CPU each; the cluster has 2 CPU (0 free): 1 of them not started "
            "within 20 s (--start-timeout); going on with 1") in warned, warned


def test_no_worker_placed_is_a_one_line_cluster_error_with_progress(shared_ray, make_experiment, caplog):
    """Both fake GPUs held by another job: the CLI waits --start-timeout, saying how long it has
    waited, then exits 2 with one line."""
    from click.testing import CliRunner

    from latent_decoder.cli import cli

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
        with caplog.at_level(logging.INFO, logger="latent_decoder"):
            result = CliRunner().invoke(cli, ["decode", str(exp), "--address", address, "--start-timeout", "4"])
        took = time.monotonic() - started
    finally:
        ray.kill(hog)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: asked for 2 workers with 1 GPU each; the cluster has 2 GPU (0 free), 2 CPU (2 free): "
                      "no worker started within 4 s (--start-timeout)"], result.stderr
    assert any("waiting for Ray workers: 0 of 2 started after" in r.getMessage() for r in caplog.records)
    assert "Traceback" not in result.output and took < 120
    assert journal_records(exp / "latents_videos") == {}


# ---------------------------------------------------------------------- hung workers

def test_items_that_hang_are_killed_retried_and_at_last_poison(shared_ray, make_experiment, caplog):
    """One worker. An item that hangs on every try: past the item deadline the actor is killed and
    restarted and the item tried again; after three hangs it is recorded failed as poison. The other
    items are decoded once. (That an item charged for a lost worker
    is decoded on its retry: test_ray_overlap.py; the deadline's branches: test_ray_pool.py.)"""
    exp = make_experiment(prompts=1, videos=1, steps=4)
    settings = ray_settings(exp, gpus=1, item_timeout=3)
    always = "prompt_000/vid_001/step_001"
    calls: Counter[str] = Counter()
    with caplog.at_level(logging.WARNING, logger="latent_decoder"), hang_guard(300):
        report = run_decode(settings, progress=False, on_result=lambda step, rec: calls.update([step.key]),
                            worker_cls=hanging_worker_cls(always))
    assert report.exit_code == 1 and report.succeeded == 3
    assert len(calls) == 4 and set(calls.values()) == {1}
    records = journal_records(settings.output_dir)
    assert len(records) == 4
    failed = records.pop(always)
    assert failed["status"] == "failed" and failed["error_type"] == "PoisonItemError"
    assert "hung its worker 3 times (poison item)" in failed["error"] and "timed out" in failed["error"]
    assert all(r["status"] == "ok" for r in records.values())
    # three hangs, each the actor killed and restarted (one worker: without the restarts no try could follow)
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
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO_ROOT,
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
