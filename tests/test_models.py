"""Where the VAE comes from: local pipeline folders, bare VAE folders, the HF cache under a real
repo id, ``--model`` over the config; and the errors when it cannot be found, is of an
unsupported class, or does not fit the latent.

Every model is a tiny real ``AutoencoderKLWan`` saved with ``save_pretrained``; models saved from
different seeds decode the same latent differently, so loading the wrong one is caught.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latent_decoder import models
from latent_decoder.cli import cli
from latent_decoder.synthetic import build_tiny_wan_vae, save_npy_gz, write_config
from latent_decoder.errors import LatentShapeError, ModelNotFoundError, UnsupportedModelError
from latent_decoder.models import resolve_model
from latent_decoder.settings import OutputSettings
from latent_decoder.worker import DecodeWorker

from conftest import WAN_REPO_ID, run_cli, save_to_hf_cache

FRAMES, HEIGHT, WIDTH = 5, 16, 32
LATENT_SHAPE = (1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
SMALL = dict(frames=FRAMES, height=HEIGHT, width=WIDTH)


def reference_frames(vae, latent: np.ndarray) -> np.ndarray:
    """What WanPipeline does before/after ``vae.decode``, written out with diffusers directly."""
    import torch

    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, cfg.z_dim, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, cfg.z_dim, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(torch.from_numpy(np.asarray(latent, np.float32)) * std + mean, return_dict=False)[0]
    return ((video[0].permute(1, 2, 3, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def assert_same_frames(frames: np.ndarray, expected: np.ndarray) -> None:
    assert frames.shape == expected.shape
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1


def png_frames(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("frame_*.png"))
    assert files, f"no frames in {folder}"
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


@pytest.fixture(scope="module")
def latent() -> np.ndarray:
    """A model-space latent, exactly representable in float16 (as experiments store it)."""
    return np.random.default_rng(7).standard_normal(LATENT_SHAPE).astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def refs(latent) -> dict[int, np.ndarray]:
    """Expected frames of ``latent`` per model seed, from the in-memory twins of the saved models:
    seed 0 is ``tiny_model_dir``, seed 1 the bare VAE."""
    return {seed: reference_frames(build_tiny_wan_vae(seed=seed), latent) for seed in (0, 1)}


@pytest.fixture(scope="module")
def bare_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE saved on its own: ``config.json`` at the top of the folder, no ``vae/``."""
    folder = tmp_path_factory.mktemp("bare_vae")
    build_tiny_wan_vae(seed=1).save_pretrained(folder)
    assert (folder / "config.json").is_file() and not (folder / "vae").exists()
    return folder


def store(exp: Path, latent: np.ndarray, step: str = "step_001") -> None:
    """Put ``latent`` (as float16, like experiments) at ``prompt_000/vid_001/<step>``."""
    save_npy_gz(exp / "latents" / "prompt_000" / "vid_001" / f"{step}.npy.gz", latent.astype(np.float16))


