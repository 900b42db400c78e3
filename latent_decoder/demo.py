"""The trained demo: a tiny Wan-architecture VAE fitted to four synthetic clips (coloured shapes
moving over gradient backgrounds), shipped in ``demo_model/vae``, and an experiment whose stored
steps follow a flow-matching path from noise to those clips' latents, on Wan's own sigma schedule.

Decoded step by step, the demo shows what a real experiment shows: noise at step 0, shapes
emerging through the middle steps, the clip at the last step. The clips come from a deterministic
generator, so the VAE (``scripts/train_demo_vae.py``), the demo and the tests all see the same
pixels.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .tiny.quality import psnr  # noqa: F401 - the demo's tests and scripts measure with it

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"  # pipeline-style: vae/{config.json, *.safetensors}

# The architecture the demo VAE is trained with: Wan2.1's, shrunk to ~476k parameters.
DEMO_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 12,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}

CLIP_FRAMES, CLIP_HEIGHT, CLIP_WIDTH, CLIP_FPS = 9, 48, 64, 8.0
CLIP_SEED = 0  # the clips the shipped VAE was fitted to; other seeds give clips it has never seen
FLOW_SHIFT = 3.0  # Wan2.1's flow_shift at 480p (its UniPC scheduler config)
DEFAULT_STEPS = 20

DEMO_PROMPTS: tuple[str, ...] = (
    "a red ball bouncing across a blue sky",
    "a yellow square turning over a sunset",
    "a green ball and a white ball passing each other at dusk",
    "a cyan triangle sliding over sand",
)


# --------------------------------------------------------------------------- the clips


@dataclass(frozen=True)
class Shape:
    """A flat-coloured shape moving from ``start`` to ``end`` (fractions of width, height)."""

    sides: int  # 0: a circle; else a regular polygon
    colour: tuple[float, float, float]
    size: float  # radius as a fraction of the height
    start: tuple[float, float]
    end: tuple[float, float]
    bounce: float = 0.0  # height of |sin| hops, fraction of the height
    turn: float = 0.0  # radians turned over the clip


@dataclass(frozen=True)
class Scene:
    top: tuple[float, float, float]
    bottom: tuple[float, float, float]
    angle: float  # direction of the background gradient, radians (0: top to bottom)
    shapes: tuple[Shape, ...]


SCENES: tuple[Scene, ...] = (  # large, slow shapes and strong gradients: they must read at the 6x8 latent grid too
    Scene((0.15, 0.35, 0.85), (0.75, 0.88, 0.95), 0.0,
          (Shape(0, (0.90, 0.15, 0.10), 0.25, (0.34, 0.66), (0.66, 0.66), bounce=0.15),)),
    Scene((0.95, 0.60, 0.20), (0.40, 0.12, 0.45), 0.0,
          (Shape(4, (0.95, 0.90, 0.20), 0.32, (0.36, 0.44), (0.62, 0.56), turn=math.pi / 4),)),
    Scene((0.05, 0.08, 0.30), (0.55, 0.30, 0.60), math.pi / 4,
          (Shape(0, (0.20, 0.85, 0.30), 0.22, (0.28, 0.32), (0.60, 0.34)),
           Shape(0, (0.95, 0.95, 0.90), 0.20, (0.72, 0.68), (0.40, 0.66)))),
    Scene((0.92, 0.82, 0.55), (0.55, 0.35, 0.15), math.pi / 2,
          (Shape(3, (0.10, 0.70, 0.85), 0.36, (0.64, 0.42), (0.38, 0.58), turn=-math.pi / 3),)),
)


def _coverage(shape: Shape, cx: float, cy: float, angle: float, radius: float, yy: np.ndarray,
              xx: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (0..1) from the signed distance in pixels: soft one-pixel edges are
    what a small VAE can reproduce, hard ones would cost it most of its capacity."""
    px, py = xx - cx, yy - cy
    if shape.sides == 0:
        dist = np.sqrt(px ** 2 + py ** 2) - radius
    else:
        apothem = radius * math.cos(math.pi / shape.sides)
        normals = [angle + 2 * math.pi * (k + 0.5) / shape.sides for k in range(shape.sides)]
        dist = np.max([px * math.cos(a) + py * math.sin(a) for a in normals], axis=0) - apothem
    return np.clip(0.5 - dist, 0.0, 1.0)


