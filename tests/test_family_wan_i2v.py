"""Wan2.2 I2V with ``expand_timesteps``: the image's condition latent goes into the first latent frame.

``WanImageToVideoPipeline`` (``pipelines/wan/pipeline_wan_i2v.py``) with ``expand_timesteps`` blends
``(1 - first_frame_mask) * condition + first_frame_mask * latents`` after its loop, in float32, so the
latents ``callback_on_step_end`` sees lack the condition. A tiny pipeline runs on CPU (Wan2.2's 48-channel
VAE, a one-layer transformer, no image encoder); its condition is taken from ``prepare_latents``, since
``condition`` is not among its callback tensor inputs. Stored beside the steps as
``condition_latent.npy.gz`` (or ``.pt``) it makes the decode the pipeline's own; without it the
stored latent is decoded as it is, with one warning.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.synthetic import build_tiny_wan_vae, save_npy_gz, write_config
from latent_decoder.experiment import VideoSettings
from latent_decoder.families import PipelineFacts, detect
from latent_decoder.families import wan

from conftest import REPO_ROOT, journal_records
from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, capture, png_frames, postprocess, psnr, random_stats,
                            save_model, torch_dtype)

VIDEO = VideoSettings(width=64, height=32, fps=FPS, frames=9)
I2V = "WanImageToVideoPipeline"


@dataclasses.dataclass
class Run:
    """A tiny expand_timesteps pipeline run: its VAE, per-step latents, condition and output frames."""

    vae: Any
    steps: list[np.ndarray]
    condition: np.ndarray  # [1, 48, 1, H, W], float32, as prepare_latents returns it
    mask: Any  # first_frame_mask
    frames: np.ndarray  # the pipeline's output, [F, H, W, 3] in 0..255


def _wan22_vae() -> Any:
    mean, std = random_stats(22, 48)
    return build_tiny_wan_vae(seed=22, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                              scale_factor_spatial=16, latents_mean=mean, latents_std=std)


@pytest.fixture(scope="module")
def run() -> Run:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from PIL import Image

    vae = _wan22_vae()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    prepared: list[tuple[Any, ...]] = []
    prepare = pipe.prepare_latents

    def recording_prepare(*args: Any, **kwargs: Any) -> Any:
        prepared.append(prepare(*args, **kwargs))
        return prepared[-1]

    pipe.prepare_latents = recording_prepare
    steps: list[np.ndarray] = []
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (VIDEO.height, VIDEO.width, 3), dtype=np.uint8))
    with torch.inference_mode():
        out = pipe(image=image, prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
                   height=VIDEO.height, width=VIDEO.width, num_frames=VIDEO.frames, num_inference_steps=3,
                   guidance_scale=1.0, callback_on_step_end=capture(steps), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    _, condition, mask = prepared[0]
    return Run(vae, steps, condition.float().numpy(), mask, np.asarray(out.frames[0], np.float64) * 255.0)


def _reference(run: Run, latents: np.ndarray, dtype: str) -> np.ndarray:
    """pipeline_wan_i2v.py after the loop: the blend (float32), then the cast and Wan's formula."""
    import copy

    import torch

    vae = copy.deepcopy(run.vae).to(torch_dtype(dtype))
    latents = torch.from_numpy(latents)
    with torch.no_grad():
        latents = (1 - run.mask) * torch.from_numpy(run.condition) + run.mask * latents
        latents = latents.to(dtype=vae.dtype)
        latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                                   latents.dtype)
        latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(
            latents.device, latents.dtype)
        latents = latents / latents_std + latents_mean
        return postprocess(vae.decode(latents, return_dict=False)[0])


def _save_condition(path: Path, condition: np.ndarray) -> None:
    if path.name.endswith(".npy.gz"):
        save_npy_gz(path, condition)
        return
    import torch

    buf = io.BytesIO()
    torch.save(torch.from_numpy(condition), buf)
    path.write_bytes(buf.getvalue())


def _write_experiment(exp: Path, model_dir: Path, steps: list[np.ndarray], condition: np.ndarray | None = None,
                      suffix: str = ".npy.gz", videos: tuple[str, ...] = ("vid_001",)) -> None:
    """Store the steps (and the condition, if given) of each video as an experiment."""
    write_config(exp, str(model_dir), VIDEO.width, VIDEO.height, VIDEO.frames, FPS)
    for video in videos:
        video_dir = exp / "latents" / "prompt_000" / video
        for i, latent in enumerate(steps):
            save_npy_gz(video_dir / f"step_{i:03d}.npy.gz", latent)
        if condition is not None:
            _save_condition(video_dir / f"{wan.CONDITION_FILE}{suffix}", condition)


