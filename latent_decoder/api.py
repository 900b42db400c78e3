"""Programmatic use, keeping the original tool's ``ExperimentLatentDecoder`` interface.

The class loads the VAE once and reuses it across calls; every decode goes through the same
runner (resume, lock, records, summary) as the command line.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .experiment import Experiment
from .journal import Journal, StepRecord
from .layout import OutputLayout
from .runner import RunReport, run_decode
from .settings import CliOptions, OutputSettings, RunSettings, resolve_settings
from .worker import DecodeWorker


@dataclass
class LatentDecodeResult:
    """The original tool's per-step result, now backed by the on-disk record."""

    success: bool
    error_message: str | None
    decode_time: float
    output_path: Path | None
    record: StepRecord


def _vae_choice(output: OutputSettings) -> tuple[Any, ...]:
    """What picks the VAE a worker holds: a worker is reused only while these stay the same."""
    return output.model, output.vae_subfolder, output.vae_config, output.dtype


def _result(layout: OutputLayout, record: StepRecord) -> LatentDecodeResult:
    video = record.outputs.get("video")
    return LatentDecodeResult(record.ok, record.error, record.decode_seconds,
                              layout.root / video if video else None, record)


class ExperimentLatentDecoder:
    """Decode an experiment's stored latents; ``cleanup()`` frees the VAE."""

    def __init__(self, experiment_dir: str | Path, device: str = "auto", *, model: str | None = None,
                 dtype: str = "float32", format: str = "mp4", fps: float | None = None, crf: int | None = None,
                 quality: float | None = None, scale: float = 1.0, force: bool = False,
                 progress: bool = False) -> None:
        self.experiment = Experiment.load(experiment_dir)
        self.experiment_dir = self.experiment.root
        self.device = device
        self.progress = progress
        self.options = CliOptions(device=device, model=model, dtype=dtype, format=format, fps=fps, crf=crf,
                                  quality=quality, scale=scale, force=force)
        self.worker: DecodeWorker | None = None
        self.last_report: RunReport | None = None

    # -- the original's accessors
    def get_model_id(self) -> str:
        return resolve_settings(self.experiment, self.options).output.model

    def get_video_settings(self) -> dict[str, Any]:
        vs = self.experiment.video_settings
        return {k: v for k, v in vs.__dict__.items() if v is not None}

    def find_latent_directories(self) -> list[Path]:
        return sorted({s.path.parent for s in self.experiment.discover()})

    def find_latent_steps(self, video_dir: str | Path) -> list[Path]:
        video_dir = Path(video_dir)
        return [s.path for s in self.experiment.discover() if s.path.parent == video_dir]

    # -- decoding
    def _worker(self, output: OutputSettings, settings: RunSettings) -> DecodeWorker:
        w = self.worker
        if w is None or _vae_choice(w.output) != _vae_choice(output):
            self.cleanup()
            w = self.worker = DecodeWorker(output, settings.output_dir, self.device)
        w.output = output
        return w

    def _run(self, **overrides: Any) -> RunReport:
        settings = resolve_settings(self.experiment, replace(self.options, **overrides))
        report = run_decode(settings, worker=self._worker(settings.output, settings), progress=self.progress)
        self.last_report = report
        return report

    def _results(self, report: RunReport, output_dir: Path) -> dict[str, dict[str, LatentDecodeResult]]:
        """This run's records, and the journal's for the items it found done."""
        layout = OutputLayout(output_dir)
        with Journal.open(layout, write=False) as journal:
            known = {r.item: r for r in journal.records() if r.status is not None}
        results: dict[str, dict[str, LatentDecodeResult]] = {}
        for step in report.plan.items:
            record = report.records.get(step.key) or known.get(step.key)
            if record is not None:
                results.setdefault(str(step.path.parent), {})[step.step] = _result(layout, record)
        return results

    def decode_video_directory(self, video_dir: str | Path, output_dir: str | Path | None = None,
                               fps: float | None = None, step_filter: str | None = None) -> dict[str, LatentDecodeResult]:
        """Decode one ``latents/<prompt>/<video>`` folder; returns ``{step_name: result}``."""
        video_dir = Path(video_dir)
        out = Path(output_dir) if output_dir else self.experiment.default_output_dir
        report = self._run(output_dir=out, prompt_filter=video_dir.parent.name, video_filter=video_dir.name,
                           step_filter=step_filter, fps=fps if fps is not None else self.options.fps)
        # Match by resolved path: the caller may spell the folder differently (relative vs absolute).
        wanted = video_dir.resolve()
        for key, steps in self._results(report, out).items():
            if Path(key).resolve() == wanted:
                return steps
        return {}

    def decode_experiment(self, output_dir: str | Path | None = None, prompt_filter: str | None = None,
                          video_filter: str | None = None,
                          step_filter: str | None = None) -> dict[str, dict[str, LatentDecodeResult]]:
        """Decode every matching item; returns ``{latent_video_dir: {step_name: result}}``."""
        out = Path(output_dir) if output_dir else self.experiment.default_output_dir
        report = self._run(output_dir=out, prompt_filter=prompt_filter, video_filter=video_filter,
                           step_filter=step_filter)
        return self._results(report, out)

    def decode_latent(self, latent: np.ndarray) -> np.ndarray:
        """Decode one latent array in memory to ``[T, H, W, 3]`` uint8 frames."""
        settings = resolve_settings(self.experiment, self.options)
        return self._worker(settings.output, settings).decode(latent)

    def cleanup(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def decode_latent(latent: np.ndarray, model: str, device: str = "auto", dtype: str = "float32", *,
                  frames: int | None = None, height: int | None = None, width: int | None = None,
                  vae_subfolder: str | None = None, vae_config: str | None = None, family: str | None = None,
                  decode_timestep: float | None = None, decode_noise_scale: float | None = None,
                  decode_chunk_size: int | None = None) -> np.ndarray:
    """Decode one model-space latent with ``model``'s VAE to ``[T, H, W, 3]`` uint8 frames.

    ``frames``/``height``/``width`` are the generated video's; packed (LTX) latents need them.
    ``family`` overrides the rule found from the model (``families/``); ``decode_timestep`` and
    ``decode_noise_scale`` are the LTX pipelines' call arguments, ``decode_chunk_size`` the image-VAE
    pipelines' (AnimateDiff, Latte, SVD, ...; ``None``: their defaults).
    """
    output = OutputSettings(model=model, dtype=dtype, vae_subfolder=vae_subfolder, vae_config=vae_config,
                            frames=frames, height=height, width=width, family=family,
                            decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale,
                            decode_chunk_size=decode_chunk_size)
    worker = DecodeWorker(output, device=device)
    try:
        return worker.decode(latent)
    finally:
        worker.close()
