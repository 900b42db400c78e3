#!/usr/bin/env python
"""Train the demo VAE shipped in ``latent_decoder/demo_model/vae``: a ~476k-parameter
``AutoencoderKLWan`` (Wan2.1's architecture, shrunk) fitted to the four synthetic demo clips of
``latent_decoder.demo``, so that ``latent-decoder demo`` shows real clips emerging from noise
instead of decoding noise into noise.

A VAE that knows its own four clips is what the demo needs; a general one would take hours of CPU
(see DESIGN.md, "Training the demo VAE"). Deterministic (seeded, CPU), prints PSNR as it goes; 500
steps at about 1 s each on 2 idle cores reach about 30 dB (with other jobs on the CPU, `--threads 1`
avoids thread oversubscription, which otherwise slows it tenfold):

    .venv/bin/python scripts/train_demo_vae.py                 # writes latent_decoder/demo_model/vae
    .venv/bin/python scripts/train_demo_vae.py --steps 100 --out /tmp/demo_model

At the end it sets ``latents_mean``/``latents_std`` in the config to the per-channel statistics of
the clips' latents (posterior mode), as Wan's config holds them for its training data, so that the
normalised latents ``(z - mean) / std`` the demo stores are about unit Gaussian.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latent_decoder.demo import (  # noqa: E402
    CLIP_SEED, DEMO_MODEL_DIR, DEMO_VAE_CONFIG, demo_clips, encode_clips, latent_statistics, psnr, wan_scheduler,
)


def latent_grid_colours(clips: torch.Tensor) -> torch.Tensor:
    """The clips' mean colour over each latent cell: 8x8 pixels, and the frames each latent frame
    encodes (the first frame alone, then groups of 4, as Wan's causal VAE packs them)."""
    pooled = torch.nn.functional.avg_pool3d(clips, kernel_size=(1, 8, 8))
    groups = [pooled[:, :, :1]] + [pooled[:, :, k:k + 4].mean(2, keepdim=True) for k in range(1, pooled.shape[2], 4)]
    return torch.cat(groups, dim=2)


def evaluate(vae: torch.nn.Module, clips: np.ndarray) -> list[float]:
    """Per-clip PSNR (dB, on the [-1, 1] range) of encode -> decode."""
    vae.eval()
    with torch.no_grad():
        out = vae.decode(encode_clips(vae, clips)).sample.numpy()
    vae.train()
    return [psnr(o, c, peak=2.0) for o, c in zip(out, clips)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps (each sees all clips)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate (cosine decay to 1/20)")
    parser.add_argument("--preview-weight", type=float, default=0.5,
                        help="weight of the linear-preview loss (0: plain reconstruction)")
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--every", type=int, default=25, help="print PSNR every this many steps")
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="model folder (the VAE goes to OUT/vae)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    from diffusers import AutoencoderKLWan

    clips = demo_clips(seed=CLIP_SEED)
    batch = torch.from_numpy(clips)
    vae = AutoencoderKLWan(**DEMO_VAE_CONFIG).train()
    params = sum(p.numel() for p in vae.parameters())
    print(f"training AutoencoderKLWan {DEMO_VAE_CONFIG} ({params:,} parameters) on {len(clips)} clips "
          f"{list(clips.shape[1:])}, {args.steps} steps, AdamW {args.lr:g}", flush=True)
    # A 1x1x1 linear head reads each latent cell's mean colour. Real VAEs' latents have this property
    # (it is why published latent->RGB preview factors work); fitting only the reconstruction, a tiny
    # VAE need not have it, and the demo should also serve linear previews. The head is not saved.
    preview_head = torch.nn.Conv3d(DEMO_VAE_CONFIG["z_dim"], 3, kernel_size=1)
    preview_target = latent_grid_colours(batch)
    opt = torch.optim.AdamW([*vae.parameters(), *preview_head.parameters()], lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(  # short warm-up, then cosine down to lr/20
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / args.steps))))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        z = vae.encode(batch).latent_dist.mode()  # the mode, as the demo encodes: no sampling noise
        loss = torch.nn.functional.mse_loss(vae.decode(z).sample, batch)
        preview_loss = torch.nn.functional.mse_loss(preview_head(z), preview_target)
        opt.zero_grad(set_to_none=True)
        (loss + args.preview_weight * preview_loss).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.every == 0 or step == args.steps:
            train_psnr = 10 * math.log10(4.0 / max(loss.item(), 1e-12))
            print(f"step {step:4d}  {time.perf_counter() - start:6.0f}s  loss {loss.item():.5f}  "
                  f"PSNR {train_psnr:5.2f} dB  preview loss {preview_loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - start

    vae.eval()
    per_clip = evaluate(vae, clips)
    mean, std = latent_statistics(vae, clips)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    out = args.out / "vae"
    vae.save_pretrained(out, safe_serialization=True)
    (out / "diffusion_pytorch_model.safetensors").chmod(0o644)  # package data: readable by every user
    wan_scheduler(50).save_config(args.out / "scheduler")  # as a Wan model folder has it: the demo's sampler
    record = {"steps": args.steps, "threads": args.threads, "lr": args.lr, "preview_weight": args.preview_weight,
              "seed": args.seed, "clip_seed": CLIP_SEED,
              "train_seconds": round(elapsed, 1), "psnr_db": [round(p, 2) for p in per_clip],
              "parameters": params, "torch": torch.__version__}
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"done in {elapsed:.0f}s: PSNR per clip {', '.join(f'{p:.2f}' for p in per_clip)} dB "
          f"(mean {np.mean(per_clip):.2f})", flush=True)
    print(f"latents_std {min(std):.3f}..{max(std):.3f}; saved {out} "
          f"({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
