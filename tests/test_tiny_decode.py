"""``--decoder tiny`` end to end on tiny experiments: a random TAEHV-family decoder saved as a real file
(published key layout), found by flag, folder setting, HF cache or as this experiment's distilled
decoder; frames equal to the independent reference decode of the stored latent (``taehv_reference``),
at the full VAE's frame count and size, in EXP/latents_tiny; resume, a new checkpoint re-decodes, Ray,
``--watch``, ``inspect`` and the gallery; bad setups refused in one line before anything is written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.experiment import Experiment
from latent_decoder.families import FAMILIES
from latent_decoder.families.base import DecodeContext
from latent_decoder.latents import load_latent
from latent_decoder.models import resolve_model
from latent_decoder.runner import run_decode
from latent_decoder.settings import CliOptions, WatchOptions, resolve_settings
from latent_decoder.tiny.checkpoint import save_checkpoint
from latent_decoder.tiny.distilled import DISTILLED_DIRNAME, WEIGHTS_FILE, vae_identity, write_card
from latent_decoder.tiny.setup import TINY_DIR_ENV, trim_for
from latent_decoder.views.gallery import decoder_label

from conftest import journal_records
from taehv_reference import random_state_dict, reference_decode, reference_uint8


pytestmark = pytest.mark.usefixtures("isolated_caches")  # conftest: the tiny decoder folder and HF cache start empty


def checkpoint(path: Path, seed: int = 0, channels: int = 16) -> Path:
    """A random taew2_1-shaped decoder (16 channels, 4x temporal, 8x spatial, small widths), as
    ``.safetensors`` or ``.pth`` by the name's suffix."""
    state = random_state_dict(latent_channels=channels, seed=seed)
    if path.suffix == ".pth":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    else:
        save_checkpoint(state, path)
    return path


def decode(*args: str) -> "CliRunner.Result":
    return CliRunner().invoke(cli, ["decode", *args, "--device", "cpu"], catch_exceptions=False)


def png_frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


def summary_model(out: Path) -> dict:
    return json.loads((out / "decode_summary.json").read_text())["model"]


