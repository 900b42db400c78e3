"""Shared fixtures: tiny real VAEs saved with save_pretrained, real experiment folders,
an HF cache entry under a real repo id, one local Ray runtime for the session, and a helper to run
the real CLI in a subprocess."""
from __future__ import annotations

import gc
import os
import signal
from contextlib import contextmanager
from typing import Iterator
import subprocess
import sys
from pathlib import Path

import pytest

# Never touch the network: tests build every model they load.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One thread per process for torch and the encoder: `make test` runs three pytest workers on a 2-core
# box, each of which starts CLI processes and Ray actors (they inherit this environment); with more
# threads they fight for the cores and per-item time swings by 10-20x without changing what is checked.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Test Ray runtimes bind every node to 127.0.0.1 and run without token authentication
# (DESIGN.md, "Ray facts"); every `ray start`, CLI process and Ray worker started here inherits it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The processes these tests send Ctrl-C to start as from a terminal, with SIGINT's default action. A
# suite started in the background by a non-interactive shell (`make test &`) has SIGINT ignored in its
# pytest-xdist workers, and every process they start would inherit that; a handler here (reset to the
# default when a child executes) makes them start as a terminal's would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from latent_decoder.synthetic import build_synthetic_experiment, build_tiny_wan_vae  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
WAN_REPO_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
DEMO_STEPS = 8


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory):
    """The wheel built from this checkout, installed alone into a fresh venv (``wheel_install``)."""
    from wheel_install import build_wheel, checkout_files, install_wheel

    files = checkout_files()
    wheel = build_wheel(files, tmp_path_factory.mktemp("wheel_source"), tmp_path_factory.mktemp("dist"))
    return install_wheel(wheel, tmp_path_factory.mktemp("venv"), files)


