"""The x0 view: the model's prediction of the clean latent at every stored step.

A pipeline's ``callback_on_step_end`` stores x after step i, that is x(sigma_{i+1}); step i's
metadata carries its timestep, sigma_i * 1000 for flow-matching schedulers. A first-order
flow-matching step is x(sigma_{i+1}) = x(sigma_i) + (sigma_{i+1} - sigma_i) * v_i and the model's
prediction is x0_i = x(sigma_i) - sigma_i * v_i, so from the stored steps i-1 and i:

    x0_i = (sigma_{i+1} * x(sigma_i) - sigma_i * x(sigma_{i+1})) / (sigma_{i+1} - sigma_i)

with sigma_N = 0 after the last step. This is exact for ``FlowMatchEulerDiscreteScheduler``; for
multistep solvers (UniPC, Wan's default) it is the step's effective x0. The first stored step has
an x0 only when the initial noise is stored beside it (``noise.npy[.gz]``, ``step_init.npy[.gz]``
or their ``.pt`` forms).

sigma comes from the step metadata's ``timestep``; when that is missing, from the model's
``scheduler/scheduler_config.json`` and the step count, computed by diffusers' own scheduler class.
The sigmas are part of each item's input identity (``identity.input_params``): a changed timestep
or scheduler config decodes again exactly the steps whose sigma_i or sigma_{i+1} changed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExperimentError, LatentFileError
from .experiment import LatentStep, X0Inputs, metadata_timestep, tell_bad_timesteps
from .identity import add_input

NOISE_NAMES = tuple(f"{stem}{ext}" for stem in ("noise", "step_init") for ext in (".npy.gz", ".npy", ".pt.gz", ".pt"))
EXACT_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def recover_x0(x_in: np.ndarray, x_out: np.ndarray, sigma: float, sigma_next: float) -> np.ndarray:
    """x0 of the step that took x(sigma) = ``x_in`` to x(sigma_next) = ``x_out`` (float32)."""
    x_in = np.asarray(x_in, np.float32)
    x_out = np.asarray(x_out, np.float32)
    return ((sigma_next * x_in - sigma * x_out) / (sigma_next - sigma)).astype(np.float32)


@dataclass
class Scheduler:
    """The model's scheduler, when its config can be found: its class and, per step count, sigmas."""

    class_name: str | None = None
    config: dict[str, Any] | None = None
    source: str | None = None
    _sigmas: dict[int, list[float]] = field(default_factory=dict)

    @property
    def flow_matching(self) -> bool | None:
        """Whether the scheduler steps flow-matching latents (the only ones the x0 formula applies to)."""
        if self.class_name is None or self.config is None:
            return None
        return (self.class_name.startswith("FlowMatch") or bool(self.config.get("use_flow_sigmas"))
                or self.config.get("prediction_type") == "flow_prediction")

    @property
    def exact(self) -> bool | None:
        return None if self.class_name is None else self.class_name in EXACT_SCHEDULERS

    def sigmas(self, steps: int) -> list[float] | None:
        """sigma_0 .. sigma_N (N + 1 values, the last 0) as diffusers computes them for ``steps``."""
        if self.config is None:
            return None
        if steps not in self._sigmas:
            import diffusers

            cls = getattr(diffusers, self.class_name or "", None)
            if cls is None:
                return None
            scheduler = cls.from_config(self.config)
            scheduler.set_timesteps(steps)
            self._sigmas[steps] = [float(s) for s in scheduler.sigmas]
        return self._sigmas[steps]

    def label(self) -> str:
        if self.exact:
            return f"exact: the model's x0 at each step ({self.class_name})"
        if self.class_name is not None:
            return f"approximate: the effective x0 of each step of the multistep solver {self.class_name}"
        return "exact for Euler flow-matching steps, the step's effective x0 for multistep solvers (scheduler unknown)"


def model_scheduler(model: str, vae_subfolder: str | None = None, vae_config: str | None = None) -> Scheduler:
    """The scheduler of the model the experiment names, found locally (never downloads)."""
    from .errors import LatentDecoderError
    from .models import resolve_model

    try:
        resolved = resolve_model(model, vae_subfolder, vae_config, download=False)
    except LatentDecoderError:
        return Scheduler()
    return find_scheduler(resolved.folder)


def find_scheduler(vae_folder: Path | None) -> Scheduler:
    """The scheduler config beside the model's VAE (``<model>/scheduler/scheduler_config.json``)."""
    if vae_folder is None:
        return Scheduler()
    for root in (vae_folder.parent, vae_folder):
        path = root / "scheduler" / "scheduler_config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            return Scheduler(config.get("_class_name"), config, str(path))
    return Scheduler()


def _metadata(step: LatentStep) -> dict[str, Any]:
    meta = step.read_metadata() or {}
    return meta if "_error" not in meta else {}