def demo_clip(index: int, frames: int = CLIP_FRAMES, height: int = CLIP_HEIGHT, width: int = CLIP_WIDTH,
              seed: int = CLIP_SEED) -> np.ndarray:
    """Clip ``index`` of the demo set as float32 ``[3, frames, height, width]`` in ``[-1, 1]`` (the
    range ``vae.decode`` produces). ``seed`` jitters the paths a little; the shipped VAE knows ``CLIP_SEED``."""
    scene = SCENES[index % len(SCENES)]
    rng = np.random.default_rng([seed, index])
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64) + 0.5, np.arange(width, dtype=np.float64) + 0.5,
                         indexing="ij")
    # Background: a linear gradient along ``angle``, 0 at one side, 1 at the other.
    along = (xx / width - 0.5) * math.sin(scene.angle) + (yy / height - 0.5) * math.cos(scene.angle)
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    background = np.stack([t + (b - t) * along for t, b in zip(scene.top, scene.bottom)])
    jitter = [rng.uniform(-0.03, 0.03, size=4) for _ in scene.shapes]
    video = np.empty((3, frames, height, width), dtype=np.float64)
    for f in range(frames):
        u = f / max(frames - 1, 1)
        image = background.copy()
        for shape, (dx0, dy0, dx1, dy1) in zip(scene.shapes, jitter):
            x = (shape.start[0] + dx0) * (1 - u) + (shape.end[0] + dx1) * u
            y = (shape.start[1] + dy0) * (1 - u) + (shape.end[1] + dy1) * u
            y -= shape.bounce * abs(math.sin(math.pi * 1.5 * u))
            alpha = _coverage(shape, x * width, y * height, shape.turn * u, shape.size * height, yy, xx)
            image = image * (1 - alpha) + np.asarray(shape.colour)[:, None, None] * alpha
        video[:, f] = image
    return (video * 2 - 1).astype(np.float32)


def demo_clips(count: int = len(SCENES), frames: int = CLIP_FRAMES, height: int = CLIP_HEIGHT,
               width: int = CLIP_WIDTH, seed: int = CLIP_SEED) -> np.ndarray:
    """The first ``count`` demo clips as one batch ``[count, 3, frames, height, width]``."""
    return np.stack([demo_clip(i, frames, height, width, seed) for i in range(count)])


def to_uint8(clip: np.ndarray) -> np.ndarray:
    """``[3, T, H, W]`` in ``[-1, 1]`` -> ``[T, H, W, 3]`` uint8, as the decoder maps its output."""
    return np.round((np.clip(clip, -1, 1).transpose(1, 2, 3, 0) + 1) * 127.5).astype(np.uint8)


# --------------------------------------------------------------------------- latents and schedule


def encode_clips(vae: Any, clips: np.ndarray) -> "Any":
    """Raw (un-normalised) latents of ``clips``: the posterior's mode, as Wan's video-to-video
    pipeline takes it (``retrieve_latents(..., sample_mode="argmax")``)."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(clips)).to(vae.dtype)
        return vae.encode(x).latent_dist.mode().float()


def latent_statistics(vae: Any, clips: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the clips' latents: what Wan ships as ``latents_mean`` and
    ``latents_std``, so that normalised latents are about unit Gaussian like a real model's."""
    z = encode_clips(vae, clips)
    flat = z.transpose(0, 1).reshape(z.shape[1], -1)
    return [round(float(v), 6) for v in flat.mean(1)], [round(float(v), 6) for v in flat.std(1)]


