"""The x0 view on a real tiny WanPipeline: the x0 recovered from consecutive stored steps matches the
model's own x0 captured inside the denoising loop (exact for FlowMatchEulerDiscreteScheduler), is
finite and labelled approximate for UniPC, and sigma comes from the metadata or the scheduler."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latent_decoder import decode_latent
from latent_decoder.cli import cli
from latent_decoder.synthetic import build_tiny_wan_vae, write_config
from latent_decoder.x0 import recover_x0

from conftest import journal_records, tiny_wan_transformer

HEIGHT, WIDTH, FRAMES, STEPS = 32, 32, 9, 4
MATCH_DB = 40.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_pipeline(root: Path, scheduler) -> SimpleNamespace:
    """Run a tiny WanPipeline, storing x_t after every step as a generator does, and capturing the
    model's own x0 (sample - sigma * velocity) inside each scheduler step."""
    import torch
    from diffusers import WanPipeline

    vae = build_tiny_wan_vae(seed=3, latents_mean=[0.3] * 16, latents_std=[2.0] * 16)
    transformer = tiny_wan_transformer(seed=0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    stored, timesteps, model_x0, first_sample = [], [], [], []
    real_step = pipe.scheduler.step

    def step(model_output, timestep, sample, *args, **kwargs):
        if not first_sample:
            first_sample.append(sample.detach().float().numpy().copy())
        sigma = float(timestep) / 1000.0
        model_x0.append((sample.float() - sigma * model_output.float()).detach().numpy())
        return real_step(model_output, timestep, sample, *args, **kwargs)

    pipe.scheduler.step = step

    def on_step_end(_pipe, i, t, kwargs):
        stored.append(kwargs["latents"].detach().float().numpy())
        timesteps.append(float(t))
        return {}

    gen = torch.Generator().manual_seed(0)
    embeds, negative = torch.randn(1, 8, 32, generator=gen), torch.randn(1, 8, 32, generator=gen)
    with torch.inference_mode():
        pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
             num_inference_steps=STEPS, guidance_scale=1.0, callback_on_step_end=on_step_end, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    model_dir = root / "model"
    vae.save_pretrained(model_dir / "vae")
    pipe.scheduler.save_pretrained(model_dir / "scheduler")
    exp = root / "exp"
    write_config(exp, str(model_dir), WIDTH, HEIGHT, FRAMES, 8.0)
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    video_dir.mkdir(parents=True)
    for i, (latent, t) in enumerate(zip(stored, timesteps)):
        np.save(video_dir / f"step_{i:03d}.npy", latent)
        (video_dir / f"step_{i:03d}_metadata.json").write_text(json.dumps(
            {"video_id": "vid_001", "step": i, "timestep": t, "total_steps": STEPS, "prompt": "x0 test"}))
    return SimpleNamespace(exp=exp, model_dir=model_dir, video_dir=video_dir, stored=stored, timesteps=timesteps,
                           model_x0=model_x0, noise=first_sample[0])


@pytest.fixture(scope="module")
def euler(tmp_path_factory):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return run_pipeline(tmp_path_factory.mktemp("euler"), FlowMatchEulerDiscreteScheduler(shift=5.0))


def decode(*args: str):
    return CliRunner().invoke(cli, ["decode", *args, "--device", "cpu"], catch_exceptions=False)


def png_frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


def test_recovered_x0_matches_the_models_own_x0(euler, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(euler.exp, exp)
    # In latent space: exact up to float32 rounding.
    sigmas = [t / 1000 for t in euler.timesteps] + [0.0]
    for i in range(1, STEPS):
        x0 = recover_x0(euler.stored[i - 1], euler.stored[i], sigmas[i], sigmas[i + 1])
        assert np.abs(x0 - euler.model_x0[i]).max() < 1e-3 * max(1.0, np.abs(euler.model_x0[i]).max())

    result = decode(str(exp), "--view", "x0", "--format", "png")
    assert result.exit_code == 0, result.output
    assert "not available: prompt_000/vid_001/step_000" in result.output and "no initial noise" in result.output
    out = exp / "latents_videos_x0"
    assert sorted(journal_records(out)) == [f"prompt_000/vid_001/step_{i:03d}" for i in range(1, STEPS)]
    for i in range(1, STEPS):
        mine = png_frames(out / "prompt_000" / "vid_001" / f"step_{i:03d}")
        model = decode_latent(euler.model_x0[i], model=str(euler.model_dir), device="cpu")
        assert psnr(mine, model) >= MATCH_DB, i
        xt = decode_latent(euler.stored[i], model=str(euler.model_dir), device="cpu")
        if i < STEPS - 1:  # before the last step x0 and x_t differ: the test would catch a plain x_t decode
            assert psnr(mine, xt) < psnr(mine, model) - 5
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["view"] == "x0" and summary["x0"].startswith("exact")
    assert summary["unavailable"] and "step_000" in summary["unavailable"][0]
    assert not (exp / "latents_videos").exists(), "the x0 view has its own tree"

    # The initial noise stored beside the steps gives step 0 its x0 too.
    np.save(exp / "latents" / "prompt_000" / "vid_001" / "noise.npy", euler.noise)
    result = decode(str(exp), "--view", "x0", "--format", "png")
    assert result.exit_code == 0 and "1 ok, 0 failed, 3 already done" in result.output, result.output
    first = png_frames(out / "prompt_000" / "vid_001" / "step_000")
    assert psnr(first, decode_latent(euler.model_x0[0], model=str(euler.model_dir), device="cpu")) >= MATCH_DB


def test_step_filter_reads_the_previous_step_and_both_views(euler, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(euler.exp, exp)
    assert decode(str(exp), "--view", "x0", "--format", "png", "--step-filter", "2").exit_code == 0
    out = exp / "latents_videos_x0"
    assert sorted(journal_records(out)) == ["prompt_000/vid_001/step_002"]
    mine = png_frames(out / "prompt_000" / "vid_001" / "step_002")
    assert psnr(mine, decode_latent(euler.model_x0[2], model=str(euler.model_dir), device="cpu")) >= MATCH_DB

    result = decode(str(exp), "--view", "both", "--output-dir", str(tmp_path / "videos"))
    assert result.exit_code == 0, result.output
    assert len(journal_records(tmp_path / "videos")) == STEPS
    assert len(journal_records(tmp_path / "videos_x0")) == STEPS - 1
    # The gallery's video page shows x_t and x0 side by side, both sheets on disk.
    page = (tmp_path / "videos" / "prompt_000" / "vid_001" / "index.html").read_text()
    assert "x_t and x0 side by side" in page
    assert "../../../videos_x0/prompt_000/vid_001/progression.png" in page
    assert (tmp_path / "videos_x0" / "prompt_000" / "vid_001" / "progression.png").is_file()
    inspected = CliRunner().invoke(cli, ["inspect", str(exp)])
    assert "x0 view     available for 3 of 4 steps; sigma from step metadata" in inspected.output, inspected.output
    assert "exact" in inspected.output


def test_sigma_from_the_scheduler_when_metadata_lacks_it(euler, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(euler.exp, exp)
    for meta in (exp / "latents").rglob("*_metadata.json"):
        data = json.loads(meta.read_text())
        del data["timestep"]
        meta.write_text(json.dumps(data))
    result = decode(str(exp), "--view", "x0", "--format", "png")
    assert result.exit_code == 0, result.output
    out = exp / "latents_videos_x0"
    summary = json.loads((out / "decode_summary.json").read_text())
    assert "scheduler_config.json" in summary["x0"] and "FlowMatchEulerDiscreteScheduler" in summary["x0"]
    mine = png_frames(out / "prompt_000" / "vid_001" / "step_002")
    assert psnr(mine, decode_latent(euler.model_x0[2], model=str(euler.model_dir), device="cpu")) >= MATCH_DB

    # Neither metadata nor a scheduler config: one line naming what is missing.
    shutil.rmtree(euler.model_dir.parent / "nowhere", ignore_errors=True)
    bare = tmp_path / "bare_model"
    shutil.copytree(euler.model_dir / "vae", bare / "vae")
    config = exp / "configs" / "generation_config.yaml"
    config.write_text(config.read_text().replace(str(euler.model_dir), str(bare)))
    result = decode(str(exp), "--view", "x0", "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 2
    [line] = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert "no timestep" in line and "scheduler_config.json" in line


def test_unipc_gives_a_finite_x0_labelled_approximate(tmp_path):
    from diffusers import UniPCMultistepScheduler

    run = run_pipeline(tmp_path, UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                         flow_shift=3.0))
    result = decode(str(run.exp), "--view", "x0", "--format", "png")
    assert result.exit_code == 0, result.output
    out = run.exp / "latents_videos_x0"
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["x0"].startswith("approximate") and "UniPCMultistepScheduler" in summary["x0"]
    assert summary["successful_steps"] == STEPS - 1
    for rec in journal_records(out).values():
        assert rec["status"] == "ok"


def test_a_scheduler_that_is_not_flow_matching_is_refused(euler, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(euler.model_dir, model)
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "CogVideoXDDIMScheduler", "prediction_type": "v_prediction"}))
    exp = tmp_path / "exp"
    shutil.copytree(euler.exp, exp)
    result = decode(str(exp), "--view", "x0", "--model", str(model))
    assert result.exit_code == 2
    [line] = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert "flow-matching" in line and "CogVideoXDDIMScheduler" in line


def test_x0_through_the_preview_decoder(euler, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(euler.exp, exp)
    result = decode(str(exp), "--view", "x0", "--decoder", "preview", "--format", "png")
    assert result.exit_code == 0, result.output
    out = exp / "latents_previews_x0"
    assert sorted(journal_records(out)) == [f"prompt_000/vid_001/step_{i:03d}" for i in range(1, STEPS)]
    # The preview of x0 is the preview of the recovered latent, not of the stored x_t.
    xt = decode(str(exp), "--decoder", "preview", "--format", "png")
    assert xt.exit_code == 0
    a = png_frames(out / "prompt_000" / "vid_001" / "step_001")
    b = png_frames(exp / "latents_previews" / "prompt_000" / "vid_001" / "step_001")
    assert a.shape == b.shape and not np.array_equal(a, b)


def x0_attempts(out: Path) -> dict[str, int]:
    """Step name -> the journal attempt id of its latest success."""
    return {k.rsplit("/", 1)[1]: r["attempt"] for k, r in journal_records(out).items() if r["status"] == "ok"}


def set_timestep(exp: Path, step: int, value) -> None:
    meta = exp / "latents" / "prompt_000" / "vid_001" / f"step_{step:03d}_metadata.json"
    data = json.loads(meta.read_text())
    data["timestep"] = value
    meta.write_text(json.dumps(data))


def test_a_changed_timestep_decodes_again_exactly_the_x0_steps_it_affects(euler, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(euler.exp, exp)
    out = exp / "latents_videos_x0"
    assert decode(str(exp), "--view", "x0").exit_code == 0
    before = x0_attempts(out)
    assert sorted(before) == ["step_001", "step_002", "step_003"]
    # Step 2's timestep is sigma_2 (step 2's x0) and sigma_{i+1} of step 1; step 3 does not read it.
    set_timestep(exp, 2, euler.timesteps[2] - 10.0)
    dry = CliRunner().invoke(cli, ["decode", str(exp), "--view", "x0", "--dry-run", "-v"])
    assert "step_001  decode again (changed input)" in dry.output, dry.output
    assert "step_002  decode again (changed input)" in dry.output, dry.output
    assert "step_003  done" in dry.output, dry.output
    result = decode(str(exp), "--view", "x0")
    assert result.exit_code == 0 and "2 ok, 0 failed, 1 already done" in result.output, result.output
    after = x0_attempts(out)
    assert after["step_003"] == before["step_003"]
    assert after["step_001"] != before["step_001"] and after["step_002"] != before["step_002"]
    # The same sigmas again: nothing to do, and the journal's fast path says so without a digest read.
    assert "3 already done" in decode(str(exp), "--view", "x0").output


def test_a_changed_scheduler_shift_decodes_every_x0_step_without_timesteps(euler, tmp_path):
    exp, model = tmp_path / "exp", tmp_path / "model"
    shutil.copytree(euler.exp, exp)
    shutil.copytree(euler.model_dir, model)
    config = exp / "configs" / "generation_config.yaml"
    config.write_text(config.read_text().replace(str(euler.model_dir), str(model)))
    for meta in (exp / "latents").rglob("*_metadata.json"):
        data = json.loads(meta.read_text())
        del data["timestep"]
        meta.write_text(json.dumps(data))
    out = exp / "latents_videos_x0"
    assert decode(str(exp), "--view", "x0").exit_code == 0
    before = x0_attempts(out)
    scheduler = model / "scheduler" / "scheduler_config.json"
    settings = json.loads(scheduler.read_text())
    assert settings["shift"] == 5.0
    scheduler.write_text(json.dumps({**settings, "shift": 3.0}))
    result = decode(str(exp), "--view", "x0")
    assert result.exit_code == 0 and "3 ok, 0 failed, 0 already done" in result.output, result.output
    assert all(x0_attempts(out)[s] != before[s] for s in before)


def test_a_journal_from_before_sigmas_were_stored_resumes_and_still_sees_a_changed_sigma(euler, tmp_path):
    """Attempts written before the journal stored params have none: their sigmas are checked once
    through the digest (which always covered them), then stored."""
    import sqlite3

    exp = tmp_path / "exp"
    shutil.copytree(euler.exp, exp)
    out = exp / "latents_videos_x0"
    assert decode(str(exp), "--view", "x0").exit_code == 0
    before = x0_attempts(out)
    with sqlite3.connect(out / ".latent-decoder.db") as conn:  # as written before the column existed
        if "params" in {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}:
            conn.execute("ALTER TABLE attempts DROP COLUMN params")
    status = CliRunner().invoke(cli, ["status", str(exp), "--output-dir", str(out)])
    assert status.exit_code == 0, status.output  # a reader of the older journal
    set_timestep(exp, 2, euler.timesteps[2] - 10.0)
    result = decode(str(exp), "--view", "x0")
    assert result.exit_code == 0 and "2 ok, 0 failed, 1 already done" in result.output, result.output
    assert x0_attempts(out)["step_003"] == before["step_003"]
    with sqlite3.connect(out / ".latent-decoder.db") as conn:
        params = [p for (p,) in conn.execute("SELECT a.params FROM items i JOIN attempts a ON a.id = i.last")]
    assert len(params) == 3 and all(p and p.startswith("x0 ") for p in params), params


def test_unusable_metadata_timesteps_are_no_timestep_with_one_warning(euler, tmp_path, caplog):
    """``tensor.tolist()`` stores ``[999.0]``: that is the timestep. ``null`` or ``"abc"`` are none: sigma
    then comes from the scheduler, with one warning line for all such steps, never a traceback."""
    import logging

    exp = tmp_path / "exp"
    shutil.copytree(euler.exp, exp)
    set_timestep(exp, 1, [euler.timesteps[1]])
    set_timestep(exp, 2, None)
    set_timestep(exp, 3, "abc")
    with caplog.at_level(logging.WARNING, logger="latent_decoder"):
        inspected = CliRunner().invoke(cli, ["inspect", str(exp)])
        assert inspected.exit_code == 0 and "Traceback" not in inspected.output, inspected.output
        assert "x0 view     available for 3 of 4 steps" in inspected.output, inspected.output
        result = decode(str(exp), "--view", "both", "--format", "png")
        assert result.exit_code == 0, result.output
    told = [r.getMessage() for r in caplog.records if "metadata timestep" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith("2 step(s)"), told  # inspect told it; the runs did not again
    summary = json.loads((exp / "latents_videos_x0" / "decode_summary.json").read_text())
    assert "step metadata" in summary["x0"] and "scheduler_config.json" in summary["x0"]
    for i in range(1, STEPS):
        mine = png_frames(exp / "latents_videos_x0" / "prompt_000" / "vid_001" / f"step_{i:03d}")
        assert psnr(mine, decode_latent(euler.model_x0[i], model=str(euler.model_dir), device="cpu")) >= MATCH_DB
    # The views take the one-element list as the step's timestep, and show the others without one.
    stats = json.loads((exp / "latents_videos" / "prompt_000" / "vid_001" / "latent_stats.json").read_text())
    timesteps = {row["step"]: row["timestep"] for row in stats["steps"]}
    assert timesteps["step_001"] == euler.timesteps[1] and timesteps["step_002"] is None