@pytest.fixture(scope="session")
def demo_run(installed_wheel, tmp_path_factory: pytest.TempPathFactory):
    """``latent-decoder demo demo_experiment --steps 8 --format png`` run once from the installed wheel,
    in a folder outside the checkout, as a user would (lossless frames, so the pixel checks measure
    the VAE and not x264). Returns ``(root, finished process)``."""
    cwd = tmp_path_factory.mktemp("demo")
    result = installed_wheel.run("latent-decoder", "demo", "demo_experiment", "--steps", str(DEMO_STEPS),
                                 "--format", "png", "--device", "cpu", cwd=cwd)
    return cwd / "demo_experiment", result


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline-style model folder: ``model/vae/{config.json, diffusion_pytorch_model.safetensors}``."""
    root = tmp_path_factory.mktemp("tiny_model")
    build_tiny_wan_vae(seed=0).save_pretrained(root / "vae")
    return root


@pytest.fixture
def make_experiment(tmp_path: Path, tiny_model_dir: Path):
    """Factory: ``make_experiment(name="exp", **build_synthetic_experiment kwargs) -> Path``."""
    def make(name: str = "exp", **kwargs) -> Path:
        kwargs.setdefault("model_dir", tiny_model_dir)
        kwargs.setdefault("steps", 3)
        kwargs.setdefault("height", 32)
        kwargs.setdefault("width", 48)
        return build_synthetic_experiment(tmp_path / name, **kwargs)

    return make


@pytest.fixture
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny decoder folder (returned) and the HF cache live in this test's folder; both start empty."""
    from latent_decoder.tiny.setup import TINY_DIR_ENV

    monkeypatch.setenv(TINY_DIR_ENV, str(tmp_path / "tiny-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "tiny-cache"


SHARED_RAY = dict(num_cpus=2, num_gpus=2, object_store_memory=80 * 2**20)  # two fake GPUs: torch sees no CUDA


@pytest.fixture
def shared_ray():
    """The session's local Ray runtime (started on first use: ``SHARED_RAY``), for tests that need
    "a Ray" and no particular cluster shape; returns the ``ray`` module. One per pytest worker that
    runs such a test. Test modules that need a cluster of their own call ``stop_shared_ray()`` first;
    the next test that uses this one starts it again."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, **SHARED_RAY)
    wait_for_ray_resources(ray, CPU=SHARED_RAY["num_cpus"], GPU=SHARED_RAY["num_gpus"])
    return ray


def stop_shared_ray() -> None:
    """Stop the shared runtime if it runs in this process (a module with its own cluster comes next)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def wait_for_ray_resources(ray, **wanted: float) -> None:
    """Actors of an earlier test release their resources asynchronously: wait (at most a minute)
    until ``wanted`` (e.g. ``CPU=2, GPU=2``) is free again."""
    import time

    deadline = time.monotonic() + 60
    while any(ray.available_resources().get(name, 0) < amount for name, amount in wanted.items()):
        assert time.monotonic() < deadline, f"{wanted} not free: {ray.available_resources()}"
        time.sleep(0.1)


# The files with the longest runs start first, longest first (`make test` hands whole files to its
# workers in this order), so that no worker is left with a long one at the end while the others idle.
FIRST_FILES = ("test_demo.py", "test_ray_executor.py", "test_watch.py", "test_resume.py", "test_ray_robustness.py",
               "test_ray_nodes.py", "test_distill.py", "test_ray_jobs.py", "test_family_wan_i2v.py",
               "test_views_reconcile.py", "test_wan_stream.py", "test_ray_overlap.py", "test_ray_autoscale.py",
               "test_tiny_decode.py")  # the last file using the session's Ray: it is not started again later


# Test files that use Ray: the session's runtime (``shared_ray``) or clusters of their own.
RAY_FILES: set[Path] = set()


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return FIRST_FILES.index(name) if name in FIRST_FILES else len(FIRST_FILES)

    items.sort(key=rank)
    RAY_FILES.update(item.path for item in items if "shared_ray" in item.fixturenames or
                     item.path.name.startswith("test_ray_"))


def pytest_runtest_setup(item):
    """A file that uses no Ray: the session's runtime, if one is up, is stopped first. Idle, a Ray
    runtime keeps about 5% of a core busy (its agents and monitors), and the Ray files run first."""
    if item.path not in RAY_FILES and "ray" in sys.modules:
        stop_shared_ray()


def pytest_collection_finish(session):
    """Every test module is imported, torch, diffusers and transformers with them: their objects live
    as long as this process, so they are frozen out of the garbage collector's walks (as the CLI and
    its Ray actors do, ``latent_decoder/heap.py``; about 7% of an in-process test file's time)."""
    gc.freeze()


def pytest_sessionfinish(session, exitstatus):
    if "ray" in sys.modules:
        stop_shared_ray()


def save_to_hf_cache(model_dir: Path, hf_home: Path, repo_id: str = WAN_REPO_ID, revision: str = "0" * 40) -> Path:
    """Lay ``model_dir`` out as ``$HF_HOME/hub/models--Org--Name/{refs/main, snapshots/<rev>/...}``."""
    import shutil

    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount(size_kb, where=None) -> Path``: a real tmpfs of that size, on a new folder or on ``where``
    (needs root with CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(size_kb: int, where: Path | None = None) -> Path:
        where = where or tmp_path / f"mnt{len(mounted)}"
        where.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m latent_decoder ARGS`` as a user would; returns the finished process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "latent_decoder", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO_ROOT, **kwargs)


def model_free_worker_cls():
    """A decoder with no model, for the tests of the Ray pool itself (deadlines, kills, restarts,
    placement, autoscaling, nodes lost): frames made from the latent with numpy, of the count and size
    the tiny Wan VAE decodes to (4 frames per latent frame after the first, 8 pixels per latent pixel).
    Its Ray actor starts without importing torch or diffusers, about a third of a VAE actor's start.
    The VAE in Ray actors: test_ray_executor.py, test_family_wan_i2v.py, test_distill.py, test_tiny_decode.py."""
    import numpy as np

    from latent_decoder.compute import Worker

    class ModelFreeWorker(Worker):
        def __init__(self, output, output_dir=None, device="cpu", model=None, name="inline"):
            super().__init__(output, output_dir, "cpu", name)

        def decode(self, latent, source="<array>", condition=None):
            z = np.asarray(latent, np.float32)[0]  # [C, T, H, W]
            rgb = np.tanh(z[:3]).transpose(1, 2, 3, 0)  # [T, H, W, 3] in (-1, 1)
            frames = np.concatenate([rgb[:1], np.repeat(rgb[1:], 4, axis=0)])
            frames = frames.repeat(8, axis=1).repeat(8, axis=2)
            return np.round((frames + 1) * 127.5).astype(np.uint8)

        def to_frames(self, latent, work):
            return self.decode(latent, str(work.step.path))

    return ModelFreeWorker


def slow_worker_cls(seconds: float):
    """A model-free worker (``model_free_worker_cls``) that takes ``seconds`` per decode, so a kill
    lands mid-run."""
    import time

    class SlowWorker(model_free_worker_cls()):
        def decode(self, latent, source="<array>", condition=None):
            time.sleep(seconds)
            return super().decode(latent, source, condition)

    return SlowWorker


def held_worker_cls(gate: Path):
    """A model-free worker that decodes the run's first item at once and holds every later one until
    ``gate`` exists (at most two minutes): a test that kills a worker (or its node) in ``on_result`` of
    that first item knows that other items are in flight there, and creates ``gate`` once it has."""
    import os
    import time

    first = gate.with_name(gate.name + ".first")

    class GatedWorker(model_free_worker_cls()):
        def decode(self, latent, source="<array>", condition=None):
            try:
                os.close(os.open(first, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                deadline = time.monotonic() + 120
                while not gate.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
            return super().decode(latent, source, condition)

    return GatedWorker


def meeting_vae_worker_cls(meeting: Path, count: int):
    """The real VAE worker (``worker.DecodeWorker``), whose actors hold their first item until ``count`` of
    them have loaded the model (at most two minutes): every actor of the pool then takes part in the
    run, however unevenly a loaded machine starts them (one actor up seconds before the other could
    otherwise decode every item alone)."""
    import os
    import time

    from latent_decoder.worker import DecodeWorker

    class MeetingWorker(DecodeWorker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            meeting.mkdir(parents=True, exist_ok=True)
            (meeting / str(os.getpid())).touch()
            self.met = False

        def to_frames(self, latent, work):
            deadline = time.monotonic() + 120
            while not self.met and len(list(meeting.iterdir())) < count and time.monotonic() < deadline:
                time.sleep(0.02)
            self.met = True
            return super().to_frames(latent, work)

    return MeetingWorker


@contextmanager
def touch_on_log(text: str, path: Path) -> Iterator[None]:
    """While inside: touch ``path`` when a ``latent_decoder`` log message contains ``text``, so a worker
    held by ``path`` waits for what the driver says (a deadline passed, a worker given up)."""
    import logging

    class TouchOnLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                path.touch()

    handler = TouchOnLog()
    logger = logging.getLogger("latent_decoder")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def journal_records(out: Path) -> dict[str, dict]:
    """Item key -> the journal's latest attempt (as a dict) for every attempted item of an output folder."""
    from latent_decoder.journal import Journal
    from latent_decoder.layout import OutputLayout

    with Journal.open(OutputLayout(Path(out)), write=False) as journal:
        return {r.item: r.to_dict() for r in journal.records() if r.status is not None}


def tiny_wan_transformer(seed: int = 0):
    """A tiny ``WanTransformer3DModel`` with seeded random weights, for real tiny ``WanPipeline`` runs."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


class Hung(KeyboardInterrupt):
    """hang_guard's alarm: from inside its calls Ray passes on only a KeyboardInterrupt."""


@contextmanager
def hang_guard(seconds: int) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging when the block runs longer than ``seconds`` (the run
    may also stop as if interrupted, or return: either way the test fails)."""
    fired: list[bool] = []

    def fire(signum, frame):
        fired.append(True)
        raise Hung()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    except KeyboardInterrupt:
        if not fired:
            raise
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if fired:
        raise TimeoutError(f"still running after {seconds} s: the run hangs")
