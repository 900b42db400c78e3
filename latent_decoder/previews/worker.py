"""PreviewWorker: the compute stage of the item lifecycle with a linear map instead of a VAE.

Same interface as ``DecodeWorker`` (``decode_stage``, ``encode_stage``, ``compute``, ``describe``,
``identity``, ``output``, ``layout``, ``close``), so the runner, the executors and the lifecycle
write its outputs (MP4 or PNG, thumbnail, journal entry) like any decode's. It loads no model and
uses no device: ``decode_stage`` projects at latent resolution (about a millisecond), and
``encode_stage`` expands to the full video's frames and size just before encoding.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DecodeError, ItemError, describe_error
from ..journal import StepRecord
from ..latents import latent_stats, parse_stored_latent, validate_latent
from ..layout import OutputLayout
from ..lifecycle import ItemWork, WorkerIdentity, prepare, write_outputs
from ..settings import OutputSettings
from ..worker import encode_frames
from .projection import expand, project
from .setup import PreviewSetup, resolve_preview


class PreviewWorker:
    """Previews items of one model with the map its run was planned with; knows nothing of the journal."""

    def __init__(self, output: OutputSettings, output_dir: Path | None = None, device: str = "cpu",
                 model: Any = None, name: str = "preview", setup: PreviewSetup | None = None) -> None:
        self.output = output
        self.layout = OutputLayout(Path(output_dir)) if output_dir is not None else None
        self.setup = setup or resolve_preview(output.model, output.video, output.vae_subfolder, output.vae_config,
                                              family=output.family, pinned=output.preview_factors)
        self.geometry = self.setup.geometry
        self.host = socket.gethostname()
        self.identity = WorkerIdentity(self.host, "cpu (preview)", name, os.getpid())

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

    # ------------------------------------------------------------------ the compute stage

    def decode_stage(self, work: ItemWork) -> ItemWork:
        """Parse the bytes and project every latent frame; ``work.frames`` stays at latent
        resolution (``work.frames_shape`` is the full size) until ``encode_stage``."""
        work.identity = self.identity
        if work.error is not None:
            return work
        start = time.perf_counter()
        try:
            layout = self.geometry.layout
            if work.latent is None:
                work.latent, work.latent_dtype = parse_stored_latent(work.data, work.step.path, layout)
            else:  # already parsed (the x0 view): validate it like a stored latent
                work.latent = validate_latent(work.latent, work.step.path, layout)
                work.latent_dtype = str(work.latent.dtype)
            work.data = None
            work.latent_shape = list(work.latent.shape)
            work.latent_stats = latent_stats(work.latent, layout)
            work.frames, size = self.project(work.latent, str(work.step.path))
            work.frames_shape = [*size, 3]
        except ItemError as exc:
            work.error = exc
        except Exception as exc:  # numpy on a validated latent: unexpected, but an item failure all the same
            work.error = DecodeError(f"{work.step.path}: preview failed: {describe_error(exc)}")
        work.decode_seconds = time.perf_counter() - start
        work.latent = None
        work.data = None
        work.condition = None  # a latent the full VAE's rule blends in; the linear map has no use for it
        return work

    def encode_stage(self, work: ItemWork) -> ItemWork:
        """Expand to the full video's frames and size, then encode as every decoder does."""
        expand_seconds = 0.0
        if work.error is None and work.frames is not None:
            start = time.perf_counter()
            frames, height, width, _ = work.frames_shape
            work.frames = expand(work.frames, frames, self.geometry.temporal, height, width)
            expand_seconds = time.perf_counter() - start
        work = encode_frames(work, self.output)
        work.encode_seconds += expand_seconds
        return work

    def compute(self, work: ItemWork) -> ItemWork:
        return self.encode_stage(self.decode_stage(work))

    def run_item(self, step: Any) -> StepRecord:
        if self.layout is None:
            raise RuntimeError("this PreviewWorker was built without an output folder")
        return write_outputs(self.layout, self.output, self.compute(prepare(step)))

    def close(self) -> None:
        """Nothing to free: no model, no device."""

    def describe(self) -> dict[str, Any]:
        return {"model": self.output.model, **self.setup.describe(), "device": self.identity.device,
                "host": self.host, "worker": self.identity.worker, "pid": self.identity.pid}