@dataclass
class X0Plan:
    """The steps whose x0 can be recovered (``LatentStep.x0`` set), and why the others cannot."""

    steps: list[LatentStep] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # item key -> reason
    sigma_sources: set[str] = field(default_factory=set)

    @property
    def sigma_text(self) -> str:
        return f"sigma from {', '.join(sorted(self.sigma_sources)) or '-'}"

    def label(self, scheduler: Scheduler) -> str:
        """What the view shows: exact or approximate, and where sigma came from (the run, the summary,
        the gallery and ``inspect`` all say it in these words)."""
        return f"{scheduler.label()}; {self.sigma_text}"


def attach_x0(steps: list[LatentStep], scheduler: Scheduler) -> X0Plan:
    """Give every step of every video its x0 inputs; steps without them go to ``unavailable``. A
    metadata timestep that is not a number is taken as none (sigma from the scheduler), with one
    warning for all such steps."""
    if scheduler.flow_matching is False:
        raise ExperimentError(f"--view x0 needs latents of a flow-matching scheduler; the model's scheduler is "
                              f"{scheduler.class_name} ({scheduler.source})")
    plan = X0Plan()
    by_video: dict[str, list[LatentStep]] = {}
    for step in steps:
        by_video.setdefault(step.video_key, []).append(step)
    bad: dict[str, str] = {}
    for video_steps in by_video.values():
        _attach_video(sorted(video_steps, key=lambda s: s.step_index), scheduler, plan, bad)
    tell_bad_timesteps(bad)
    return plan


def _timestep(step: LatentStep, meta: dict[str, Any], bad: dict[str, str]) -> float | None:
    try:
        return metadata_timestep(meta)
    except ValueError as exc:
        bad[str(step.metadata_path)] = str(exc)
        return None


def _attach_video(steps: list[LatentStep], scheduler: Scheduler, plan: X0Plan, bad: dict[str, str]) -> None:
    metas = [_metadata(s) for s in steps]
    totals = [m.get("total_steps") for m in metas if isinstance(m.get("total_steps"), int)]
    total = totals[0] if totals else None
    by_index = {s.step_index: (s, _timestep(s, m, bad)) for s, m in zip(steps, metas)}
    video_dir = steps[0].path.parent
    noise = next((video_dir / n for n in NOISE_NAMES if (video_dir / n).is_file()), None)
    for step in steps:
        i = step.step_index
        try:
            sigma, source = _sigma(i, by_index[i][1], total, scheduler, step)
            nxt = by_index.get(i + 1)
            if total is not None and i == total - 1:
                sigma_next = 0.0
            elif nxt is not None and nxt[1] is not None:
                sigma_next = nxt[1] / 1000.0
            else:
                sigma_next, _ = _sigma(i + 1, None, total, scheduler, step)
        except ExperimentError as exc:
            plan.unavailable[step.key] = str(exc)
            continue
        if i == 0 or (i - 1) not in by_index:
            previous = noise if i == 0 else None
            if previous is None:
                plan.unavailable[step.key] = (
                    "x0 not available: no initial noise stored (noise.npy[.gz] or step_init.npy[.gz] beside the steps)"
                    if i == 0 else f"x0 not available: the previous step {i - 1} is not stored")
                continue
            prev_file, prev_stat = str(previous), previous.stat()
            prev_size, prev_mtime = prev_stat.st_size, prev_stat.st_mtime_ns
        else:
            prev_step = by_index[i - 1][0]
            prev_file, prev_size, prev_mtime = prev_step.file, prev_step.size, prev_step.mtime_ns
        if sigma_next >= sigma:
            plan.unavailable[step.key] = (f"x0 not available: sigma does not decrease at step {i} "
                                          f"({sigma:g} -> {sigma_next:g}); not a flow-matching schedule?")
            continue
        plan.sigma_sources.add(source)
        plan.steps.append(add_input(step, prev_size, prev_mtime, x0=X0Inputs(prev_file, sigma, sigma_next)))


def _sigma(index: int, timestep: float | None, total: int | None, scheduler: Scheduler,
           step: LatentStep) -> tuple[float, str]:
    """sigma_index: the metadata's timestep / 1000, else the scheduler's sigmas for ``total`` steps."""
    if timestep is not None:
        return timestep / 1000.0, "step metadata (timestep / 1000)"
    sigmas = scheduler.sigmas(total) if total else None
    if sigmas is not None and index < len(sigmas):
        return sigmas[index], f"{scheduler.source} ({scheduler.class_name}, {total} steps)"
    missing = [] if total else ["total_steps"]
    if scheduler.config is None:
        missing.append("the model's scheduler/scheduler_config.json")
    raise ExperimentError(f"{step.metadata_path}: no timestep for step {index}, and no "
                          f"{' nor '.join(missing) or 'sigma for it'} to compute it from")


def read_x0(step: LatentStep, current: bytes, previous: bytes) -> np.ndarray:
    """Parse both stored latents and recover the step's x0 (batched or not, as stored)."""
    from .latents import read_array

    x_out = read_array(current, step.file)
    x_in = read_array(previous, step.x0.previous)
    if x_in.shape != x_out.shape:
        raise LatentFileError(f"{step.file}: x0 needs {step.x0.previous} of the same shape, "
                              f"found {tuple(x_in.shape)} vs {tuple(x_out.shape)}")
    return recover_x0(x_in, x_out, step.x0.sigma, step.x0.sigma_next)