def _decode(tmp_path: Path, model_dir: Path, steps: list[np.ndarray], condition: np.ndarray | None = None,
            suffix: str = ".npy.gz", *args: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Store the steps (and the condition, if given) as an experiment, decode it with the CLI to PNG."""
    import json

    exp = tmp_path / "exp"
    _write_experiment(exp, model_dir, steps, condition, suffix)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png", *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    out = exp / "latents_videos" / "prompt_000" / "vid_001"
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    return [png_frames(out / f"step_{i:03d}") for i in range(len(steps))], summary


def _i2v_model(run: Run, folder: Path) -> Path:
    return save_model(run.vae, folder, pipeline=I2V, index={"expand_timesteps": True})


@pytest.mark.parametrize("suffix", [".npy.gz", ".pt"])
def test_stored_condition_makes_the_decode_the_pipelines_own(suffix: str, run: Run, tmp_path: Path):
    frames, summary = _decode(tmp_path, _i2v_model(run, tmp_path / "model"), run.steps, run.condition, suffix)
    assert summary["model"]["family"] == "wan2.2-i2v"
    assert frames[-1].shape == run.frames.shape == (VIDEO.frames, VIDEO.height, VIDEO.width, 3)
    assert psnr(frames[-1], run.frames) >= PARITY_DB
    assert psnr(frames[0], run.frames) < psnr(frames[-1], run.frames)


def test_bfloat16_blends_in_float32_then_casts(run: Run, tmp_path: Path):
    frames, _ = _decode(tmp_path, _i2v_model(run, tmp_path / "model"), run.steps[-1:], run.condition, ".npy.gz",
                        "--dtype", "bfloat16")
    assert psnr(frames[0], np.round(_reference(run, run.steps[-1], "bfloat16"))) >= LOW_PRECISION_DB


def test_without_condition_the_latent_is_decoded_as_is_with_one_warning(run: Run, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(wan, "_warned", set())
    model = _i2v_model(run, tmp_path / "model")
    with caplog.at_level(logging.WARNING, logger=wan.__name__):
        frames, summary = _decode(tmp_path / "i2v", model, run.steps)
    warnings = [r for r in caplog.records if r.name == wan.__name__ and wan.CONDITION_FILE in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # three steps, one warning
    assert summary["model"]["family"] == "wan2.2-i2v"
    as_is, _ = _decode(tmp_path / "plain", model, run.steps[-1:], None, ".npy.gz", "--family", "wan")
    assert np.array_equal(frames[-1], as_is[0])  # Wan's decode of the stored latent, nothing blended in
    assert psnr(frames[-1][:1], run.frames[:1]) < PARITY_DB  # the first frame lacks the image


def test_condition_of_another_size_fails_its_step_with_the_shapes(run: Run, tmp_path: Path):
    exp_condition = run.condition[:, :, :, :, :2]
    exp = tmp_path / "exp"
    model = _i2v_model(run, tmp_path / "model")
    write_config(exp, str(model), VIDEO.width, VIDEO.height, VIDEO.frames, FPS)
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    save_npy_gz(video_dir / "step_000.npy.gz", run.steps[-1])
    save_npy_gz(video_dir / "condition_latent.npy.gz", exp_condition)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png"])
    assert result.exit_code == 1, result.output
    assert "condition_latent (1, 48, 1, 2, 2) does not fit the latent (1, 48, 3, 2, 4)" in result.output, \
        result.output


@pytest.mark.parametrize("index, family", [({"expand_timesteps": True}, "wan2.2-i2v"),
                                           ({"expand_timesteps": False}, "wan"), ({}, "wan")])
def test_expand_timesteps_in_model_index_decides(index: dict[str, Any], family: str):
    facts = PipelineFacts(class_name=I2V, index={"_class_name": I2V, **index})
    assert detect("AutoencoderKLWan", facts).family.name == family


def test_inspect_names_the_rule(run: Run, tmp_path: Path):
    model = _i2v_model(run, tmp_path / "model")
    exp = tmp_path / "exp"
    write_config(exp, str(model), VIDEO.width, VIDEO.height, VIDEO.frames, FPS)
    save_npy_gz(exp / "latents" / "prompt_000" / "vid_001" / "step_000.npy.gz", run.steps[-1])
    result = CliRunner().invoke(cli, ["inspect", str(exp)])
    assert result.exit_code == 0, result.output
    assert ("family      wan2.2-i2v (Wan 2.2 I2V (expand_timesteps)), mirrors "
            "diffusers.WanImageToVideoPipeline with expand_timesteps") in result.output, result.output
    assert f"rule        pipeline {I2V} in {model / 'model_index.json'}" in result.output
    assert ("condition   0 of 1 video(s) store condition_latent.npy[.gz]/.pt[.gz]; the others decode without "
            "it") in result.output
    save_npy_gz(exp / "latents" / "prompt_000" / "vid_001" / "condition_latent.npy.gz", run.steps[-1][:, :, :1])
    result = CliRunner().invoke(cli, ["inspect", str(exp)])
    assert "condition   1 of 1 video(s) store condition_latent.npy[.gz]/.pt[.gz]\n" in result.output


def _attempts(out: Path) -> dict[str, int]:
    """Item -> the journal attempt id of its latest success."""
    return {k: r["attempt"] for k, r in journal_records(out).items() if r["status"] == "ok"}


def test_a_changed_condition_decodes_its_videos_steps_again_and_a_touch_does_not(run: Run, tmp_path: Path):
    exp, out = tmp_path / "exp", tmp_path / "exp" / "latents_videos"
    _write_experiment(exp, _i2v_model(run, tmp_path / "model"), run.steps[-2:], run.condition,
                      videos=("vid_001", "vid_002"))
    condition = exp / "latents" / "prompt_000" / "vid_001" / f"{wan.CONDITION_FILE}.npy.gz"

    def decode() -> str:
        result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png"])
        assert result.exit_code == 0, result.output
        return result.output

    def last_frames(video: str) -> np.ndarray:
        return png_frames(out / "prompt_000" / video / "step_001")

    decode()
    before = _attempts(out)
    assert len(before) == 4 and np.array_equal(last_frames("vid_001"), last_frames("vid_002"))
    os.utime(condition, ns=(time.time_ns(), time.time_ns() + 10**9))  # same bytes, new mtime: still done
    assert "0 ok, 0 failed, 4 already done" in decode()
    assert _attempts(out) == before

    save_npy_gz(condition, run.condition[:, :, :, ::-1].copy())  # another image
    dry = CliRunner().invoke(cli, ["decode", str(exp), "--format", "png", "--dry-run", "-v"])
    assert "vid_001: 2 steps, 0 done, 2 to decode" in dry.output and "changed input" in dry.output, dry.output
    assert "vid_002: 2 steps, 2 done" in dry.output, dry.output
    assert "2 ok, 0 failed, 2 already done" in decode()
    after = _attempts(out)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"prompt_000/vid_001/step_000", "prompt_000/vid_001/step_001"}
    mine, other = last_frames("vid_001"), last_frames("vid_002")
    assert not np.array_equal(mine[:1], other[:1])  # the new image's first frame
    assert psnr(mine[1:], other[1:]) > psnr(mine[:1], other[:1])

    condition.unlink()  # gone: decoded again, without it
    assert "2 ok, 0 failed, 2 already done" in decode()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root (a private mount namespace) to hide the experiment from the workers")
def test_ray_workers_that_cannot_see_the_experiment_decode_with_its_condition(run: Run, tmp_path: Path, shared_ray):
    """``--io driver``: the driver reads every input of an item, the condition included, and the workers
    never open the experiment. The driver runs in a mount namespace of its own, where the experiment
    is bind-mounted on a folder that is empty for every other process, the session's Ray runtime
    and its workers included: exactly a node that cannot see the driver's path."""
    ray = shared_ray
    model = _i2v_model(run, tmp_path / "model")
    _write_experiment(tmp_path / "source" / "exp", model, run.steps[-1:], run.condition)
    hidden, out = tmp_path / "hidden", tmp_path / "out"
    hidden.mkdir()
    driver = (f"mount --bind {tmp_path / 'source'} {hidden} && exec {sys.executable} -m latent_decoder decode "
              f"{hidden / 'exp'} --executor ray --address {ray.get_runtime_context().gcs_address} --io driver "
              f"--workers 1 --format png --output-dir {out}")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", driver],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    workers_see = ray.get(ray.remote(num_cpus=0)(os.path.exists).remote(str(hidden / "exp")))
    assert proc.returncode == 0, proc.stderr
    assert not workers_see and not (hidden / "exp").exists()
    assert wan.CONDITION_FILE not in proc.stderr, proc.stderr  # no "decoded without the condition" warning
    [record] = journal_records(out).values()
    assert record["status"] == "ok" and record["worker"] == "ray-0"
    frames = png_frames(out / "prompt_000" / "vid_001" / "step_000")
    assert psnr(frames[:1], run.frames[:1]) >= PARITY_DB  # the image's first frame, blended in by the worker
