"""``calibrate-preview``: fit a model's own latent -> RGB map from a few full decodes.

Any VAE the tool can decode gets a preview this way, also those without published factors
(CogVideoX), and a fine-tuned VAE gets factors that match it. The fit runs at latent resolution:
each decoded video is average-pooled onto the latent grid (spatially by the spatial factor, in time
over the frames each latent frame decodes to), then ``[x, 1] @ [factors; bias] = rgb`` is solved by
least squares over every latent pixel of the final step (the clean latent) of up to N videos.

A map is used by every later preview of the model, in any experiment, so a calibration must not
make it worse: it fits only final steps (a step is final when its metadata says so:
``step == total_steps - 1``), skips a step it cannot read, and keeps a stored map that predicts this
calibration's own decodes better than the new fit does on videos it was not fitted to (``force``
replaces it all the same). On the pixels it was fitted to a least-squares fit always wins, so the
new fit is judged on held-out videos.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExperimentError, ItemError, SetupError
from ..experiment import Experiment, Filters, LatentStep
from ..latents import load_latent
from ..settings import OutputSettings
from ..stop import critical
from .factors import PreviewMap, calibration_path, load_calibration, model_key, published_map, save_calibration
from .projection import frame_sources
from .setup import geometry_from_rule, preview_family

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationResult:
    path: Path  # where the model's map is (the preview decoder finds it there)
    model: str
    vae_class: str
    family: str
    channels: int
    steps: list[str]  # the items it was fitted on
    samples: int  # latent pixels
    r2: float  # of the fitted map, on those latent pixels
    correlation: float  # mean over R, G, B of the correlation of fitted and decoded colours
    published_r2: float | None  # of the family's published factors on the same pixels, if any
    held_out_r2: float  # of the fit, each video predicted by a fit to the others (see ``held_out_r2``)
    stored_r2: float | None = None  # of the map stored before, on the same pixels; None: there was none
    saved: bool = True  # False: the stored map was better and is kept

    def summary(self) -> str:
        """What was fitted, and how well (one line)."""
        published = (f"; published {self.family} factors: R^2 {self.published_r2:.3f}"
                     if self.published_r2 is not None else "")
        stored = f"; the stored map: R^2 {self.stored_r2:.3f}" if self.stored_r2 is not None else ""
        return (f"calibrated the preview of {self.model} ({self.vae_class}, {self.channels} channels) on "
                f"{len(self.steps)} final step(s), {self.samples} latent pixels: R^2 {self.r2:.3f} "
                f"({self.held_out_r2:.3f} held out), correlation {self.correlation:.3f}{published}{stored}")

    def outcome(self) -> str:
        """Where the map went, or why the stored one was kept (one line)."""
        if self.saved:
            return f"saved {self.path} (`decode --decoder preview` uses it for this model)"
        return (f"kept the stored map {self.path}: on these decodes it scores R^2 {self.stored_r2:.3f}, the new "
                f"fit {self.held_out_r2:.3f} on videos it was not fitted to; --force replaces it")


def final_steps(experiment: Experiment, filters: Filters | None = None) -> tuple[list[LatentStep], list[str]]:
    """The final step of every video that has it stored, and why each other video has none.

    A video's last stored step is final only when it is the last of the generation: its metadata's
    ``step``, or its file's index, is ``total_steps - 1`` (the metadata's, else the config's
    ``generation_settings.num_inference_steps``). An experiment stopped at step 5 of 20 holds noisy
    latents whose decodes no linear map of clean latents should fit."""
    last: dict[str, LatentStep] = {}
    for step in experiment.discover(filters):
        if step.video_key not in last or step.step_index > last[step.video_key].step_index:
            last[step.video_key] = step
    chosen, skipped = [], []
    for key in sorted(last):
        step = last[key]
        meta = step.read_metadata() or {}
        total = meta.get("total_steps") if _whole(meta.get("total_steps")) else experiment.inference_steps
        if total is None:
            skipped.append(f"{key} (no total_steps in its metadata, nor num_inference_steps in the config)")
        elif total - 1 in (meta.get("step"), step.step_index):
            chosen.append(step)
        else:
            skipped.append(f"{key} (last stored step {step.step_index} of {total})")
    return chosen, skipped


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _listed(items: list[str], most: int = 3) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


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


def held_out_r2(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """R^2 of least-squares fits on data they were not fitted to: each group's pixels predicted by
    the fit to all other groups (videos; the two halves of the pixels when there is one video)."""
    predicted = np.empty_like(y)
    for group in np.unique(groups):
        test = groups == group
        factors, bias = fit_map(x[~test], y[~test])
        predicted[test] = x[test] @ factors + bias
    return r_squared(y, predicted)


def stored_map(key: str | None, channels: int) -> PreviewMap | None:
    """The model's stored map when it could be compared (same channels); an unreadable one is
    replaced, with a warning."""
    try:
        stored = load_calibration(key)
    except SetupError as exc:
        log.warning("warning: %s; replacing it", exc)
        return None
    return stored if stored is not None and stored.channels == channels else None


def calibrate_preview(experiment: Experiment, output: OutputSettings, device: str = "auto", steps: int = 8,
                      filters: Filters | None = None, worker: Any = None, force: bool = False) -> CalibrationResult:
    """Decode the final step of up to ``steps`` videos with the full VAE (``worker``: a
    ``DecodeWorker`` already holding it), fit the map, store it unless the stored one is better."""
    from ..worker import DecodeWorker

    candidates, unfinished = final_steps(experiment, filters)
    if unfinished:
        log.warning("warning: skipping %d video(s) whose final step is not stored: %s", len(unfinished),
                    _listed(unfinished))
    if not candidates:
        raise ExperimentError(f"no video under {experiment.latents_dir} has its final step stored (step "
                              "total_steps - 1 by its metadata, or by the config's generation_settings."
                              "num_inference_steps): calibrating on noisy steps would spoil the map")
    own = worker is None
    worker = worker or DecodeWorker(output, None, device)
    chosen: list[LatentStep] = []
    try:
        geometry = geometry_from_rule(worker.rule, worker.vae, output.video, worker.model.class_name)
        xs, ys = [], []
        for step in candidates:
            if len(chosen) == steps:
                break
            try:
                latent = load_latent(step.path, worker.rule.layout)
                frames = worker.decode(latent, str(step.path))
            except ItemError as exc:
                log.warning("warning: skipping %s: %s", step.key, exc)
                continue
            grid = geometry.to_grid(latent)
            xs.append(np.asarray(grid[0], np.float64).reshape(grid.shape[1], -1).T)
            ys.append(pool_to_grid(frames, tuple(grid.shape[2:]), geometry.temporal).reshape(-1, 3))
            chosen.append(step)
            log.info("decoded %s: latent %s -> %s frames", step.key, list(latent.shape), list(frames.shape))
    finally:
        if own:
            worker.close()
    if not chosen:
        raise ExperimentError(f"none of the {len(candidates)} final step(s) under {experiment.latents_dir} "
                              "could be decoded (see the warnings above)")
    x, y = np.concatenate(xs), np.concatenate(ys)
    channels = x.shape[1]
    if x.shape[0] < 2 * (channels + 1):
        raise SetupError(f"{x.shape[0]} latent pixels are too few to fit {channels + 1} numbers per colour: "
                         f"calibrate on more or larger videos (--steps)")
    factors, bias = fit_map(x, y)
    predicted = x @ factors + bias
    groups = (np.repeat(np.arange(len(xs)), [len(part) for part in xs]) if len(xs) > 1
              else np.arange(x.shape[0]) % 2)
    held_out = held_out_r2(x, y, groups)
    family = preview_family(worker.model.class_name, channels, worker.rule)
    published = published_map(family)
    published_r2 = (r_squared(y, x @ published.factors + published.bias)
                    if published is not None and published.channels == channels else None)
    key = model_key(output.model, worker.model, output.vae_subfolder)
    stored = stored_map(key, channels)
    stored_r2 = r_squared(y, x @ stored.factors + stored.bias) if stored is not None else None
    fit: dict[str, Any] = {
        "r2": round(r_squared(y, predicted), 6), "held_out_r2": round(held_out, 6),
        "correlation": round(correlation(y, predicted), 6),
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
    keep = stored_r2 is not None and stored_r2 > held_out and not force
    if keep:
        path = calibration_path(key)
    else:
        with critical():  # Ctrl-C waits until the map is in place: never a stray temp file
            path = save_calibration(key, record)
    return CalibrationResult(path, output.model, worker.model.class_name, family, channels, fit["steps"],
                             fit["samples"], fit["r2"], fit["correlation"], fit["published_r2"], fit["held_out_r2"],
                             None if stored_r2 is None else round(stored_r2, 6), saved=not keep)
