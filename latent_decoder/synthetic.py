"""Synthetic experiments for the test suite and ``latent-decoder bench``: a small Wan-family VAE with
random weights, saved the way diffusers saves real ones, and per-step latents that move from noise to
a smooth moving pattern the way a flow-matching sampler's x_t does. The suite builds real files and
real ``from_pretrained`` loads with them; their decoded videos are noise, by design.

The demo users see (``latent-decoder demo``, ``make demo``) is in ``demo.py``: a VAE trained on its
own clips, so that they emerge from the noise.
"""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TINY_WAN_VAE: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


def build_tiny_wan_vae(seed: int = 0, **overrides: Any) -> Any:
    """A small ``AutoencoderKLWan`` with seeded random weights (fast on CPU)."""
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**{**TINY_WAN_VAE, **overrides}).eval()


def save_npy_gz(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))


def write_config(root: Path, model_id: str, width: int, height: int, frames: int, fps: float) -> None:
    config = {
        "model_settings": {"model_id": model_id},
        "video_settings": {"width": width, "height": height, "frames": frames, "fps": fps},
    }
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "generation_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def clean_latent(channels: int, t: int, h: int, w: int, phase: float) -> np.ndarray:
    """A smooth, slowly moving latent pattern: what the last denoising step looks like."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.linspace(0, 2 * np.pi, h), np.linspace(0, 2 * np.pi, w), indexing="ij")
    chans = [np.sin(xx * (1 + c % 3) + tt * 0.6 + phase + c) * np.cos(yy * (1 + c % 2) - tt * 0.3 + c)
             for c in range(channels)]
    return (np.stack(chans)[None] * 1.5).astype(np.float32)


def write_latent_steps(video_dir: Path, clean: np.ndarray, steps: int, seed: int, prompt: str,
                       video_id: str, dtype: type = np.float16) -> None:
    """x_t = sigma * noise + (1 - sigma) * clean for a descending sigma schedule, as stored per step."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(clean.shape).astype(np.float32)
    for i in range(steps):
        sigma = 1.0 - (i + 1) / steps
        latent = (sigma * noise + (1 - sigma) * clean).astype(dtype)
        save_npy_gz(video_dir / f"step_{i:03d}.npy.gz", latent)
        meta = {"video_id": video_id, "step": i, "timestep": round(sigma * 1000, 3), "total_steps": steps,
                "shape": list(latent.shape), "dtype": str(latent.dtype), "prompt": prompt}
        (video_dir / f"step_{i:03d}_metadata.json").write_text(json.dumps(meta))


def build_synthetic_experiment(root: str | Path, prompts: int = 2, videos: int = 1, steps: int = 6, frames: int = 9,
                          height: int = 64, width: int = 96, fps: float = 8.0, seed: int = 0,
                          model_dir: Path | None = None) -> Path:
    """Write an experiment folder with a tiny VAE saved under ``root/model/vae`` (unless
    ``model_dir`` names an existing model) and ``prompts x videos x steps`` latents."""
    import torch

    root = Path(root).resolve()
    if model_dir is None:
        model_dir = root / "model"
        vae = build_tiny_wan_vae(seed)
        with torch.no_grad():  # random decoders are nearly grey: stretch the output so the demo shows something
            vae.decoder.conv_out.weight.mul_(4.0)
        vae.save_pretrained(model_dir / "vae")
    write_config(root, str(model_dir), width, height, frames, fps)
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    prompt_texts = ["a red kite over the sea", "a slow pan across a forest", "ink drops in water"]
    for p in range(prompts):
        for v in range(videos):
            video_dir = root / "latents" / f"prompt_{p:03d}" / f"vid_{v + 1:03d}"
            write_latent_steps(video_dir, clean_latent(16, t, h, w, phase=p + 0.5 * v), steps, seed + 100 * p + v,
                               prompt_texts[p % len(prompt_texts)], f"vid_{v + 1:03d}")
    return root
