"""``latent-decoder bench``: the tool against the plain diffusers loop, side by side, in one run.

The baseline is what the original tool and most researchers run: for each stored step, gunzip +
``np.load``, de-normalise, ``vae.decode`` in float32, ``VideoProcessor.postprocess_video`` and
diffusers' ``export_to_video``, one after the other. Ours is measured twice: the decode alone
(``DecodeWorker.decode``: latent in, uint8 frames out, per dtype) and end to end (``run_decode``
with the in-process executor: read, decode, encode and write overlapped). The steps are a
realistic mix: noisy early steps (expensive for x264) blending into smooth late ones.

Beside them, the tiny decoder (``--decoder tiny``: a ``taew2_1``-shaped TAEHV decoder with random
weights, ``TinyWorker.decode``) on the same device and latents, decode only, with its ratio to the
full VAE's decode-only rate (the goal: at least 20x at full size).

The default size runs on a CPU in about a minute (CI smoke-tests it); ``--full`` is the real-size
Wan2.1 VAE (``AutoencoderKLWan()``, random weights) on a ``[1, 16, 16, 60, 106]`` latent
(61 frames at 848x480), the size the project's GPU goals are stated for.
"""
from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SetupError

FULL = {"frames": 61, "height": 480, "width": 848}
SMALL = {"frames": 17, "height": 128, "width": 192}


@dataclass
class BenchResult:
    device: str
    vae: str
    shape: str
    items: int
    baseline: float = 0.0  # s/step, plain diffusers loop (float32, export_to_video, serial)
    decode: dict[str, float] = field(default_factory=dict)  # dtype -> s/step, decode only
    end_to_end: dict[str, float] = field(default_factory=dict)  # dtype -> s/step, whole run
    peak_gib: dict[str, float] = field(default_factory=dict)  # dtype -> peak device memory (CUDA only)
    tiny: dict[str, float] = field(default_factory=dict)  # dtype -> s/step, the tiny decoder, decode only
    tiny_peak_gib: dict[str, float] = field(default_factory=dict)

    def table(self) -> list[str]:
        """The figures side by side, with ratios to the plain loop."""
        def ratio(seconds: float) -> str:
            return f"{self.baseline / seconds:6.2f}x" if seconds else "      -"

        lines = [f"device: {self.device}; VAE: {self.vae}; {self.items} steps of {self.shape}",
                 f"{'':38}{'s/step':>10}{'vs plain loop':>15}{'peak GiB':>10}",
                 f"{'plain diffusers loop (float32)':38}{self.baseline:10.3f}{'1.00x':>15}{'-':>10}"]
        for dtype, seconds in self.decode.items():
            peak = self.peak_gib.get(dtype)
            lines.append(f"{'latent-decoder decode only, ' + dtype:38}{seconds:10.3f}{ratio(seconds):>15}"
                         f"{(f'{peak:.2f}' if peak else '-'):>10}")
        for dtype, seconds in self.end_to_end.items():
            lines.append(f"{'latent-decoder end to end, ' + dtype:38}{seconds:10.3f}{ratio(seconds):>15}{'-':>10}")
        for dtype, seconds in self.tiny.items():
            peak = self.tiny_peak_gib.get(dtype)
            lines.append(f"{'tiny decoder (taew2_1 shape), ' + dtype:38}{seconds:10.3f}{ratio(seconds):>15}"
                         f"{(f'{peak:.2f}' if peak else '-'):>10}")
        for dtype, seconds in self.end_to_end.items():
            if self.decode.get(dtype):
                lines.append(f"end-to-end rate / decode-only rate ({dtype}): {self.decode[dtype] / seconds:.2f} "
                             f"(goal >= 0.9: the encoder and I/O keep up with the device)")
        for dtype, seconds in self.tiny.items():
            if self.decode.get(dtype) and seconds:
                lines.append(f"tiny decoder rate / full VAE decode-only rate ({dtype}): {self.decode[dtype] / seconds:.1f}x "
                             f"(goal >= 20x at full size)")
        return lines


