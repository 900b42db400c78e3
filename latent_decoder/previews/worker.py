"""PreviewWorker: a ``compute.Worker`` whose frames come from a linear map instead of a VAE.

The runner, the executors and the lifecycle write its outputs (MP4 or PNG, thumbnail, journal
entry) like any decode's. It loads no model and uses no device: ``to_frames`` projects at latent
resolution (about a millisecond), and ``full_frames`` expands to the full video's frames and size
on the encoder's thread, just before encoding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..compute import Worker
from ..latents import Layout, validate_latent
from ..lifecycle import ItemWork
from ..settings import OutputSettings
from .projection import expand, project
from .setup import PreviewSetup, resolve_preview


class PreviewWorker(Worker):
    """Previews items of one model with the map its run was planned with; knows nothing of the journal."""

    action = "preview"

    def __init__(self, output: OutputSettings, output_dir: Path | None = None, device: str = "cpu",
                 model: Any = None, name: str = "preview", setup: PreviewSetup | None = None) -> None:
        super().__init__(output, output_dir, "cpu (preview)", name)
        self.setup = setup or resolve_preview(output.model, output.video, output.vae_subfolder, output.vae_config,
                                              family=output.family, pinned=output.preview_factors)
        self.geometry = self.setup.geometry

    @property
    def latent_layout(self) -> Layout:
        return self.geometry.layout

    # ------------------------------------------------------------------ in memory

    def project(self, latent: np.ndarray, source: str = "<array>") -> tuple[np.ndarray, tuple[int, int, int]]:
        """A stored latent -> its ``[T, h, w, 3]`` uint8 preview at latent resolution, and the
        (frames, height, width) the full VAE would decode it to."""
        latent = validate_latent(np.asarray(latent), source, self.geometry.layout)
        self.geometry.check(tuple(latent.shape), source)
        grid = self.geometry.to_grid(latent)
        return project(grid, self.setup.preview), self.geometry.output_shape(grid.shape, self.output.scale)

    def decode(self, latent: np.ndarray, source: str = "<array>") -> np.ndarray:
        """Like ``DecodeWorker.decode``: one latent -> ``[F, H, W, 3]`` uint8 frames of the full decode's size."""
        small, (frames, height, width) = self.project(latent, source)
        return expand(small, frames, self.geometry.temporal, height, width)

    # ------------------------------------------------------------------ the Worker hooks

    def to_frames(self, latent: np.ndarray, work: ItemWork) -> np.ndarray:
        """Every latent frame projected, at latent resolution. The condition latent a full VAE's rule
        blends in is of no use to the linear map."""
        small, _ = self.project(latent, str(work.step.path))
        return small

    def video_shape(self, frames: np.ndarray) -> tuple[int, ...]:
        """The full decode's ``[F, H, W, 3]`` for a ``[T, h, w, 3]`` projection."""
        t, h, w, _ = frames.shape
        return (*self.geometry.output_shape((1, 0, t, h, w), self.output.scale), 3)

    def full_frames(self, frames: np.ndarray, work: ItemWork) -> np.ndarray:
        """Repeat latent frames and pixels to the full video's frames and size."""
        count, height, width, _ = work.frames_shape
        return expand(frames, count, self.geometry.temporal, height, width)

    def details(self) -> dict[str, Any]:
        return {"model": self.output.model, **self.setup.describe(), "device": self.identity.device}
