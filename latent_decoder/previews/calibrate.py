"""``calibrate-preview``: fit a model's own latent -> RGB map from a few full decodes.

Any VAE the tool can decode gets a preview this way, also those without published factors
(CogVideoX), and a fine-tuned VAE gets factors that match it. The fit runs at latent resolution:
each decoded video is average-pooled onto the latent grid (spatially by the spatial factor, in time
over the frames each latent frame decodes to), then ``[x, 1] @ [factors; bias] = rgb`` is solved by
least squares over every latent pixel of the last step (the clean latent) of up to N videos.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExperimentError, SetupError
from ..experiment import Experiment, Filters, LatentStep
from ..latents import load_latent
from ..settings import OutputSettings
from .factors import model_key, published_map, save_calibration
from .families import family_for_class
from .projection import frame_sources
from .setup import geometry_from_rule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationResult:
    path: Path  # where the map was stored (where the preview decoder finds it for this model)
    model: str
    vae_class: str
    family: str
    channels: int
    steps: list[str]  # the items it was fitted on
    samples: int  # latent pixels
    r2: float  # of the fitted map, on those latent pixels
    correlation: float  # mean over R, G, B of the correlation of fitted and decoded colours
    published_r2: float | None  # of the family's published factors on the same pixels, if any

    def summary(self) -> str:
        published = (f"; published {self.family} factors: R^2 {self.published_r2:.3f}"
                     if self.published_r2 is not None else "")
        return (f"calibrated the preview of {self.model} ({self.vae_class}, {self.channels} channels) on "
                f"{len(self.steps)} final step(s), {self.samples} latent pixels: R^2 {self.r2:.3f}, "
                f"correlation {self.correlation:.3f}{published}\nsaved {self.path} "
                f"(`decode --decoder preview` uses it for this model)")


def final_steps(experiment: Experiment, count: int, filters: Filters | None = None) -> list[LatentStep]:
    """The last stored step (the clean latent) of each of the first ``count`` videos."""
    last: dict[str, LatentStep] = {}
    for step in experiment.discover(filters):
        if step.video_key not in last or step.step_index > last[step.video_key].step_index:
            last[step.video_key] = step
    return [last[key] for key in sorted(last)[:count]]


def pool_to_grid(frames: np.ndarray, grid: tuple[int, int, int], factor: int) -> np.ndarray:
    """Decoded ``[F, H, W, 3]`` uint8 frames -> ``[T, h, w, 3]`` means in [-1, 1]: each latent pixel's
    patch, over the frames its latent frame decodes to (``projection.frame_sources``, as the preview
    repeats them)."""
    t, h, w = grid
    count, height, width, _ = frames.shape
    sh, sw = height // h, width // w
    spatial = frames[:, :h * sh, :w * sw].reshape(count, h, sh, w, sw, 3).mean(axis=(2, 4), dtype=np.float64)
    sources = frame_sources(t, count, factor)
    pooled = np.stack([spatial[sources == i].mean(axis=0) for i in range(t)])
    return pooled / 127.5 - 1.0


def fit_map(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``[x, 1] @ [[factors], [bias]] ~ y`` for ``x`` [N, C], ``y`` [N, 3]."""
    design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    return solution[:-1], solution[-1]


def r_squared(y: np.ndarray, predicted: np.ndarray) -> float:
    """Share of the decoded colours' variance (about each channel's mean) the map explains."""
    total = float(np.square(y - y.mean(axis=0)).sum())
    return 1.0 - float(np.square(y - predicted).sum()) / total if total > 0 else float("nan")


def correlation(y: np.ndarray, predicted: np.ndarray) -> float:
    values = [np.corrcoef(y[:, i], predicted[:, i])[0, 1] for i in range(y.shape[1])
              if y[:, i].std() > 0 and predicted[:, i].std() > 0]
    return float(np.mean(values)) if values else float("nan")


def calibrate_preview(experiment: Experiment, output: OutputSettings, device: str = "auto", steps: int = 8,
                      filters: Filters | None = None, worker: Any = None) -> CalibrationResult:
    """Decode the final step of up to ``steps`` videos with the full VAE (``worker``: a
    ``DecodeWorker`` already holding it), fit the map, store it."""
    from ..worker import DecodeWorker

    chosen = final_steps(experiment, steps, filters)
    if not chosen:
        raise ExperimentError(f"no latent steps under {experiment.latents_dir} to calibrate on")
    own = worker is None
    worker = worker or DecodeWorker(output, None, device)
    try:
        geometry = geometry_from_rule(worker.rule, worker.vae, output.video, worker.model.class_name)
        xs, ys = [], []
        for step in chosen:
            latent = load_latent(step.path, worker.rule.layout)
            frames = worker.decode(latent, str(step.path))
            grid = geometry.to_grid(latent)
            xs.append(np.asarray(grid[0], np.float64).reshape(grid.shape[1], -1).T)
            ys.append(pool_to_grid(frames, tuple(grid.shape[2:]), geometry.temporal).reshape(-1, 3))
            log.info("decoded %s: latent %s -> %s frames", step.key, list(latent.shape), list(frames.shape))
    finally:
        if own:
            worker.close()
    x, y = np.concatenate(xs), np.concatenate(ys)
    channels = x.shape[1]
    if x.shape[0] < 2 * (channels + 1):
        raise SetupError(f"{x.shape[0]} latent pixels are too few to fit {channels + 1} numbers per colour: "
                         f"calibrate on more or larger videos (--steps)")
    factors, bias = fit_map(x, y)
    predicted = x @ factors + bias
    family = family_for_class(worker.model.class_name, channels, worker.rule.name)
    published = published_map(family)
    published_r2 = (r_squared(y, x @ published.factors + published.bias)
                    if published is not None and published.channels == channels else None)
    fit: dict[str, Any] = {
        "r2": round(r_squared(y, predicted), 6), "correlation": round(correlation(y, predicted), 6),
        "published_r2": round(published_r2, 6) if published_r2 is not None else None,
        "samples": int(x.shape[0]), "steps": [s.key for s in chosen], "experiment": str(experiment.root),
        "dtype": output.dtype, "created": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    record = {
        "_about": "Linear latent-to-RGB preview map fitted by `latent-decoder calibrate-preview` to this VAE's own "
                  "decodes: rgb = latent_channels_last @ factors + bias on the model-space (normalised) latent the "
                  "pipeline's callback sees, in [-1, 1]; image = ((rgb + 1) / 2).clip(0, 1). rows = latent "
                  "channels, columns = R, G, B.",
        "model": output.model, "model_folder": str(worker.model.folder), "vae_class": worker.model.class_name,
        "vae_subfolder": output.vae_subfolder, "family": family, "channels": channels,
        "factors": [[round(float(v), 7) for v in row] for row in factors],
        "bias": [round(float(v), 7) for v in bias], "fit": fit,
    }
    key = model_key(output.model, worker.model, output.vae_subfolder)
    path = save_calibration(key, record)
    return CalibrationResult(path, output.model, worker.model.class_name, family, channels, fit["steps"],
                             fit["samples"], fit["r2"], fit["correlation"], fit["published_r2"])

