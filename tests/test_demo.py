"""The demo (`latent-decoder demo`): a trained tiny Wan VAE and stored steps on Wan's flow-matching
schedule, decoded through the real CLI and runner, must show the source clips emerging from noise; the
tiny decoder it distills must come within 24 dB of the full VAE on steps it never trained on."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_decoder.demo import (
    CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH, DEMO_MODEL_DIR, DEMO_PROMPTS, build_trained_demo, demo_clip, psnr,
    run_demo, to_uint8,
)
from latent_decoder.latents import load_latent

from conftest import DEMO_STEPS
from wheel_install import REPO_ROOT

STEPS = DEMO_STEPS  # demo_run (conftest): the demo run once from the installed wheel
CLIPS = len(DEMO_PROMPTS)


def frames(root: Path, clip: int, step: int, tree: str = "latents_videos") -> np.ndarray:
    """The decoded PNG frames of one step: uint8 ``[T, H, W, 3]``."""
    folder = root / tree / f"prompt_{clip:03d}" / "vid_001" / f"step_{step:03d}"
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("frame_*.png"))])


def stored(root: Path, clip: int, step: int) -> np.ndarray:
    return load_latent(root / "latents" / f"prompt_{clip:03d}" / "vid_001" / f"step_{step:03d}.npy.gz").astype(np.float64)


def test_demo_command_exits_0_and_prints_where_to_look(demo_run) -> None:
    root, result = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(root / "latents_videos") in result.stdout
    assert f"{STEPS} ok" in result.stderr or f"{CLIPS * STEPS} ok" in result.stderr
    assert (root / "model" / "vae" / "diffusion_pytorch_model.safetensors").is_file()


def test_last_step_decodes_to_the_source_clip(demo_run) -> None:
    root, _ = demo_run
    for c in range(CLIPS):
        decoded = frames(root, c, STEPS - 1)
        source = to_uint8(demo_clip(c))
        assert decoded.shape == (CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH, 3)
        assert psnr(decoded, source) >= 22.0, f"clip {c}: {psnr(decoded, source):.1f} dB"


def test_first_step_is_noise_and_the_clip_emerges(demo_run) -> None:
    """Step 0 shares almost nothing with the clip and churns from frame to frame; step by step the
    decode comes closer to the clip."""
    root, _ = demo_run
    for c in range(CLIPS):
        source = to_uint8(demo_clip(c)).astype(np.float64)
        decoded = [frames(root, c, i).astype(np.float64) for i in range(STEPS)]
        noisy, clean = decoded[0], decoded[-1]
        assert psnr(noisy, source) < 12.0, f"clip {c}: step 0 at {psnr(noisy, source):.1f} dB"
        likeness = [np.corrcoef(d.ravel(), source.ravel())[0, 1] for d in decoded]
        assert likeness[0] < 0.4 and likeness[-1] > 0.95, f"clip {c}: correlation with the clip {likeness}"
        assert all(b > a - 0.02 for a, b in zip(likeness, likeness[1:])), f"clip {c}: {likeness}"
        # the noise's blobs change more from frame to frame than the clip's moving shapes
        assert np.abs(np.diff(noisy, axis=0)).mean() > np.abs(np.diff(clean, axis=0)).mean(), f"clip {c}"
        assert noisy.std() > 30, f"clip {c}: step 0 is nearly flat (std {noisy.std():.1f})"


def test_metadata_is_what_a_wan_pipeline_callback_stores(demo_run) -> None:
    from diffusers import UniPCMultistepScheduler

    root, _ = demo_run
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    scheduler.set_timesteps(STEPS)
    for c in range(CLIPS):
        video = root / "latents" / f"prompt_{c:03d}" / "vid_001"
        metas = [json.loads((video / f"step_{i:03d}_metadata.json").read_text()) for i in range(STEPS)]
        timesteps = [m["timestep"] for m in metas]
        assert timesteps == scheduler.timesteps.tolist()
        assert all(a > b for a, b in zip(timesteps, timesteps[1:]))
        for i, m in enumerate(metas):
            assert m["step"] == i and m["total_steps"] == STEPS and m["video_id"] == "vid_001"
            assert m["prompt"] == DEMO_PROMPTS[c] and m["dtype"] == "float16"
            assert m["shape"] == [1, 16, (CLIP_FRAMES - 1) // 4 + 1, CLIP_HEIGHT // 8, CLIP_WIDTH // 8]
        assert sorted(p.name for p in video.glob("step_*.npy.gz")) == [f"step_{i:03d}.npy.gz" for i in range(STEPS)]


def test_stored_steps_follow_the_flow_matching_path(demo_run) -> None:
    """Step i holds x at sigma_{i+1}, so x0 recovered from two consecutive steps (DESIGN.md, "x0 from
    stored steps") is the last, clean step."""
    from latent_decoder.demo import wan_scheduler

    root, _ = demo_run
    sigmas = wan_scheduler(STEPS).sigmas.double().numpy()
    for c in range(CLIPS):
        video = root / "latents" / f"prompt_{c:03d}" / "vid_001"
        # the stored starting noise is x at sigma_0 = 1
        xs = [load_latent(video / "noise.npy.gz").astype(np.float64)] + [stored(root, c, i) for i in range(STEPS)]
        x0 = xs[-1]
        for i in range(STEPS - 1):
            s_a, s_b = sigmas[i], sigmas[i + 1]
            x0_hat = (s_b * xs[i] - s_a * xs[i + 1]) / (s_b - s_a)
            assert np.abs(x0_hat - x0).mean() < 0.05, f"clip {c} step {i}"


def test_clean_latents_are_normalised_like_a_real_model(demo_run) -> None:
    root, _ = demo_run
    clean = np.concatenate([stored(root, c, STEPS - 1) for c in range(CLIPS)])  # [clips, 16, T, H, W]
    per_channel = clean.transpose(1, 0, 2, 3, 4).reshape(16, -1)
    assert np.all((per_channel.std(1) > 0.5) & (per_channel.std(1) < 2.0)), per_channel.std(1)
    assert np.all(np.abs(per_channel.mean(1)) < 0.25), per_channel.mean(1)
    noise_level = stored(root, 0, 0)
    assert 0.7 < noise_level.std() < 1.3  # step 0 is almost pure unit noise


def test_shipped_weights_load_through_model_resolution(demo_run) -> None:
    import torch

    from latent_decoder.experiment import Experiment
    from latent_decoder.models import load_vae, resolve_model

    root, _ = demo_run
    packaged = resolve_model(str(DEMO_MODEL_DIR))
    assert packaged.class_name == "AutoencoderKLWan" and packaged.folder == DEMO_MODEL_DIR / "vae"
    model_id = Experiment.load(root).model_id
    assert Path(model_id) == root / "model"
    resolved = resolve_model(model_id)
    assert resolved.folder == root / "model" / "vae" and resolved.origin == "local folder"
    vae = load_vae(resolved, torch.device("cpu"), torch.float32)
    assert 400_000 < sum(p.numel() for p in vae.parameters()) < 600_000
    assert len(vae.config.latents_std) == 16 and min(vae.config.latents_std) > 0
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        assert (root / "model" / "vae" / name).read_bytes() == (DEMO_MODEL_DIR / "vae" / name).read_bytes()
    weights = DEMO_MODEL_DIR / "vae" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 5_000_000


@pytest.mark.parametrize("broken, named", [("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"),
                                           ("vae/config.json", "vae/config.json")])
def test_a_broken_demo_model_is_one_line_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str,
                                                         named: str) -> None:
    """An installation whose demo model lost a file (the wheel once shipped no vae/config.json) or holds
    truncated weights: `demo` says so in one line naming the file, and writes nothing."""
    from click.testing import CliRunner

    from latent_decoder import demo as demo_clips
    from latent_decoder.cli import cli

    model = tmp_path / "demo_model"
    shutil.copytree(DEMO_MODEL_DIR, model)
    if broken.endswith(".safetensors"):
        (model / broken).write_bytes((model / broken).read_bytes()[:1000])
    else:
        (model / broken).unlink()
    monkeypatch.setattr(demo_clips, "DEMO_MODEL_DIR", model)
    result = CliRunner().invoke(cli, ["demo", str(tmp_path / "d"), "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 2, (result.exception, result.stderr)
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert named in error and str(model) in error and "reinstall" in error
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_demo_again_resumes_and_refuses_other_folders(demo_run, tmp_path: Path) -> None:
    """Building again writes identical files, so a second run decodes nothing; a folder holding
    something else is never overwritten."""
    from latent_decoder.errors import SetupError
    from latent_decoder.settings import CliOptions

    root, _ = demo_run
    run = run_demo(root, steps=STEPS, opts=CliOptions(device="cpu", format="png", executor="inline"), progress=False)
    assert run.distilled is None  # the decoder distilled by the first run is kept
    for report in (run.report, run.tiny_report):
        assert report.exit_code == 0 and not report.records and report.skipped == CLIPS * STEPS
    other = tmp_path / "someone_elses"
    (other / "latents").mkdir(parents=True)
    with pytest.raises(SetupError, match="not a demo experiment"):
        run_demo(other, steps=2)
    assert build_trained_demo(tmp_path / "fewer", steps=2, clips=1) == tmp_path / "fewer"
    assert sorted(p.name for p in (tmp_path / "fewer" / "latents").iterdir()) == ["prompt_000"]


def test_the_demo_distills_a_tiny_decoder_of_24_db_and_shows_both_trees(demo_run) -> None:
    """The demo's distill (its own sample of the demo's steps, the demo VAE): at least 24 dB PSNR
    against the full VAE on held-out steps, which it never trained on; the tiny tree holds every step at
    the full VAE's frames and size, and its pages show both trees side by side."""
    root, result = demo_run
    card = json.loads((root / "tiny_decoder" / "card.json").read_text())
    assert card["held_out_psnr"] >= 24.0, card["held_out_psnr_per_step"]
    assert card["steps_held_out"] and not set(card["steps_trained"]) & set(card["steps_held_out"])
    assert card["family"] == "wan" and card["training_seconds"] <= 4 * 60 + 30
    per_step = []
    for c in range(CLIPS):
        for step in range(STEPS):
            full = frames(root, c, step)
            tiny = frames(root, c, step, tree="latents_tiny")
            assert tiny.shape == full.shape
            per_step.append(psnr(tiny, full))
    assert np.mean(per_step) >= 24.0, per_step
    page = (root / "latents_tiny" / "prompt_000" / "vid_001" / "index.html").read_text()
    assert "full VAE and tiny decoder side by side" in page
    assert f"PSNR {card['held_out_psnr']:.1f} dB" in (root / "latents_tiny" / "index.html").read_text()
    assert str(root / "latents_tiny" / "index.html") in result.stdout


def test_calibrated_preview_follows_the_full_decode(demo_run, tmp_path: Path, monkeypatch) -> None:
    """`calibrate-preview` on the demo, then `decode --decoder preview`: at each clip's last step the
    preview frames correlate with the full decode's at >= 0.9 (both on the latent grid a linear
    preview resolves: 8x8-pixel means)."""
    from click.testing import CliRunner

    from latent_decoder.cli import cli

    root, _ = demo_run
    monkeypatch.setenv("LATENT_DECODER_PREVIEW_DIR", str(tmp_path / "previews"))
    calibrated = CliRunner().invoke(cli, ["calibrate-preview", str(root), "--device", "cpu"], catch_exceptions=False)
    assert calibrated.exit_code == 0, calibrated.output[-3000:]
    previewed = CliRunner().invoke(cli, ["decode", str(root), "--decoder", "preview", "--format", "png", "--device",
                                         "cpu"], catch_exceptions=False)
    assert previewed.exit_code == 0, previewed.output[-3000:]

    def grid(video: np.ndarray) -> np.ndarray:
        t, h, w, _ = video.shape
        return video.reshape(t, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4))

    for c in range(CLIPS):
        full = frames(root, c, STEPS - 1).astype(np.float64)
        folder = root / "latents_previews" / f"prompt_{c:03d}" / "vid_001" / f"step_{STEPS - 1:03d}"
        preview = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("frame_*.png"))])
        assert preview.shape == full.shape
        corr = np.mean([np.corrcoef(grid(preview)[f].ravel(), grid(full)[f].ravel())[0, 1] for f in range(len(full))])
        assert corr >= 0.9, f"clip {c}: preview vs full decode correlation {corr:.3f}"