def parse_size(text: str) -> dict[str, int]:
    """``FxHxW`` (e.g. ``17x240x432``) -> the geometry; one line when it is not one a Wan VAE decodes."""
    try:
        frames, height, width = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise SetupError(f"--size {text}: expected FRAMESxHEIGHTxWIDTH, e.g. 17x240x432") from None
    if frames < 1 or (frames - 1) % 4 or height < 8 or width < 8 or height % 8 or width % 8:
        raise SetupError(f"--size {text}: frames must be 4k+1 and height and width multiples of 8")
    return {"frames": frames, "height": height, "width": width}


def _latents(items: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Pure noise at the first step blending into a smooth pattern at the last, as a denoising does."""
    from .synthetic import clean_latent

    rng = np.random.default_rng(0)
    clean = clean_latent(*shape[1:], phase=0.3)
    out = []
    for i in range(items):
        sigma = 1.0 - i / max(1, items - 1)
        noise = rng.standard_normal(shape).astype(np.float32)
        out.append((sigma * noise + (1 - sigma) * clean).astype(np.float16))
    return out


def build_experiment(root: Path, full: bool, items: int, frames: int, height: int, width: int) -> Path:
    from .synthetic import build_tiny_wan_vae, save_npy_gz, write_config

    model = root / "model"
    if full:
        from diffusers import AutoencoderKLWan

        AutoencoderKLWan().save_pretrained(model / "vae")
    else:
        build_tiny_wan_vae().save_pretrained(model / "vae")
    write_config(root, str(model), width, height, frames, 16)
    shape = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    for i, latent in enumerate(_latents(items, shape)):
        save_npy_gz(root / "latents" / "prompt_000" / "vid_001" / f"step_{i:03d}.npy.gz", latent)
    return root


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def plain_loop(exp: Path, device: str) -> float:
    """The plain serial diffusers loop in float32; seconds per step."""
    import torch
    from diffusers import AutoencoderKLWan
    from diffusers.utils import export_to_video
    from diffusers.video_processor import VideoProcessor

    vae = AutoencoderKLWan.from_pretrained(str(exp / "model" / "vae"), torch_dtype=torch.float32).to(device).eval()
    processor = VideoProcessor(vae_scale_factor=8)
    out = exp / "baseline_videos"
    out.mkdir(exist_ok=True)
    files = sorted((exp / "latents" / "prompt_000" / "vid_001").glob("step_*.npy.gz"))
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1).to(device)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1).to(device)
    start = time.perf_counter()
    for path in files:
        z = torch.from_numpy(np.load(io.BytesIO(gzip.decompress(path.read_bytes())))).to(device, torch.float32)
        with torch.no_grad():
            video = vae.decode(z * std + mean, return_dict=False)[0]
        frames = processor.postprocess_video(video, output_type="np")[0]
        export_to_video(list(frames), str(out / f"{path.name}.mp4"), fps=16)
    _sync(device)
    elapsed = time.perf_counter() - start
    del vae
    _free(device)
    return elapsed / len(files)


def _free(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def decode_only(exp: Path, device: str, dtype: str, tiny: Path | None = None) -> tuple[float, float]:
    """The tool's decode of every step (latent in memory -> uint8 frames) with the full VAE, or with the
    tiny decoder file ``tiny``; (s/step, peak GiB or 0)."""
    import torch

    from .experiment import Experiment
    from .latents import load_latent
    from .settings import CliOptions, resolve_settings
    from .tiny.worker import TinyWorker
    from .worker import DecodeWorker

    opts = CliOptions(device=device, dtype=dtype, decoder="tiny" if tiny else "vae",
                      tiny_weights=str(tiny) if tiny else None)
    settings = resolve_settings(Experiment.load(exp), opts)
    worker = (TinyWorker if tiny else DecodeWorker)(settings.output, None, device)
    latents = [load_latent(s.path, worker.rule.layout) for s in settings.experiment.discover()]
    try:
        worker.decode(latents[0])  # warm-up: first-call kernels, cudnn autotuning
        _sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for latent in latents:
            worker.decode(latent)
        _sync(device)
        seconds = (time.perf_counter() - start) / len(latents)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    finally:
        worker.close()
    return seconds, peak


def end_to_end(exp: Path, device: str, dtype: str) -> float:
    """A whole ``decode`` run (model load excluded, outputs written); seconds per step."""
    from .experiment import Experiment
    from .runner import run_decode
    from .settings import CliOptions, resolve_settings
    from .worker import DecodeWorker

    settings = resolve_settings(Experiment.load(exp), CliOptions(device=device, dtype=dtype, force=True,
                                                                 output_dir=exp / f"videos_{dtype}"))
    worker = DecodeWorker(settings.output, settings.output_dir, device)
    try:
        worker.decode(_latents(1, _shape(exp))[0])  # warm-up outside the timed run
        report = run_decode(settings, worker=worker, progress=False)
    finally:
        worker.close()
    if report.failed:
        raise RuntimeError(f"benchmark run failed: {report.failed[0]}")
    return report.wall_seconds / len(report.records)


def random_tiny_decoder(exp: Path) -> Path:
    """A decoder shaped like the published ``taew2_1`` (16 latent channels, widths 256/128/64/64, 4x
    temporal, 8x spatial), random weights, saved beside the experiment."""
    from .tiny.checkpoint import save_checkpoint
    from .tiny.model import TinyConfig, build_decoder, state_dict_for_saving

    return save_checkpoint(state_dict_for_saving(build_decoder(TinyConfig(), seed=0)), exp / "taew2_1_random.safetensors")


def _shape(exp: Path) -> tuple[int, ...]:
    from .latents import read_latent_header

    step = next((exp / "latents" / "prompt_000" / "vid_001").glob("step_*.npy.gz"))
    return tuple(read_latent_header(step)[0])


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    from .resources import usable_cpus

    return f"CPU ({usable_cpus()} usable cores)"


def run_bench(full: bool = False, items: int = 6, device: str = "auto", dtypes: tuple[str, ...] = ("float32",
              "bfloat16"), size: dict[str, int] | None = None, log: Any = print) -> BenchResult:
    """Build a temporary experiment and measure the plain loop and the tool on it."""
    import importlib.util

    import torch

    if importlib.util.find_spec("imageio") is None:
        raise SetupError("the plain loop's export_to_video needs imageio: pip install 'latent-decoder[bench]' "
                         "(make bench installs it)")

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    geometry = size or (FULL if full else SMALL)
    tf32 = ", TF32 convolutions on (PyTorch's default)" if device.startswith("cuda") and \
        torch.backends.cudnn.allow_tf32 else ""
    result = BenchResult(device_name(device) + tf32, "Wan2.1 real-size VAE (random weights)" if full else "tiny Wan",
                         f"{geometry['frames']}x{geometry['height']}x{geometry['width']}", items)
    root = Path(tempfile.mkdtemp(prefix="ld-bench-"))
    try:
        exp = build_experiment(root, full, items, **geometry)
        log("plain diffusers loop ...")
        result.baseline = plain_loop(exp, device)
        tiny = random_tiny_decoder(exp)
        for dtype in dtypes:
            log(f"latent-decoder, {dtype} ...")
            result.decode[dtype], result.peak_gib[dtype] = decode_only(exp, device, dtype)
            result.end_to_end[dtype] = end_to_end(exp, device, dtype)
            log(f"tiny decoder, {dtype} ...")
            result.tiny[dtype], result.tiny_peak_gib[dtype] = decode_only(exp, device, dtype, tiny)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


if __name__ == "__main__":  # python -m latent_decoder.bench: the default small run
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print("\n".join(run_bench().table()))
