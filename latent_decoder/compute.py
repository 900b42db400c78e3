"""The compute stage of the item lifecycle, written once: the ``Worker`` contract of every decoder.

Between ``lifecycle.prepare`` (the bytes of an item's files) and ``lifecycle.write_outputs`` a
worker computes the item: ``decode_stage`` parses and validates the stored latent, records its
shape, dtype and statistics, and turns it into frames; ``encode_stage`` encodes the frames on CPU.
An executor may run the two on different threads, so the device never waits for the encoder, or
call ``compute`` for both. The worker stamps its identity and the stage times on the item, and an
item's failure never escapes a stage: an ``ItemError`` travels with the item as it is, any other
exception becomes a ``DecodeError`` naming the file. Only a run-level stop (``RunStoppedError``,
e.g. the ``DeviceFailure`` of a broken GPU) is raised.

A decoder subclasses ``Worker`` and implements ``to_frames`` (a parsed latent -> frames); the
hooks below it cover what decoders really differ in. ``worker.DecodeWorker`` runs a diffusers VAE
on a device, ``tiny.worker.TinyWorker`` a tiny TAEHV-family decoder, ``previews.worker.PreviewWorker``
a linear latent -> RGB map.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import DecodeError, ItemError, describe_error
from .journal import StepRecord
from .latents import BCTHW, Layout, latent_stats, parse_stored_latent, validate_latent
from .layout import OutputLayout
from .lifecycle import ItemWork, WorkerIdentity, prepare, write_outputs
from .settings import OutputSettings
from .video import encode_jpeg, encode_mp4, encode_png, png_frame_name

log = logging.getLogger(__name__)


class Worker(ABC):
    """One decoder in one process: computes items, knows nothing of the journal."""

    action: ClassVar[str] = "decode"  # what a wrapped item error says failed: "<file>: decode failed: ..."

    def __init__(self, output: OutputSettings, output_dir: Path | None = None, device: str = "cpu",
                 name: str = "inline") -> None:
        """``output_dir``: where ``run_item`` writes; ``device``: the device as the records name it;
        ``name``: this worker among the run's."""
        self.output = output
        self.layout = OutputLayout(Path(output_dir)) if output_dir is not None else None
        self.identity = WorkerIdentity(socket.gethostname(), device, name, os.getpid())

    # ------------------------------------------------------------------ what a decoder implements

    @abstractmethod
    def to_frames(self, latent: np.ndarray, work: ItemWork) -> np.ndarray:
        """A validated stored latent (in ``latent_layout``, batch axis included) -> ``[F, H, W, 3]``
        uint8 frames. ``work`` is the item (its step; the condition bytes ``prepare`` read). Raise an
        ``ItemError`` for what is wrong with this item; anything else is wrapped as one."""

    @property
    def latent_layout(self) -> Layout:
        """The stored latent's axes, in which it is parsed and validated (``[B, C, T, H, W]`` unless the
        decoder says otherwise: a VAE's family rule, the preview's geometry)."""
        return BCTHW

    def video_shape(self, frames: np.ndarray) -> tuple[int, ...]:
        """The ``[F, H, W, 3]`` shape of the video ``frames`` stand for (``to_frames`` may return them
        smaller, made full size by ``full_frames`` just before encoding)."""
        return tuple(frames.shape)

    def full_frames(self, frames: np.ndarray, work: ItemWork) -> np.ndarray:
        """``to_frames``'s frames at ``work.frames_shape``, on the encoder's thread."""
        return frames

    def item_error(self, exc: Exception, work: ItemWork) -> ItemError:
        """The item error a failure of ``to_frames`` other than an ``ItemError`` becomes; a failure
        that concerns the whole run (a broken device) is raised here instead."""
        log.debug("%s of %s failed", self.action, work.step.key, exc_info=exc)
        return DecodeError(f"{work.step.path}: {self.action} failed: {describe_error(exc)}")

    def synchronize(self) -> None:
        """Wait for the device's queued work at the end of each ``decode_stage`` (none by default)."""

    def details(self) -> dict[str, Any]:
        """What ``describe`` says about the decoder, before who runs it."""
        return {"model": self.output.model, "device": self.identity.device}

    def close(self) -> None:
        """Free the model and its device memory (nothing by default)."""

    # ------------------------------------------------------------------ the compute stage

    def decode_stage(self, work: ItemWork) -> ItemWork:
        """Parse and validate the latent, record its stats, make the frames. Raises only a
        run-level stop."""
        work.identity = self.identity
        if work.error is not None:
            return work
        start = time.perf_counter()
        path = work.step.path
        try:
            if work.latent is None:
                work.latent, work.latent_dtype = parse_stored_latent(work.data, path, self.latent_layout)
            else:  # already parsed (the x0 view): validate it like a stored latent
                work.latent = validate_latent(work.latent, path, self.latent_layout)
                work.latent_dtype = str(work.latent.dtype)
            work.data = None
            work.latent_shape = list(work.latent.shape)
            work.latent_stats = latent_stats(work.latent, self.latent_layout)
            work.frames = self.to_frames(work.latent, work)
            work.frames_shape = list(self.video_shape(work.frames))
        except ItemError as exc:
            work.error = exc
        except Exception as exc:  # a failure on this latent: recorded, the run goes on
            work.error = self.item_error(exc, work)
        finally:
            self.synchronize()
        work.decode_seconds = time.perf_counter() - start
        work.latent = None
        work.data = None
        work.condition = None
        return work

    def encode_stage(self, work: ItemWork) -> ItemWork:
        """Frames -> encoded bytes (CPU), as every decoder writes them: MP4 or PNG frames plus a
        first-frame thumbnail; the frames are dropped after."""
        if work.error is not None:
            return work
        start = time.perf_counter()
        output = self.output
        try:
            frames = self.full_frames(work.frames, work)
            if output.format == "mp4":
                work.video = encode_mp4(frames, output.fps, output.crf, output.preset)
            else:
                work.files = {png_frame_name(i): encode_png(f) for i, f in enumerate(frames)}
            work.thumbnail = encode_jpeg(frames[0])
        except Exception as exc:
            work.error = DecodeError(f"{work.step.path}: encoding {output.format} failed: {describe_error(exc)}")
        work.frames = None
        work.encode_seconds = time.perf_counter() - start
        return work

    def compute(self, work: ItemWork) -> ItemWork:
        """The whole compute stage: prepared bytes in, encoded files out."""
        return self.encode_stage(self.decode_stage(work))

    def run_item(self, step: Any) -> StepRecord:
        """prepare, compute and write outputs here (a worker that sees the output folder); the caller
        appends the returned record to the journal."""
        if self.layout is None:
            raise RuntimeError(f"this {type(self).__name__} was built without an output folder")
        return write_outputs(self.layout, self.output, self.compute(prepare(step)))

    def describe(self) -> dict[str, Any]:
        """The decoder and who runs it, as the run's summary records it."""
        who = self.identity
        return {**self.details(), "host": who.host, "worker": who.worker, "pid": who.pid}
