"""``--decoder preview`` and ``calibrate-preview``: a video per step from a linear latent -> RGB map,
with no model weights, written like any decode (mp4, thumbnail, journal) into EXP/latents_previews.

References are computed here by hand (``x @ F + b`` per latent pixel of every frame, LTXPipeline's
own unpacking, the tiny VAEs' own decodes pooled onto the latent grid), never by the code under test.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.synthetic import clean_latent, save_npy_gz, write_config
from latent_decoder.previews.factors import PreviewMap, model_key, published_map, save_calibration
from latent_decoder.previews.projection import project
from latent_decoder.previews.setup import local_model
from latent_decoder.previews.worker import PreviewWorker
from latent_decoder.settings import OutputSettings
from latent_decoder.worker import DecodeWorker

from conftest import WAN_REPO_ID, journal_records


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Calibrations and the HF cache live in this test's folder (never ~/.cache); both start empty."""
    monkeypatch.setenv("LATENT_DECODER_PREVIEW_DIR", str(tmp_path / "preview-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "preview-cache"


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """The preview's colour mapping, written out: ``(rgb + 1) / 2`` clipped to [0, 1], to 0..255."""
    return np.round(np.clip((rgb + 1.0) / 2.0, 0.0, 1.0) * 255.0)


def by_hand(grid: np.ndarray, factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``[1, C, T, H, W]`` -> ``[T, H, W, 3]`` in float64, one latent pixel at a time, every frame."""
    x = np.asarray(grid[0], np.float64)
    c, t, h, w = x.shape
    out = np.zeros((t, h, w, 3))
    for ti in range(t):
        for yi in range(h):
            for xi in range(w):
                out[ti, yi, xi] = x[:, ti, yi, xi] @ factors.astype(np.float64) + bias.astype(np.float64)
    return out


def pool_by_hand(frames: np.ndarray, t: int, h: int, w: int, tf: int) -> np.ndarray:
    """A causal decode's frames averaged onto the latent grid: latent frame 0 <- frame 0, latent frame
    i <- frames (i-1)*tf+1 .. i*tf; each latent pixel <- its patch. In [-1, 1]."""
    f, height, width, _ = frames.shape
    assert f == (t - 1) * tf + 1
    x = frames.astype(np.float64).reshape(f, h, height // h, w, width // w, 3).mean(axis=(2, 4))
    groups = [x[:1]] + [x[(i - 1) * tf + 1:i * tf + 1] for i in range(1, t)]
    return np.stack([g.mean(axis=0) for g in groups]) / 127.5 - 1.0


def mp4_frames(path: Path) -> tuple[int, tuple[int, int]]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    return count, tuple(meta["size"])


# --------------------------------------------------------------------------- the projection


def test_projection_is_x_times_factors_plus_bias_on_every_latent_frame() -> None:
    rng = np.random.default_rng(0)
    latent = clean_latent(16, 5, 6, 7, phase=0.3).astype(np.float16)  # stored as experiments store it
    factors = rng.normal(0, 0.3, (16, 3)).astype(np.float32)
    bias = np.array([0.35, -0.25, 0.1], np.float32)
    preview = PreviewMap("test", factors, bias, "published", "test")

    got = project(latent, preview)
    expected = to_uint8(by_hand(latent, factors, bias))
    assert got.shape == (5, 6, 7, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 1
    # The frames really differ, so a first-frame-only preview (ComfyUI's) could not pass.
    for t in range(1, 5):
        assert np.abs(expected[t] - expected[0]).mean() > 5
    # The bias matters: without it the colours are far off.
    assert np.abs(to_uint8(by_hand(latent, factors, 0 * bias)) - expected).mean() > 10


def test_published_factors_ship_with_the_package_and_name_their_source() -> None:
    from latent_decoder.previews.factors import FACTORS_FILE, published_families

    data = json.loads(FACTORS_FILE.read_text())
    assert "ComfyUI" in data["_about"] and "latent_formats.py" in data["_about"]
    assert set(published_families()) == {"wan2.1", "wan2.2", "hunyuanvideo", "hunyuanvideo1.5", "mochi", "ltx-video",
                                         "cosmos1", "sd1.5", "sdxl", "svd", "i2vgen-xl", "text-to-video-zero",
                                         "text-to-video-zero-sdxl"}
    for name in published_families():
        entry, preview = data[data[name].get("same_as", name)], published_map(name)
        assert preview.factors.shape == (entry["channels"], 3) and preview.bias.shape == (3,)
    assert published_map("cogvideox") is None  # the wheel ships the file: tests/test_wheel.py


# --------------------------------------------------------------------------- frame count and size


def test_wan_preview_has_the_full_decodes_frames_and_size(tiny_model_dir: Path) -> None:
    output = OutputSettings(model=str(tiny_model_dir), frames=9, height=32, width=48)
    latent = clean_latent(16, 3, 4, 6, phase=1.0)
    full = DecodeWorker(output, device="cpu").decode(latent)
    preview = PreviewWorker(output)
    frames = preview.decode(latent)
    assert frames.shape == full.shape == (9, 32, 48, 3)  # 4 * (3 - 1) + 1 frames, 8x spatial

    small = to_uint8(by_hand(latent, published_map("wan2.1").factors, published_map("wan2.1").bias))
    # Causal expansion: latent frame 0 once, then each latent frame for 4 frames; 8x8 blocks.
    sources = [0, 1, 1, 1, 1, 2, 2, 2, 2]
    for f, t in enumerate(sources):
        blocks = frames[f].reshape(4, 8, 6, 8, 3)
        assert (blocks == blocks[:, :1, :, :1]).all()
        assert np.abs(blocks[:, 0, :, 0].astype(int) - small[t]).max() <= 1, f"frame {f} is not latent frame {t}"
    assert preview.describe()["family"] == "wan2.1" and preview.describe()["factors"] == "published"

    half = PreviewWorker(OutputSettings(model=str(tiny_model_dir), frames=9, height=32, width=48, scale=0.5))
    assert half.decode(latent).shape == (9, 16, 24, 3)


def test_wan22_48_channel_latents_preview_at_16x(tmp_path: Path) -> None:
    from latent_decoder.synthetic import build_tiny_wan_vae

    build_tiny_wan_vae(seed=22, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                       scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
                       ).save_pretrained(tmp_path / "wan22" / "vae")
    output = OutputSettings(model=str(tmp_path / "wan22"), frames=9, height=64, width=96)
    latent = clean_latent(48, 3, 4, 6, phase=0.1)  # patchified: one latent pixel per 16x16 pixels
    preview = PreviewWorker(output)
    assert preview.describe()["family"] == "wan2.2"
    assert preview.decode(latent).shape == DecodeWorker(output, device="cpu").decode(latent).shape == (9, 64, 96, 3)
    wan22 = published_map("wan2.2")
    small, _ = preview.project(latent)
    assert np.abs(small.astype(int) - to_uint8(by_hand(latent, wan22.factors, wan22.bias))).max() <= 1


def _tiny_ltx(root: Path) -> Path:
    import torch
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(5)
    AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False, scaling_factor=0.9,
    ).eval().save_pretrained(root / "vae")
    return root


def test_packed_ltx_preview_is_unpacked_like_the_pipeline_and_sized_like_its_decode(tmp_path: Path) -> None:
    import torch
    from diffusers import LTXPipeline

    model = _tiny_ltx(tmp_path / "ltx")
    output = OutputSettings(model=str(model), frames=9, height=16, width=24)  # 4x/4x: a 3x4x6 grid
    rng = np.random.default_rng(1)
    factors, bias = rng.normal(0, 0.4, (8, 3)), np.array([0.2, -0.1, 0.3])
    save_calibration(model_key(str(model), local_model(str(model), None, None)),
                     {"family": "ltx-video", "vae_class": "AutoencoderKLLTXVideo", "factors": factors.tolist(),
                      "bias": bias.tolist()})
    packed = rng.normal(0, 1, (1, 72, 8)).astype(np.float32)

    preview = PreviewWorker(output)
    small, _ = preview.project(packed)
    grid = LTXPipeline._unpack_latents(torch.from_numpy(packed), 3, 4, 6, 1, 1).numpy()
    assert np.abs(small.astype(int) - to_uint8(by_hand(grid, factors, bias))).max() <= 1
    assert preview.decode(packed).shape == DecodeWorker(output, device="cpu").decode(packed).shape == (9, 16, 24, 3)

    # Without any config on this machine: the model id, 128 channels, LTX-Video's own 8x/32x.
    output = OutputSettings(model="Lightricks/LTX-Video", frames=17, height=64, width=96)  # 3x2x3 tokens
    packed = rng.normal(0, 1, (1, 18, 128)).astype(np.float16)
    preview = PreviewWorker(output)
    frames = preview.decode(packed)
    assert frames.shape == (17, 64, 96, 3)
    ltx = published_map("ltx-video")
    expected = to_uint8(by_hand(packed.reshape(1, 3, 2, 3, 128).transpose(0, 4, 1, 2, 3), ltx.factors, ltx.bias))
    assert np.abs(frames[[0, 1, 9]][:, ::32, ::32].astype(int) - expected).max() <= 1
    assert preview.describe()["family"] == "ltx-video"


# --------------------------------------------------------------------------- decode --decoder preview


def test_decode_preview_needs_no_weights_and_writes_like_a_decode(tiny_model_dir: Path, make_experiment,
                                                                  tmp_path: Path) -> None:
    model = tmp_path / "config_only"
    shutil.copytree(tiny_model_dir, model)
    weights = list((model / "vae").glob("*.safetensors"))
    assert weights
    for path in weights:
        path.unlink()
    exp = make_experiment(model_dir=model, prompts=2, steps=2, frames=9)

    result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--device", "cuda:7"],
                                catch_exceptions=False)  # the device is irrelevant
    assert result.exit_code == 0, result.output
    out = exp / "latents_previews"
    assert not (exp / "latents_videos").exists()
    for prompt in ("prompt_000", "prompt_001"):
        for step in ("step_000", "step_001"):
            video = out / prompt / "vid_001" / f"{step}.mp4"
            assert mp4_frames(video) == (9, (48, 32))
            assert (out / prompt / "vid_001" / f"{step}.jpg").stat().st_size > 0
    records = journal_records(out)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records.values())
    settings = next(iter(records.values()))["settings"]
    assert settings["decoder"] == "preview" and settings["family"] == "wan2.1"
    assert settings["preview_factors"].startswith("published:")
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["successful_steps"] == 4
    assert summary["model"]["decoder"] == "preview" and summary["model"]["factors"] == "published"

    again = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])  # resumes: everything is done
    assert again.exit_code == 0 and "4 already done" in again.stderr, again.output


def test_a_model_id_that_is_not_cached_and_16_channels_means_wan21(make_experiment) -> None:
    exp = make_experiment(steps=1)
    write_config(exp, WAN_REPO_ID, 48, 32, 9, 8.0)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    model = json.loads((exp / "latents_previews" / "decode_summary.json").read_text())["model"]
    assert model["family"] == "wan2.1" and model["model_folder"] is None
    assert "defaults" in model["geometry"]
    assert mp4_frames(exp / "latents_previews" / "prompt_000" / "vid_001" / "step_000.mp4") == (9, (48, 32))


def test_an_unknown_model_with_16_channels_is_ambiguous(make_experiment) -> None:
    exp = make_experiment(steps=1)
    write_config(exp, "my-lab/secret-video-model", 48, 32, 9, 8.0)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in ("wan2.1", "hunyuanvideo", "cosmos1", "--family"):
        assert word in lines[0]
    assert not (exp / "latents_previews").exists()

    unknown = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--family", "flux"])
    assert unknown.exit_code == 2 and "unknown preview family" in unknown.output
    chosen = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--family", "hunyuanvideo"])
    assert chosen.exit_code == 0, chosen.output
    summary = json.loads((exp / "latents_previews" / "decode_summary.json").read_text())
    assert summary["model"]["family"] == "hunyuanvideo"


def test_vae_fingerprints_are_unchanged_and_previews_have_their_own() -> None:
    plain = OutputSettings(model="m")
    assert set(plain.fingerprint()) == {"model", "dtype", "fps", "format", "crf", "scale", "frames", "height", "width"}
    preview = OutputSettings(model="m", decoder="preview", family="wan2.1", preview_factors="published:abc")
    data = preview.fingerprint()
    assert data["decoder"] == "preview" and data["family"] == "wan2.1" and "dtype" not in data
    assert OutputSettings(model="m", decoder="preview", family="wan2.1",
                          preview_factors="calibrated:def").fingerprint() != data


# --------------------------------------------------------------------------- calibrate-preview


def test_calibrated_map_fits_the_vae_better_than_published_factors_and_is_used(tiny_model_dir: Path,
                                                                              make_experiment,
                                                                              isolated_caches: Path) -> None:
    exp = make_experiment(prompts=3, steps=2, height=64, width=96)
    first = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])
    assert first.exit_code == 0, first.output

    result = CliRunner().invoke(cli, ["calibrate-preview", str(exp), "--device", "cpu", "--steps", "3"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "R^2" in result.stdout and str(isolated_caches) in result.stdout
    [stored] = isolated_caches.glob("*.json")
    record = json.loads(stored.read_text())
    assert record["vae_class"] == "AutoencoderKLWan" and len(record["fit"]["steps"]) == 3
    calibrated = PreviewMap("wan2.1", np.asarray(record["factors"]), np.asarray(record["bias"]), "calibrated", "")

    # A latent the fit never saw: the VAE's own decode, pooled onto the latent grid by hand.
    latent = clean_latent(16, 3, 8, 12, phase=4.2) * 0.8
    full = DecodeWorker(OutputSettings(model=str(tiny_model_dir)), device="cpu").decode(latent)
    target = pool_by_hand(full, 3, 8, 12, 4)
    published = published_map("wan2.1")
    mse_cal = np.mean((by_hand(latent, calibrated.factors, calibrated.bias) - target) ** 2)
    mse_pub = np.mean((by_hand(latent, published.factors, published.bias) - target) ** 2)
    assert mse_cal < 0.5 * mse_pub, (mse_cal, mse_pub)
    assert record["fit"]["r2"] > record["fit"]["published_r2"]  # on the pixels it was fitted on, too

    # The preview now uses it, says so, and the earlier (published) previews are stale.
    dry = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--dry-run"])
    assert "6 decode again (settings changed)" in dry.output, dry.output
    second = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])
    assert second.exit_code == 0, second.output
    model = json.loads((exp / "latents_previews" / "decode_summary.json").read_text())["model"]
    assert model["factors"] == "calibrated" and "calibrated" in model["factors_source"]
    preview = PreviewWorker(OutputSettings(model=str(tiny_model_dir)))
    assert preview.describe()["factors"] == "calibrated"
    small, _ = preview.project(latent)
    assert np.abs(small.astype(int) - to_uint8(by_hand(latent, calibrated.factors, calibrated.bias))).max() <= 1


def test_calibration_recovers_a_linear_decoder(tiny_model_dir: Path, make_experiment) -> None:
    """Against a 'VAE' that is exactly linear per latent pixel (causal frames, 8x8 blocks, built here
    by hand), the fit must find its numbers: the pooling lines decoded frames up with latent frames."""
    from latent_decoder.experiment import Experiment
    from latent_decoder.previews.calibrate import calibrate_preview

    rng = np.random.default_rng(3)
    factors, bias = rng.normal(0, 0.08, (16, 3)), np.array([0.1, -0.05, 0.2])

    class LinearVAE(DecodeWorker):
        def decode(self, latent, source="<array>"):
            small = to_uint8(by_hand(latent, factors, bias)).astype(np.uint8)  # [T, h, w, 3]
            frames = [small[0]] + [small[t] for t in range(1, small.shape[0]) for _ in range(4)]
            return np.stack(frames).repeat(8, axis=1).repeat(8, axis=2)

    exp = make_experiment(prompts=2, steps=2, height=64, width=96)
    output = OutputSettings(model=str(tiny_model_dir), frames=9, height=64, width=96)
    result = calibrate_preview(Experiment.load(exp), output, steps=2,
                               worker=LinearVAE(OutputSettings(model=str(tiny_model_dir)), device="cpu"))
    assert result.r2 > 0.99 and result.samples == 2 * 3 * 8 * 12
    record = json.loads(result.path.read_text())
    assert np.abs(np.asarray(record["factors"]) - factors).max() < 0.02
    assert np.abs(np.asarray(record["bias"]) - bias).max() < 0.01


def _tiny_cogvideox(root: Path) -> Path:
    import torch
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(2)
    AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=2, temporal_compression_ratio=4, scaling_factor=0.7,
    ).eval().save_pretrained(root / "vae")
    return root


def test_cogvideox_has_no_published_factors_until_calibrated(tmp_path: Path) -> None:
    model = _tiny_cogvideox(tmp_path / "cogvideox")
    exp = tmp_path / "cog_exp"
    write_config(exp, str(model), 48, 32, 9, 8.0)
    for p in range(2):  # CogVideoX stores frames first: [1, T, C, H, W]
        latent = clean_latent(4, 3, 4, 6, phase=p).transpose(0, 2, 1, 3, 4).astype(np.float16)
        save_npy_gz(exp / "latents" / f"prompt_{p:03d}" / "vid_001" / "step_000.npy.gz", latent)
        (exp / "latents" / f"prompt_{p:03d}" / "vid_001" / "step_000_metadata.json").write_text(
            json.dumps({"step": 0, "total_steps": 1}))  # the last step: what calibrate-preview fits on

    before = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])
    assert before.exit_code == 2
    lines = before.stderr.strip().splitlines()
    assert len(lines) == 1 and "calibrate-preview" in lines[0] and "CogVideoX" in lines[0], before.stderr

    calibrated = CliRunner().invoke(cli, ["calibrate-preview", str(exp), "--device", "cpu"])
    assert calibrated.exit_code == 0, f"{calibrated.output}\n{calibrated.exception!r}"
    after = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])
    assert after.exit_code == 0, after.output
    full = DecodeWorker(OutputSettings(model=str(model), frames=9, height=32, width=48), device="cpu").decode(
        clean_latent(4, 3, 4, 6, phase=0).transpose(0, 2, 1, 3, 4))
    video = exp / "latents_previews" / "prompt_000" / "vid_001" / "step_000.mp4"
    assert mp4_frames(video) == (full.shape[0], (full.shape[2], full.shape[1]))
    model_info = json.loads((exp / "latents_previews" / "decode_summary.json").read_text())["model"]
    assert model_info["family"] == "cogvideox" and model_info["factors"] == "calibrated"


def _stop_at(video_dir: Path, last: int) -> None:
    """Leave the steps up to ``last`` (their metadata still says how many the generation had)."""
    for path in video_dir.glob("step_*"):
        if int(path.name[5:8]) > last:
            path.unlink()


def _calibrate(exp: Path, *args: str):
    return CliRunner().invoke(cli, ["calibrate-preview", str(exp), "--device", "cpu", *args])


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warning lines the command printed (in-process, logging goes to pytest's handler)."""
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    caplog.clear()
    return lines


def test_calibration_fits_only_final_steps_and_never_spoils_the_stored_map(make_experiment, isolated_caches: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Reproduced: on an experiment stopped at step 5 of 20, calibrate-preview called steps 0-5 "final
    steps", fitted their noisy decodes and overwrote the model's good map."""
    good = make_experiment("good", prompts=2, steps=2, height=64, width=96)
    assert _calibrate(good).exit_code == 0
    [stored] = isolated_caches.glob("*.json")
    before = stored.read_bytes()

    stopped = make_experiment("stopped", prompts=2, steps=20)
    for p in range(2):
        _stop_at(stopped / "latents" / f"prompt_{p:03d}" / "vid_001", 5)
    caplog.clear()
    refused = _calibrate(stopped, "--force")
    assert refused.exit_code == 2, refused.output
    assert _warnings(caplog) == ["warning: skipping 2 video(s) whose final step is not stored: "
                                 "prompt_000/vid_001 (last stored step 5 of 20), "
                                 "prompt_001/vid_001 (last stored step 5 of 20)"]
    [error] = refused.stderr.splitlines()
    assert error.startswith("error: no video under") and "has its final step stored" in error, refused.stderr
    assert stored.read_bytes() == before

    # A stopped video, and a finished one whose final step cannot be read, are skipped, each with one
    # line; the fit uses what is left.
    mixed = make_experiment("mixed", prompts=3, steps=20)
    _stop_at(mixed / "latents" / "prompt_001" / "vid_001", 5)
    broken = mixed / "latents" / "prompt_002" / "vid_001" / "step_019.npy.gz"
    broken.write_bytes(broken.read_bytes()[:40])
    fitted = _calibrate(mixed, "--force")
    assert fitted.exit_code == 0, fitted.output
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "prompt_001/vid_001 (last stored step 5 of 20)" in warnings[0]
    assert warnings[1].startswith(f"warning: skipping prompt_002/vid_001/step_019: {broken}")
    assert json.loads(stored.read_text())["fit"]["steps"] == ["prompt_000/vid_001/step_019"]


def test_a_stored_map_that_fits_better_is_kept_unless_forced(make_experiment, isolated_caches: Path) -> None:
    """A fit to a few small videos (48 latent pixels for 17 numbers per colour) predicts the other
    video worse than the map fitted before on many more pixels: the stored map stays (exit 1, one line
    saying so), and ``--force`` replaces it."""
    good = make_experiment("good", prompts=3, steps=2, height=64, width=96)
    assert _calibrate(good).exit_code == 0
    [stored] = isolated_caches.glob("*.json")
    before = stored.read_bytes()

    small = make_experiment("small", prompts=2, steps=2, frames=1)
    kept = _calibrate(small)
    assert kept.exit_code == 1, kept.output
    assert kept.stderr.splitlines()[-1].startswith(f"kept the stored map {stored}: ")
    assert kept.stderr.splitlines()[-1].endswith("--force replaces it")
    assert "the stored map: R^2" in kept.stdout
    assert stored.read_bytes() == before

    forced = _calibrate(small, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(stored.read_text())["fit"]["samples"] == 2 * 4 * 6


INTERRUPT_AT_TORCH_LOGGING = """
import importlib.abc, importlib.util, os, signal, sys

class CtrlCWhileTorchImports(importlib.abc.MetaPathFinder):
    '''Ctrl-C at the moment torch would set up its loggers, at the end of its import.'''

    def find_spec(self, name, path, target=None):
        if name != "torch._logging":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module._init_logs = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGINT)

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, CtrlCWhileTorchImports())
from latent_decoder.cli import main
sys.argv = ["latent-decoder", *sys.argv[1:]]
main()
"""


def test_ctrl_c_while_torch_imports_exits_130_with_one_line(make_experiment, isolated_caches: Path) -> None:
    """Reproduced: Ctrl-C exited 1 with click's "Aborted!", and a Ctrl-C during torch's import also
    printed torch's "FakeTensor cache stats" at exit. A real process and a real SIGINT, sent when
    torch's loggers are not yet set up."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    exp = make_experiment(prompts=1, steps=1)
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_AT_TORCH_LOGGING, "calibrate-preview", str(exp),
                           "--device", "cpu"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["interrupted"], proc.stderr
    assert not isolated_caches.exists() or not list(isolated_caches.iterdir())


def test_sigterm_during_calibration_exits_143_with_one_line(make_experiment, isolated_caches: Path,
                                                            tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT

    exp = make_experiment(prompts=3, steps=1, frames=17, height=128, width=192)
    err = tmp_path / "calibrate.err"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "latent_decoder", "calibrate-preview", str(exp), "--device",
                                 "cpu"], stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO_ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while "loaded" not in err.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    lines = err.read_text().splitlines()
    assert proc.returncode == 128 + signal.SIGTERM, lines
    assert lines[0].startswith("loaded ") and lines[-1] == "interrupted", lines
    assert not any("FakeTensor" in line or "Aborted" in line or "Traceback" in line for line in lines), lines
    assert not isolated_caches.exists() or not list(isolated_caches.iterdir())