def normalised_latents(vae: Any, clips: np.ndarray) -> np.ndarray:
    """``(z - latents_mean) / latents_std``: the model-space x0 a Wan pipeline steps towards."""
    z = encode_clips(vae, clips).numpy()
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = np.asarray(vae.config.latents_mean, np.float32).reshape(shape)
    std = np.asarray(vae.config.latents_std, np.float32).reshape(shape)
    return ((z - mean) / std).astype(np.float32)


def wan_scheduler(steps: int, shift: float = FLOW_SHIFT) -> Any:
    """Wan2.1's default scheduler (diffusers' ``UniPCMultistepScheduler`` in flow mode) set to ``steps``:
    its ``timesteps`` are what ``WanPipeline`` hands ``callback_on_step_end``, its ``sigmas`` (steps + 1,
    ending at 0) the noise levels."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=shift, num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    return scheduler


def _npy_gz_bytes(array: np.ndarray) -> bytes:
    """gzip'd ``np.save`` with a fixed header time: the same latent gives the same bytes, so a
    rebuilt demo counts as unchanged and a second ``demo`` run resumes instead of decoding again."""
    buf = io.BytesIO()
    np.save(buf, array)
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _copy_model(source: Path, target: Path) -> None:
    """Copy the demo model into the experiment (self-contained), leaving identical files untouched."""
    for src in sorted(source.rglob("*")):
        if src.is_file() and "__pycache__" not in src.parts:
            _write_if_changed(target / src.relative_to(source), src.read_bytes())


# --------------------------------------------------------------------------- the experiment


def is_demo_folder(root: Path) -> bool:
    """Whether ``root`` may be (re)written as the demo: absent, empty, or a demo experiment (its
    config names its own ``model/`` folder). Anything else might be someone's experiment."""
    if not root.exists():
        return True
    if not root.is_dir():
        return False
    if not any(root.iterdir()):
        return True
    config = root / "configs" / "generation_config.yaml"
    if not config.is_file():
        return False
    import yaml

    try:
        model_id = ((yaml.safe_load(config.read_text()) or {}).get("model_settings") or {}).get("model_id")
    except (OSError, yaml.YAMLError, AttributeError):
        return False
    return bool(model_id) and Path(str(model_id)).resolve() == (root / "model").resolve()


def load_demo_vae(model_dir: Path) -> Any:
    """The demo VAE, float32 on the CPU, loaded like any model (``models.load_vae``): a file of the
    installed demo model that is missing or broken is one ``ModelNotFoundError`` line naming it."""
    import torch

    from .errors import ModelNotFoundError
    from .models import load_vae, resolve_model

    try:
        return load_vae(resolve_model(str(model_dir)), torch.device("cpu"), torch.float32)
    except ModelNotFoundError as err:
        raise ModelNotFoundError(f"the demo model is broken ({err}); reinstall latent-decoder") from err