def test_demo_and_decode_run_from_the_installed_wheel(installed_wheel, demo_run, tmp_path: Path) -> None:
    """What a user does after ``pip install``: the demo (conftest's ``demo_run``), then a decode (the
    linear preview, which reads the shipped factors), from folders that are not the checkout."""
    found = installed_wheel.run("python", "-c", "import importlib.util as u; print(u.find_spec('latent_decoder').origin)",
                                cwd=tmp_path)  # where `import latent_decoder` takes it from, without importing torch
    assert Path(found.stdout.strip()).is_relative_to(installed_wheel.venv), found.stdout + found.stderr
    root, demo = demo_run
    assert not root.is_relative_to(REPO_ROOT)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (root / "model" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    out = tmp_path / "previews"
    preview = installed_wheel.run("latent-decoder", "decode", root, "--decoder", "preview", "--output-dir", out,
                                  "--device", "cpu", cwd=tmp_path,
                                  env={"LATENT_DECODER_PREVIEW_DIR": str(tmp_path / "preview_cache")})
    assert preview.returncode == 0, preview.stderr[-3000:]
    assert "wan2.1 latents, published:" in preview.stdout + preview.stderr
    assert len(list(out.rglob("step_*.mp4"))) == len(list((root / "latents").rglob("step_*.npy.gz")))