def test_tiny_decode_gives_the_reference_frames_resumes_and_redoes_for_another_checkpoint(make_experiment,
                                                                                          tmp_path: Path) -> None:
    exp = make_experiment(prompts=1, steps=2, frames=9)
    weights = checkpoint(tmp_path / "taew2_1.safetensors")
    result = decode(str(exp), "--decoder", "tiny", "--tiny-weights", str(weights), "--format", "png")
    assert result.exit_code == 0, result.output
    out = exp / "latents_tiny"
    assert not (exp / "latents_videos").exists()
    state = random_state_dict(latent_channels=16, seed=0)
    for step in ("step_000", "step_001"):
        frames = png_frames(out / "prompt_000" / "vid_001" / step)
        assert frames.shape == (9, 32, 48, 3)  # the full VAE's 9 frames at 48x32
        latent = load_latent(exp / "latents" / "prompt_000" / "vid_001" / f"{step}.npy.gz")  # [1, C, T, H, W]
        expected = reference_uint8(reference_decode(state, torch.from_numpy(latent).float().permute(0, 2, 1, 3, 4)))
        diff = np.abs(frames.astype(np.int16) - expected.numpy().astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    records = journal_records(out)
    settings = next(iter(records.values()))["settings"]
    assert settings["decoder"] == "tiny" and settings["tiny_weights"].startswith("sha256:")
    assert "tiny_file" not in settings and settings["dtype"] == "float32"
    model = summary_model(out)
    assert model["decoder"] == "tiny" and model["tiny_name"] == "taew2_1.safetensors"
    assert model["tiny_from"] == "--tiny-weights" and model["family"] == "wan"
    assert "tiny decoder taew2_1.safetensors" in (out / "index.html").read_text()

    again = decode(str(exp), "--decoder", "tiny", "--tiny-weights", str(weights), "--format", "png")
    assert again.exit_code == 0 and "2 already done" in again.stderr, again.output
    other = checkpoint(tmp_path / "other" / "taew2_1.safetensors", seed=1)
    redo = decode(str(exp), "--decoder", "tiny", "--tiny-weights", str(other), "--format", "png")
    assert redo.exit_code == 0 and "decoded 2 item(s)" in redo.stderr and "0 already done" in redo.stderr


def test_found_in_the_folder_setting_then_the_hf_cache_never_downloaded(make_experiment, tmp_path: Path,
                                                                         isolated_caches: Path) -> None:
    exp = make_experiment(prompts=1, steps=1, frames=5)
    missing = decode(str(exp), "--decoder", "tiny")
    assert missing.exit_code == 2
    line = missing.output.strip().splitlines()[-1]
    for what in ("taew2_1.safetensors", str(isolated_caches), TINY_DIR_ENV, "HF cache",
                 "github.com/madebyollin/taehv", "--tiny-weights", str(exp / DISTILLED_DIRNAME)):
        assert what in line, what
    assert not (exp / "latents_tiny").exists()

    snapshot = tmp_path / "hf" / "hub" / "models--madebyollin--taehv" / "snapshots" / ("0" * 40)
    checkpoint(snapshot / "safetensors" / "taew2_1.safetensors", seed=2)
    cached = decode(str(exp), "--decoder", "tiny")
    assert cached.exit_code == 0, cached.output
    assert summary_model(exp / "latents_tiny")["tiny_from"] == "the HF cache (madebyollin/taehv)"

    checkpoint(isolated_caches / "taew2_1.pth", seed=3)  # the folder setting comes before the HF cache
    shutil.rmtree(exp / "latents_tiny")
    folder = decode(str(exp), "--decoder", "tiny")
    assert folder.exit_code == 0, folder.output
    assert summary_model(exp / "latents_tiny")["tiny_from"].startswith(f"the tiny decoder folder {isolated_caches}")

    inspected = CliRunner().invoke(cli, ["inspect", str(exp)])
    assert f"from the tiny decoder folder {isolated_caches}" in inspected.output
    assert "tiny        taew2_1.pth (16 latent channels, base" in inspected.output


def test_a_checkpoint_for_other_latents_is_one_line(make_experiment, tmp_path: Path) -> None:
    exp = make_experiment(prompts=1, steps=1, frames=5)
    wrong = tmp_path / "taew2_2.safetensors"
    save_checkpoint(random_state_dict(latent_channels=48, patch=2, seed=4), wrong)
    result = decode(str(exp), "--decoder", "tiny", "--tiny-weights", str(wrong))
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "48-channel" in line and "16 channels" in line and str(wrong) in line and "taew2_1" in line
    assert not (exp / "latents_tiny").exists()
    truncated = tmp_path / "taew2_1.safetensors"
    truncated.write_bytes(wrong.read_bytes()[:1000])
    result = decode(str(exp), "--decoder", "tiny", "--tiny-weights", str(truncated))
    assert result.exit_code == 2 and "truncated" in result.output.strip().splitlines()[-1]
    flag_alone = decode(str(exp), "--tiny-weights", str(wrong))
    assert flag_alone.exit_code == 2 and "--tiny-weights goes with --decoder tiny" in flag_alone.output


def test_a_distilled_decoder_is_found_first_and_refused_for_another_vae(make_experiment, tmp_path: Path,
                                                                         isolated_caches: Path) -> None:
    exp = make_experiment(prompts=1, steps=1, frames=5)
    checkpoint(isolated_caches / "taew2_1.safetensors", seed=5)
    folder = exp / DISTILLED_DIRNAME
    checkpoint(folder / WEIGHTS_FILE, seed=6)
    model = resolve_model(str(Experiment.load(exp).model_id))
    write_card(folder, {"vae": vae_identity(model), "family": "wan", "held_out_psnr": 26.5})
    out_elsewhere = tmp_path / "elsewhere"
    result = decode(str(exp), "--decoder", "tiny", "--output-dir", str(out_elsewhere))
    assert result.exit_code == 0, result.output
    described = summary_model(out_elsewhere)
    assert described["tiny_from"] == f"distilled for this experiment ({folder})"
    assert described["tiny_card"]["held_out_psnr"] == 26.5
    assert "held-out PSNR 26.5 dB" in CliRunner().invoke(cli, ["inspect", str(exp)]).output

    write_card(folder, {"vae": {**vae_identity(model), "weights_sha256": "f" * 64}, "family": "wan"})
    refused = decode(str(exp), "--decoder", "tiny", "--output-dir", str(tmp_path / "refused"))
    assert refused.exit_code == 2
    line = refused.output.strip().splitlines()[-1]
    assert "distilled from another VAE" in line and str(folder / "card.json") in line
    assert not (tmp_path / "refused").exists()


def test_ray_workers_build_the_tiny_decoder(shared_ray, make_experiment, tmp_path: Path) -> None:
    exp = make_experiment(prompts=2, steps=1, frames=5)
    weights = checkpoint(tmp_path / "taew2_1.safetensors", seed=7)
    settings = resolve_settings(Experiment.load(exp), CliOptions(executor="ray", workers=1, device="cpu",
                                                                 decoder="tiny", tiny_weights=str(weights)))
    report = run_decode(settings, progress=False)
    assert report.exit_code == 0 and report.succeeded == 2
    records = journal_records(exp / "latents_tiny")
    assert {r["worker"] for r in records.values()} == {"ray-0"}
    model = summary_model(exp / "latents_tiny")
    assert model["decoder"] == "tiny" and model["tiny_identity"] == settings.output.tiny_weights


def test_watch_decodes_with_the_tiny_decoder(make_experiment, tmp_path: Path) -> None:
    exp = make_experiment(prompts=1, steps=2, frames=5)
    weights = checkpoint(tmp_path / "taew2_1.safetensors", seed=8)
    settings = resolve_settings(Experiment.load(exp), CliOptions(executor="inline", device="cpu", decoder="tiny",
                                                                 tiny_weights=str(weights)))
    settings = type(settings)(**{**settings.__dict__, "watch": WatchOptions(idle_exit=0.5, poll=True)})
    report = run_decode(settings, progress=False)
    assert report.exit_code == 0 and report.succeeded == 2
    assert len(journal_records(exp / "latents_tiny")) == 2


def test_frames_kept_follow_the_family_rule() -> None:
    """The full VAE's frame count decides the trim: the published t_upscale - 1, none for an even
    CogVideoX latent (its VAE keeps them), four more for HunyuanVideo I2V's dropped frames."""
    vae = SimpleNamespace(config=SimpleNamespace(temporal_compression_ratio=4, scale_factor_temporal=4))
    ctx = DecodeContext(vae)
    assert trim_for(FAMILIES["wan"], ctx, 4, 4, None, "x") == 3
    assert trim_for(FAMILIES["cogvideox"], ctx, 4, 4, None, "x") == 0
    assert trim_for(FAMILIES["cogvideox"], ctx, 3, 4, None, "x") == 3
    assert trim_for(FAMILIES["wan"], ctx, 10, 4, 5, "x") == 3  # pieces: t_upscale - 1 at each
    assert FAMILIES["wan"].tiny_space(48, "Wan-AI/Wan2.2-TI2V-5B-Diffusers").files[0] == "taew2_2"
    assert FAMILIES["ltx2"].tiny_space(128, "Lightricks/LTX-2.3").files[0] == "taeltx2_3"
    assert FAMILIES["ltx2"].tiny_space(128, "Lightricks/LTX-2").files[0] == "taeltx_2"


def test_the_gallery_says_which_decoder_made_each_tree() -> None:
    assert decoder_label({"model": "m"}) == "full VAE"
    assert decoder_label({"decoder": "tiny", "tiny_name": "taew2_1.safetensors",
                          "tiny_from": "the HF cache (madebyollin/taehv)"}) == \
        "tiny decoder taew2_1.safetensors (the HF cache (madebyollin/taehv))"
    assert decoder_label({"decoder": "preview", "factors": "published"}).startswith("preview map")