def build_trained_demo(root: str | Path, steps: int = DEFAULT_STEPS, seed: int = 0, clips: int = len(SCENES),
                       model_dir: Path | None = None, shift: float = FLOW_SHIFT) -> Path:
    """Write the demo experiment to ``root``: the trained demo VAE copied to ``root/model``, and for
    each clip ``prompt_NNN/vid_001`` with ``steps`` stored latents along ``x_t = (1 - sigma) x0 +
    sigma noise`` (x0: the clip's normalised latent), step i holding the latent after step i (at
    ``sigmas[i + 1]``; the last is x0), with the metadata a ``WanPipeline`` callback would store, and
    the starting noise as ``noise.npy.gz``. Deterministic: building again gives identical files."""
    import yaml

    from .synthetic import write_config

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 1 <= clips <= len(SCENES):
        raise ValueError(f"clips must be between 1 and {len(SCENES)}, got {clips}")
    root = Path(root).expanduser().absolute()
    model_dir = Path(model_dir or DEMO_MODEL_DIR)  # read at call time: the installed demo model by default
    vae = load_demo_vae(model_dir)  # before anything is written: a broken install leaves no folder
    _copy_model(model_dir, root / "model")
    write_config(root, str(root / "model"), CLIP_WIDTH, CLIP_HEIGHT, CLIP_FRAMES, CLIP_FPS)
    config_path = root / "configs" / "generation_config.yaml"
    config = yaml.safe_load(config_path.read_text())  # plus how the steps were made, as a real config records it
    config["generation_settings"] = {"num_inference_steps": steps, "scheduler": "UniPCMultistepScheduler",
                                     "flow_shift": shift, "seed": seed}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    x0 = normalised_latents(vae, demo_clips(clips))
    scheduler = wan_scheduler(steps, shift)
    sigmas = scheduler.sigmas.double().numpy()
    latents_dir = root / "latents"
    keep = {latents_dir / f"prompt_{c:03d}" / "vid_001" for c in range(clips)}
    if latents_dir.is_dir():  # a rebuild with fewer clips or steps leaves no stale files behind
        for video_dir in [d for p in latents_dir.iterdir() if p.is_dir() for d in p.iterdir() if d.is_dir()]:
            if video_dir not in keep:
                shutil.rmtree(video_dir)
    for c in range(clips):
        video_dir = latents_dir / f"prompt_{c:03d}" / "vid_001"
        # The starting noise, stored beside the steps as some pipelines' callers do (``--view x0`` then
        # has an x0 for step 0 too); float16-rounded first, so the stored file is exactly the x at sigma 1.
        noise = np.random.default_rng([seed, c]).standard_normal(x0[c : c + 1].shape).astype(np.float16)
        _write_if_changed(video_dir / "noise.npy.gz", _npy_gz_bytes(noise))
        noise = noise.astype(np.float64)
        wanted = {"noise.npy.gz"}
        for i in range(steps):
            sigma = sigmas[i + 1]
            latent = ((1 - sigma) * x0[c : c + 1] + sigma * noise).astype(np.float16)
            name = f"step_{i:03d}"
            wanted |= {f"{name}.npy.gz", f"{name}_metadata.json"}
            _write_if_changed(video_dir / f"{name}.npy.gz", _npy_gz_bytes(latent))
            meta = {"video_id": "vid_001", "step": i, "timestep": scheduler.timesteps[i].item(),
                    "total_steps": steps, "shape": list(latent.shape), "dtype": str(latent.dtype),
                    "prompt": DEMO_PROMPTS[c]}
            _write_if_changed(video_dir / f"{name}_metadata.json", json.dumps(meta).encode())
        for stale in video_dir.iterdir():
            if stale.is_file() and stale.name not in wanted:
                stale.unlink()
    return root


DEMO_DISTILL_SAMPLE = 48  # steps the distill decodes with the full VAE (all of them with --steps 12 or fewer)
DEMO_DISTILL_MINUTES = 8.0  # at most (training stops at DEMO_DISTILL_DB: about 2 min on a quiet 2-core CPU; the cap is for a loaded one)
DEMO_DISTILL_DB = 24.5  # held-out PSNR at which the demo's training stops


@dataclass
class DemoRun:
    """What ``run_demo`` did: the full VAE's tree, and the tiny decoder's (distilled for the demo)."""

    settings: Any  # RunSettings of the full-VAE tree
    report: Any  # its RunReport
    distilled: Any = None  # the DistillResult; None when a decoder distilled before was there
    tiny_settings: Any = None  # RunSettings of the tiny tree
    tiny_report: Any = None

    @property
    def interrupted(self) -> bool:
        return any(r is not None and r.interrupted is not None for r in (self.distilled, self.report, self.tiny_report))

    @property
    def exit_code(self) -> int:
        codes = [r.exit_code for r in (self.distilled, self.report, self.tiny_report) if r is not None]
        interrupted = [c for c in codes if c >= 128]
        return interrupted[0] if interrupted else max(codes, default=0)


