"""Parity with diffusers' own WanPipeline.

A tiny WanPipeline (random transformer, random VAE with non-default, per-channel
``latents_mean``/``latents_std``) runs on CPU; its ``callback_on_step_end`` stores every step's
latent the way experiments do. Decoding the stored last step with the real CLI must give back the
pipeline's own output frames. A wrong de-normalisation still makes a video, so the negative
controls show that the same comparison rejects one.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latent_decoder import decode_latent
from latent_decoder import families
from latent_decoder.cli import cli
from latent_decoder.synthetic import build_tiny_wan_vae, write_config

from conftest import journal_records, tiny_wan_transformer

HEIGHT, WIDTH, NUM_FRAMES, STEPS, FPS = 32, 32, 9, 3, 6.0
PARITY_DB = 55.0  # float32: 8-bit rounding alone gives ~59 dB, so a small normalisation error fails
FLOAT16_STORED_DB = 40.0  # latents stored as float16 lose precision before the tool sees them
MP4_DB = 25.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _save_npy_gz(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buf.getvalue()))


def _store_experiment(root: Path, model_dir: Path, latents: list[np.ndarray], timesteps: list[float],
                      dtype: type) -> Path:
    """Lay the captured latents out as an experiment folder, as the generation scripts do."""
    write_config(root, str(model_dir), WIDTH, HEIGHT, NUM_FRAMES, FPS)
    video_dir = root / "latents" / "prompt_000" / "vid_001"
    for i, (latent, t) in enumerate(zip(latents, timesteps)):
        stored = latent.astype(dtype)
        _save_npy_gz(video_dir / f"step_{i:03d}.npy.gz", stored)
        meta = {"video_id": "vid_001", "step": i, "timestep": t, "total_steps": STEPS,
                "shape": list(stored.shape), "dtype": str(stored.dtype), "prompt": "a tiny test prompt"}
        (video_dir / f"step_{i:03d}_metadata.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    root = tmp_path_factory.mktemp("parity")
    rng = np.random.default_rng(1234)
    # Distinct, clearly non-trivial per-channel statistics so that a wrong or missing
    # de-normalisation changes the decoded video well beyond the parity threshold.
    latents_mean = [float(x) for x in rng.normal(0.0, 1.0, 16)]
    latents_std = [float(x) for x in rng.uniform(1.5, 4.0, 16)]
    vae = build_tiny_wan_vae(seed=3, latents_mean=latents_mean, latents_std=latents_std)
    transformer = tiny_wan_transformer(seed=0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    pipe.set_progress_bar_config(disable=True)

    captured: list[np.ndarray] = []
    timesteps: list[float] = []

    def on_step_end(_pipe, i, t, kwargs):
        captured.append(kwargs["latents"].detach().float().cpu().numpy())
        timesteps.append(float(t))
        return {}

    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 8, 32, generator=gen)
    negative = torch.randn(1, 8, 32, generator=gen)
    with torch.inference_mode():
        out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, height=HEIGHT, width=WIDTH,
                   num_frames=NUM_FRAMES, num_inference_steps=STEPS, guidance_scale=1.0,
                   callback_on_step_end=on_step_end, output_type="np", generator=torch.Generator().manual_seed(0))
    frames = np.asarray(out.frames[0], dtype=np.float64) * 255.0  # [T, H, W, 3] in 0..255
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert len(captured) == STEPS and captured[-1].shape == (1, 16, 3, HEIGHT // 8, WIDTH // 8)

    model_dir = root / "model"
    vae.save_pretrained(model_dir / "vae")
    return SimpleNamespace(
        model_dir=model_dir,
        frames=frames,
        latents=captured,
        exp32=_store_experiment(root / "exp32", model_dir, captured, timesteps, np.float32),
        exp16=_store_experiment(root / "exp16", model_dir, captured, timesteps, np.float16),
    )


def _decode(*args: str) -> None:
    result = CliRunner().invoke(cli, ["decode", *args, "--device", "cpu"])
    assert result.exit_code == 0, f"{result.output}\n{result.stderr}\n{result.exception!r}"


def _png_frames(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("frame_*.png"))
    assert [f.name for f in files] == [f"frame_{i:04d}.png" for i in range(len(files))]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _mp4_frames(path: Path) -> tuple[dict, np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader]
    return meta, np.stack(frames)


@pytest.fixture(scope="module")
def png32(parity: SimpleNamespace) -> Path:
    """The float32 experiment decoded once to PNG frames; returns the output folder."""
    _decode(str(parity.exp32), "--format", "png")
    return parity.exp32 / "latents_videos"


def test_png_frames_of_last_step_match_the_pipeline(parity, png32):
    last = png32 / "prompt_000" / "vid_001" / f"step_{STEPS - 1:03d}"
    frames = _png_frames(last)
    assert frames.dtype == np.uint8
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert psnr(frames, parity.frames) >= PARITY_DB

    # Every stored step was decoded, each to a full set of frames, and the summary agrees.
    for i in range(STEPS):
        assert len(list((png32 / "prompt_000" / "vid_001" / f"step_{i:03d}").glob("*.png"))) == NUM_FRAMES
    summary = json.loads((png32 / "decode_summary.json").read_text())
    assert (summary["total_steps"], summary["successful_steps"], summary["failed_steps"]) == (STEPS, STEPS, 0)
    # The first step is still mostly noise: it must not look like the finished video.
    first = _png_frames(png32 / "prompt_000" / "vid_001" / "step_000")
    assert psnr(first, parity.frames) < psnr(frames, parity.frames)


def _rule_with(denormalize):
    rule = families.FAMILIES["wan"]
    return dataclasses.replace(rule, denormalize=lambda z, ctx: denormalize(z, ctx.config))


def _std_mean(z, config):
    import torch

    shape = (1, config.z_dim, 1, 1, 1)
    std = torch.tensor(config.latents_std, dtype=z.dtype).view(shape)
    mean = torch.tensor(config.latents_mean, dtype=z.dtype).view(shape)
    return std, mean


WRONG_DENORMALIZATIONS = {
    "none": lambda z, c: z,
    "divide_by_std": lambda z, c: z / _std_mean(z, c)[0] + _std_mean(z, c)[1],
    "std_without_mean": lambda z, c: z * _std_mean(z, c)[0],
    "mean_without_std": lambda z, c: z + _std_mean(z, c)[1],
}


@pytest.mark.parametrize("name", sorted(WRONG_DENORMALIZATIONS))
def test_negative_control_wrong_denormalization_is_caught(parity, monkeypatch, name):
    """The same PSNR check fails when the decoder gets the de-normalisation wrong."""
    monkeypatch.setitem(families.FAMILIES, "wan", _rule_with(WRONG_DENORMALIZATIONS[name]))
    frames = decode_latent(parity.latents[-1], model=str(parity.model_dir), device="cpu")
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert psnr(frames, parity.frames) < PARITY_DB


def test_float16_stored_latents_match_the_pipeline(parity):
    _decode(str(parity.exp16), "--format", "png", "--step-filter", f"step_{STEPS - 1:03d}")
    out = parity.exp16 / "latents_videos"
    frames = _png_frames(out / "prompt_000" / "vid_001" / f"step_{STEPS - 1:03d}")
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert psnr(frames, parity.frames) >= FLOAT16_STORED_DB
    record = journal_records(out)[f"prompt_000/vid_001/step_{STEPS - 1:03d}"]
    assert record["status"] == "ok" and record["latent_dtype"] == "float16"



def test_mp4_frames_match_the_pipeline(parity, tmp_path):
    out = tmp_path / "mp4"
    _decode(str(parity.exp32), "--output-dir", str(out))
    video = out / "prompt_000" / "vid_001" / f"step_{STEPS - 1:03d}.mp4"
    meta, frames = _mp4_frames(video)
    assert tuple(meta["size"]) == (WIDTH, HEIGHT)
    assert meta["fps"] == pytest.approx(FPS)  # video_settings.fps from the config
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert psnr(frames, parity.frames) >= MP4_DB
    thumb = np.asarray(Image.open(video.with_suffix(".jpg")).convert("RGB"))
    assert thumb.shape == (HEIGHT, WIDTH, 3)
    assert psnr(thumb, parity.frames[0]) >= MP4_DB
    for i in range(STEPS):
        assert (out / "prompt_000" / "vid_001" / f"step_{i:03d}.mp4").stat().st_size > 0


def test_in_memory_decode_equals_png_frames(parity, png32):
    png = _png_frames(png32 / "prompt_000" / "vid_001" / f"step_{STEPS - 1:03d}")
    frames = decode_latent(parity.latents[-1], model=str(parity.model_dir), device="cpu")
    assert frames.dtype == np.uint8
    assert frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(frames, png)
    # A [C, T, H, W] latent (no batch axis) decodes the same.
    np.testing.assert_array_equal(decode_latent(parity.latents[-1][0], model=str(parity.model_dir), device="cpu"), png)