@pytest.fixture
def hf_home(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$HF_HOME`` holding ``tiny_model_dir`` under the real Wan2.1 repo id."""
    home = tmp_path / "hf_home"
    save_to_hf_cache(tiny_model_dir, home)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def _decode(*args: str):
    return CliRunner().invoke(cli, ["decode", *args, "--device", "cpu"])


# --------------------------------------------------------------------------- local folders


def test_local_pipeline_folder_uses_its_vae_subfolder(tiny_model_dir, latent, refs):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.folder == tiny_model_dir / "vae"
    assert resolved.class_name == "AutoencoderKLWan"
    assert resolved.origin == "local folder"
    worker = DecodeWorker(OutputSettings(model=str(tiny_model_dir)), device="cpu")
    try:
        frames = worker.decode(latent)
    finally:
        worker.close()
    assert frames.dtype == np.uint8 and frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert_same_frames(frames, refs[0])
    assert np.abs(frames.astype(int) - refs[1]).max() > 10  # the two saved models do differ


def test_bare_vae_folder(bare_vae_dir, latent, refs):
    resolved = resolve_model(str(bare_vae_dir))
    assert resolved.folder == bare_vae_dir
    assert resolved.class_name == "AutoencoderKLWan"
    worker = DecodeWorker(OutputSettings(model=str(bare_vae_dir)), device="cpu")
    try:
        assert_same_frames(worker.decode(latent), refs[1])
    finally:
        worker.close()


def test_local_folder_without_a_vae_config_is_not_found(tmp_path):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "model_index.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="neither vae/config.json nor config.json"):
        resolve_model(str(empty))


def test_config_without_class_name_is_rejected(tmp_path, bare_vae_dir):
    folder = tmp_path / "nameless"
    folder.mkdir()
    config = json.loads((bare_vae_dir / "config.json").read_text())
    del config["_class_name"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match="_class_name"):
        resolve_model(str(folder))


# --------------------------------------------------------------------------- HF cache


def test_repo_id_resolves_from_the_hf_cache(hf_home, monkeypatch):
    snapshot = hf_home / "hub" / ("models--" + WAN_REPO_ID.replace("/", "--")) / "snapshots" / ("0" * 40)
    resolved = resolve_model(WAN_REPO_ID)
    assert resolved.origin == "HF cache"
    assert resolved.folder.resolve() == (snapshot / "vae").resolve()
    assert resolved.class_name == "AutoencoderKLWan"

    # Even with offline mode off, a cached model is used as is: no download is tried.
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download a model that is in the cache")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_download", no_download)
    assert resolve_model(WAN_REPO_ID).origin == "HF cache"


def test_cli_decodes_with_a_cached_repo_id_offline_and_fast(make_experiment, hf_home, latent, refs):
    exp = make_experiment(prompts=1, steps=2, **SMALL)
    store(exp, latent)
    write_config(exp, WAN_REPO_ID, WIDTH, HEIGHT, FRAMES, 8.0)
    start = time.monotonic()
    proc = run_cli("decode", str(exp), "--device", "cpu", "--format", "png",
                   env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 60, f"took {elapsed:.0f}s: network retries?"
    out = exp / "latents_videos"
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["successful_steps"] == 2 and summary["failed_steps"] == 0
    assert summary["model"]["model"] == WAN_REPO_ID
    assert Path(summary["model"]["model_folder"]).resolve().is_relative_to(hf_home.resolve())
    assert_same_frames(png_frames(out / "prompt_000" / "vid_001" / "step_001"), refs[0])


# --------------------------------------------------------------------------- --model


def test_model_flag_overrides_the_config(make_experiment, bare_vae_dir, latent, refs):
    exp = make_experiment(prompts=1, steps=2, **SMALL)  # the config names tiny_model_dir (seed 0)
    store(exp, latent)
    result = _decode(str(exp), "--format", "png", "--model", str(bare_vae_dir), "--step-filter", "step_001")
    assert result.exit_code == 0, result.stderr
    out = exp / "latents_videos"
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["settings"]["model"] == str(bare_vae_dir)
    assert_same_frames(png_frames(out / "prompt_000" / "vid_001" / "step_001"), refs[1])


def test_model_flag_repo_id_when_config_model_is_missing(make_experiment, hf_home):
    exp = make_experiment(prompts=1, steps=1, **SMALL)
    write_config(exp, "/nonexistent/models/wan", WIDTH, HEIGHT, FRAMES, 8.0)
    result = _decode(str(exp), "--model", WAN_REPO_ID)
    assert result.exit_code == 0, result.stderr
    assert (exp / "latents_videos" / "prompt_000" / "vid_001" / "step_000.mp4").stat().st_size > 0


# --------------------------------------------------------------------------- not found


def test_repo_id_not_in_cache_fails_with_one_error_line(make_experiment, tmp_path, monkeypatch):
    missing = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    exp = make_experiment(prompts=1, steps=1, **SMALL)
    write_config(exp, missing, WIDTH, HEIGHT, FRAMES, 8.0)
    hf_home = tmp_path / "empty_hf_home"
    (hf_home / "hub").mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}

    start = time.monotonic()
    proc = run_cli("decode", str(exp), "--device", "cpu", env=env, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 60, f"took {elapsed:.0f}s: network retries?"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert missing in errors[0]
    assert str(hf_home / "hub") in errors[0]
    assert "Traceback" not in proc.stderr
    assert not list(exp.rglob("*.mp4"))

    verbose = run_cli("decode", str(exp), "--device", "cpu", "--verbose", env=env, timeout=120)
    assert verbose.returncode == 2
    assert "Traceback" in verbose.stderr
    assert any(line.startswith("error:") and missing in line for line in verbose.stderr.splitlines())


@pytest.mark.parametrize("source, words", [
    ("no-such-model", "not an ORG/NAME repo id"),
    ("Org/NoSuchRepo", "HF_HUB_OFFLINE"),
])
def test_resolve_model_not_found_messages(tmp_path, monkeypatch, source, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(source)
    message = str(info.value)
    assert source in message and words in message and "not found" in message
    assert str(tmp_path / source) in message  # the local folder looked at
    if "/" in source:
        assert str(tmp_path / "hf" / "hub") in message


# --------------------------------------------------------------------------- unsupported class


def _with_class_name(src: Path, dst: Path, class_name: str) -> Path:
    (dst / "vae").mkdir(parents=True)
    for f in src.iterdir():
        (dst / "vae" / f.name).write_bytes(f.read_bytes())
    config = json.loads((dst / "vae" / "config.json").read_text())
    config["_class_name"] = class_name
    (dst / "vae" / "config.json").write_text(json.dumps(config))
    return dst


def test_unsupported_vae_class_is_a_setup_error(make_experiment, tmp_path, bare_vae_dir):
    model = _with_class_name(bare_vae_dir, tmp_path / "dc", "AutoencoderDC")  # an image VAE: no video rule
    exp = make_experiment(prompts=1, steps=1, **SMALL)
    result = _decode(str(exp), "--model", str(model))
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "AutoencoderDC" in errors[0] and "not supported" in errors[0]
    assert "AutoencoderKLWan" in errors[0]  # says what is supported
    assert "Traceback" not in result.stderr
    assert not list(exp.rglob("*.mp4"))


def test_unknown_vae_class_through_the_worker(tmp_path, bare_vae_dir):
    model = _with_class_name(bare_vae_dir, tmp_path / "fancy", "MyFancyVideoVAE")
    assert resolve_model(str(model)).class_name == "MyFancyVideoVAE"
    with pytest.raises(UnsupportedModelError, match="MyFancyVideoVAE"):
        DecodeWorker(OutputSettings(model=str(model)), device="cpu")


WEIGHTS = "diffusion_pytorch_model.safetensors"


def _edit_config(vae_dir: Path, **values) -> None:
    config = json.loads((vae_dir / "config.json").read_text())
    (vae_dir / "config.json").write_text(json.dumps({**config, **values}))


BROKEN_MODEL_FILES = {  # how a model's vae/ folder is broken -> (the break, the file the error line names)
    "truncated weights": (lambda vae: (vae / WEIGHTS).write_bytes((vae / WEIGHTS).read_bytes()[:1000]), WEIGHTS),
    "no weights": (lambda vae: (vae / WEIGHTS).unlink(), WEIGHTS),
    "config not JSON": (lambda vae: (vae / "config.json").write_text("{not json"), "config.json"),
    "config value of the wrong type": (lambda vae: _edit_config(vae, z_dim="sixteen"), "config.json"),
    "no config": (lambda vae: (vae / "config.json").unlink(), "config.json"),
}


@pytest.mark.parametrize("case", list(BROKEN_MODEL_FILES))
def test_a_broken_model_file_is_one_line_naming_it(make_experiment, tiny_model_dir, tmp_path, case):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    breaks, named = BROKEN_MODEL_FILES[case]
    breaks(model / "vae")
    exp = make_experiment(prompts=1, steps=1, **SMALL)
    result = _decode(str(exp), "--model", str(model))
    assert result.exit_code == 2, (result.exception, result.stderr)
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert named in error and str(model) in error
    assert "Traceback" not in result.stderr
    assert not list(exp.rglob("*.mp4"))


# --------------------------------------------------------------------------- channel mismatch


def _channel_numbers(message: str, path: Path) -> set[str]:
    return set(re.findall(r"\d+", message.replace(str(path), "")))


def test_latent_with_wrong_channel_count_fails_its_item(make_experiment):
    exp = make_experiment(prompts=1, steps=2, **SMALL)
    bad = exp / "latents" / "prompt_000" / "vid_002" / "step_000.npy.gz"
    save_npy_gz(bad, np.zeros((1, 48, *LATENT_SHAPE[2:]), np.float16))  # a Wan2.2-style 48-channel latent
    result = _decode(str(exp))
    assert result.exit_code == 1, result.stderr
    out = exp / "latents_videos"
    summary = json.loads((out / "decode_summary.json").read_text())
    assert (summary["total_steps"], summary["successful_steps"], summary["failed_steps"]) == (3, 2, 1)
    [failure] = summary["failures"]
    assert failure["item"] == "prompt_000/vid_002/step_000"
    assert {"48", "16"} <= _channel_numbers(failure["error"], bad)
    assert "channels" in failure["error"]
    assert "prompt_000/vid_002/step_000" in result.stderr
    assert not (out / "prompt_000" / "vid_002" / "step_000.mp4").exists()
    assert (out / "prompt_000" / "vid_001" / "step_001.mp4").stat().st_size > 0


def test_worker_rejects_wrong_channels_before_decoding(tiny_model_dir):
    worker = DecodeWorker(OutputSettings(model=str(tiny_model_dir)), device="cpu")
    try:
        with pytest.raises(LatentShapeError) as info:
            worker.decode(np.zeros((1, 48, *LATENT_SHAPE[2:]), np.float32), source="x.npy")
    finally:
        worker.close()
    assert {"48", "16"} <= _channel_numbers(str(info.value), Path("x.npy"))


# --------------------------------------------------------------------------- --vae-subfolder


@pytest.fixture(scope="module")
def two_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding two VAEs: ``vae/`` (seed 0) and ``vae_alt/`` (seed 1)."""
    root = tmp_path_factory.mktemp("two_vaes")
    build_tiny_wan_vae(seed=0).save_pretrained(root / "vae")
    build_tiny_wan_vae(seed=1).save_pretrained(root / "vae_alt")
    return root


def test_vae_subfolder_flag_picks_that_vae(make_experiment, two_vae_dir, latent, refs):
    assert resolve_model(str(two_vae_dir), "vae_alt").folder == two_vae_dir / "vae_alt"
    exp = make_experiment(prompts=1, steps=2, **SMALL)
    store(exp, latent)
    result = _decode(str(exp), "--format", "png", "--model", str(two_vae_dir), "--vae-subfolder", "vae_alt",
                     "--step-filter", "step_001")
    assert result.exit_code == 0, result.stderr
    out = exp / "latents_videos"
    assert_same_frames(png_frames(out / "prompt_000" / "vid_001" / "step_001"), refs[1])
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["settings"]["vae_subfolder"] == "vae_alt"
    assert Path(summary["model"]["model_folder"]) == two_vae_dir / "vae_alt"

    # Another subfolder is another VAE: the step is decoded again, with vae/ (seed 0) this time.
    result = _decode(str(exp), "--format", "png", "--model", str(two_vae_dir), "--step-filter", "step_001")
    assert result.exit_code == 0 and "1 ok" in result.stderr, result.stderr
    assert_same_frames(png_frames(out / "prompt_000" / "vid_001" / "step_001"), refs[0])


def test_vae_subfolder_of_a_cached_repo_id(two_vae_dir, tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    snapshot = save_to_hf_cache(two_vae_dir, home, repo_id="Some-Org/Two-VAEs")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    resolved = resolve_model("Some-Org/Two-VAEs", "vae_alt")
    assert resolved.origin == "HF cache"
    assert resolved.folder.resolve() == (snapshot / "vae_alt").resolve()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("Some-Org/Two-VAEs", "vae_2_2")
    message = str(info.value)
    assert "Some-Org/Two-VAEs" in message and "vae_2_2/config.json" in message and str(home / "hub") in message


def test_missing_vae_subfolder_of_a_local_folder_names_it(two_vae_dir):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(two_vae_dir), "transformer")
    assert str(two_vae_dir) in str(info.value) and "no transformer/config.json" in str(info.value)


# --------------------------------------------------------------------------- single .safetensors file


def test_single_safetensors_file_with_its_config(make_experiment, tiny_model_dir, bare_vae_dir, latent, refs,
                                                 tmp_path):
    single = tmp_path / "wan_2.1_vae.safetensors"
    shutil.copy(bare_vae_dir / "diffusion_pytorch_model.safetensors", single)  # seed 1 weights
    resolved = resolve_model(str(single), config=str(tiny_model_dir))  # seed 0's config: same architecture
    assert (resolved.origin, resolved.weights_file, resolved.folder) == ("single file", single, tiny_model_dir / "vae")
    assert resolved.class_name == "AutoencoderKLWan"
    exp = make_experiment(prompts=1, steps=2, **SMALL)
    store(exp, latent)
    result = _decode(str(exp), "--format", "png", "--model", str(single), "--vae-config", str(tiny_model_dir),
                     "--step-filter", "step_001")
    assert result.exit_code == 0, result.stderr
    assert_same_frames(png_frames(exp / "latents_videos" / "prompt_000" / "vid_001" / "step_001"), refs[1])


def test_single_file_errors_are_one_line(tmp_path, bare_vae_dir, make_experiment):
    single = tmp_path / "vae.safetensors"
    shutil.copy(bare_vae_dir / "diffusion_pytorch_model.safetensors", single)
    with pytest.raises(ModelNotFoundError, match="--vae-config"):
        resolve_model(str(single))
    (tmp_path / "vae.bin").write_bytes(b"weights")
    with pytest.raises(ModelNotFoundError, match="not a .safetensors"):
        resolve_model(str(tmp_path / "vae.bin"), config=str(bare_vae_dir))
    hunyuan = _with_class_name(bare_vae_dir, tmp_path / "hunyuan", "AutoencoderKLHunyuanVideo")
    with pytest.raises(UnsupportedModelError, match="cannot load AutoencoderKLHunyuanVideo from a single file"):
        resolve_model(str(single), config=str(hunyuan))
    exp = make_experiment(prompts=1, steps=1, **SMALL)
    result = _decode(str(exp), "--model", str(single))
    assert result.exit_code == 2
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert str(single) in error and "--vae-config" in error