def run_demo(root: str | Path, steps: int = DEFAULT_STEPS, seed: int = 0, opts: Any = None, progress: bool = True,
             on_decoded: Any = None, on_distilled: Any = None) -> DemoRun:
    """Build the demo in ``root`` and decode it the way a user would: ``distill`` (its sample of steps
    decoded with the full VAE into ``latents_videos``, a tiny decoder trained on them), the rest of the
    steps with the full VAE (``decode``), every step with the tiny decoder (``decode --decoder tiny``, into
    ``latents_tiny``). Each is the command's own function, with settings from ``resolve_settings``. A
    demo that holds a decoder distilled for its VAE before is not distilled again. ``on_decoded(settings,
    report)`` hears of each decode run, ``on_distilled(result)`` of the distill; they stop the demo
    when interrupted."""
    from .errors import SetupError
    from .experiment import Experiment
    from .runner import run_decode
    from .settings import CliOptions, resolve_settings
    from .tiny.distill import DistillOptions, distill, has_distilled

    root = Path(root).expanduser().absolute()
    if not is_demo_folder(root):
        raise SetupError(f"{root} exists and is not a demo experiment; pick another folder (or remove it)")
    build_trained_demo(root, steps=steps, seed=seed)
    experiment = Experiment.load(root)
    opts = opts or CliOptions()
    settings = resolve_settings(experiment, opts)
    run = DemoRun(settings, None)
    if not has_distilled(settings):
        run.distilled = distill(settings, DistillOptions(sample=DEMO_DISTILL_SAMPLE, minutes=DEMO_DISTILL_MINUTES,
                                                         until_psnr=DEMO_DISTILL_DB, seed=seed),
                                progress=progress, on_decoded=on_decoded)
        if on_distilled is not None:
            on_distilled(run.distilled)
        if run.distilled.interrupted is not None:
            return run
    run.report = run_decode(settings, progress=progress)
    if on_decoded is not None:
        on_decoded(settings, run.report)
    if run.report.interrupted is not None:
        return run
    run.tiny_settings = resolve_settings(experiment, replace(opts, decoder="tiny"))
    run.tiny_report = run_decode(run.tiny_settings, progress=progress)
    if on_decoded is not None:
        on_decoded(run.tiny_settings, run.tiny_report)
    return run


def where_to_look(output_dir: Path, tiny_dir: Path | None = None, clip: str = "prompt_000/vid_001"
                  ) -> list[tuple[str, Path]]:
    """What a demo user should open, as ``(label, path)``: the output folder, the gallery and one
    progression sheet when the end-of-run gallery step wrote them, and the first (noise) and last
    (clean) step of one clip; then the tiny decoder's gallery and the page of that clip, which shows
    the two trees' progressions side by side."""
    found: list[tuple[str, Path]] = [("videos", output_dir)]
    if (output_dir / "index.html").is_file():
        found.append(("gallery", output_dir / "index.html"))
    sheets = sorted(output_dir.rglob("progression.png"))
    if sheets:
        found.append(("progression", sheets[0]))
    outputs = sorted(p for p in (output_dir / clip).glob("step_*")
                     if p.suffix == ".mp4" or (p.is_dir() and not p.suffix))
    if outputs:
        found += [("noise (first step)", outputs[0]), ("clip (last step)", outputs[-1])]
    if tiny_dir is not None and (tiny_dir / "index.html").is_file():
        found.append(("tiny decoder gallery", tiny_dir / "index.html"))
        if (tiny_dir / clip / "index.html").is_file():
            found.append(("full VAE and tiny", tiny_dir / clip / "index.html"))
    return found


def main() -> None:
    """``python -m latent_decoder.demo [ROOT]``: write the trained demo experiment without decoding it."""
    import click

    @click.command()
    @click.argument("root", type=click.Path(path_type=Path), default=Path("demo_experiment"))
    def build(root: Path) -> None:
        """Write the demo experiment to ROOT (default: ./demo_experiment); `latent-decoder demo` also decodes it."""
        path = build_trained_demo(root)
        click.echo(f"demo experiment written to {path}")

    build()


if __name__ == "__main__":
    main()
