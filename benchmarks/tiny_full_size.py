"""The tiny decoder against the full Wan2.1 VAE at the real frame size (480x848), decode only.

``latent-decoder bench --full`` measures every row at 61x480x848, which takes a GPU: on a CPU the
full VAE alone needs tens of minutes a step there, and the tool's streamed path even longer. This
script measures only the two decode-only rates that issue 18's goal compares, on the same device and
the same latents: the plain ``vae.decode`` of ``AutoencoderKLWan()`` (its default, real-size config,
random weights; de-normalised as the Wan pipelines do, output left on the device) and the tool's tiny
decoder (``TinyWorker.decode``: a ``taew2_1``-shaped decoder with random weights, frames to uint8 on
the host), and prints s/step and the ratio. ``--frames`` makes a CPU run affordable: the VAE's cost
grows with the frame count (it decodes causally, frame by frame), so does the tiny decoder's.

    python benchmarks/tiny_full_size.py                        # 61x480x848 (a GPU)
    python benchmarks/tiny_full_size.py --frames 5 --device cpu  # the real frame size, 5 frames
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from latent_decoder.bench import _sync, build_experiment, decode_only, device_name, random_tiny_decoder
from latent_decoder.latents import load_latent

HEIGHT, WIDTH = 480, 848


def plain_decode(exp: Path, device: str) -> float:
    """``vae.decode`` of each stored step in float32 (after a warm-up decode); seconds per step."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(str(exp / "model" / "vae"), torch_dtype=torch.float32).to(device).eval()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1).to(device)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1).to(device)
    latents = [torch.from_numpy(load_latent(p)).to(device, torch.float32)
               for p in sorted((exp / "latents" / "prompt_000" / "vid_001").glob("step_*.npy.gz"))]
    with torch.no_grad():
        vae.decode(latents[0][:, :, :1] * std + mean, return_dict=False)  # warm-up on one latent frame
        _sync(device)
        start = time.perf_counter()
        for z in latents:
            vae.decode(z * std + mean, return_dict=False)
        _sync(device)
    return (time.perf_counter() - start) / len(latents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=61, help="video frames (4k+1); default 61")
    parser.add_argument("--items", type=int, default=2, help="steps decoded by each; default 2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if (args.frames - 1) % 4:
        parser.error("--frames must be 4k+1 (Wan's VAE)")
    root = Path(tempfile.mkdtemp(prefix="ld-tiny-full-"))
    try:
        exp = build_experiment(root, True, args.items, args.frames, HEIGHT, WIDTH)
        print(f"device: {device_name(args.device)}; Wan2.1 real-size VAE and a taew2_1-shaped tiny decoder "
              f"(random weights); {args.items} steps of {args.frames}x{HEIGHT}x{WIDTH}, float32, decode only",
              flush=True)
        full = plain_decode(exp, args.device)
        print(f"full VAE (plain vae.decode)   {full:9.3f} s/step", flush=True)
        tiny, _ = decode_only(exp, args.device, "float32", random_tiny_decoder(exp))
        print(f"tiny decoder (TinyWorker)     {tiny:9.3f} s/step")
        print(f"tiny decoder rate / full VAE decode-only rate: {full / tiny:.1f}x (issue 18's goal: >= 20x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
