"""Shared fixtures: tiny real VAEs saved with save_pretrained, real experiment folders,
an HF cache entry under a real repo id, and a helper to run the real CLI in a subprocess."""
from __future__ import annotations

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


def slow_worker_cls(seconds: float):
    """A DecodeWorker that takes ``seconds`` longer per decode, so a kill lands mid-run."""
    import time

    from latent_decoder.worker import DecodeWorker

    class SlowWorker(DecodeWorker):
        def decode(self, latent, source="<array>", condition=None):
            time.sleep(seconds)
            return super().decode(latent, source, condition)

    return SlowWorker


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
