"""DecodeWorker: one VAE on one device, and the one body every executor runs per item.

The body is split into stages so an executor can overlap them (read the next latent and
encode the previous video on CPU threads while the device decodes), but each stage exists
once, here:

    begin (skip-if-done, read, validate) -> decode (device) -> encode (CPU) -> commit (disk)

``run(step)`` chains them for the simplest caller. ``process(step, data)`` runs the middle
stages on bytes a driver read, for a worker that does not see the output folder; the driver
then writes the result with ``commit_item``, the same function ``commit`` uses. Item failures
never escape a stage: they travel with the item and end in a "failed" record naming the file.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DecodeError, DeviceError, ItemError, describe_error
from .experiment import LatentStep
from .latents import parse_latent, read_latent_bytes, validate_latent
from .models import ResolvedModel, load_vae, resolve_model
from .plan import ItemState, OutputLayout, StepRecord, item_state, output_size, write_record
from .settings import OutputSettings
from .video import encode_jpeg, encode_mp4, encode_png, png_frame_name, write_dir_atomic, write_file_atomic

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def resolve_device(spec: str) -> "torch.device":
    """``auto`` -> first CUDA device if torch sees one, else CPU; explicit CUDA must exist."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise DeviceError(f"--device {spec!r} is not a torch device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: torch sees no CUDA device on {socket.gethostname()}")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise DeviceError(f"--device {spec}: only cpu and cuda devices are supported")
    return device


def torch_dtype(name: str) -> "torch.dtype":
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass(frozen=True)
class WorkerIdentity:
    """Who decoded an item; copied into its record."""

    host: str
    device: str
    worker: str
    pid: int


@dataclass
class ItemWork:
    """One item travelling through the stages; ``error`` set means it is on its way to a failed record.

    Plain data (picklable) so it can travel between a Ray actor and the driver.
    """

    step: LatentStep
    latent: np.ndarray | None = None
    frames: np.ndarray | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # png frame name -> bytes (png format)
    video: bytes | None = None  # mp4 bytes (mp4 format)
    thumbnail: bytes | None = None
    error: ItemError | None = None
    load_seconds: float = 0.0
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    latent_shape: list[int] | None = None
    latent_dtype: str | None = None
    frames_shape: list[int] | None = None
    identity: WorkerIdentity | None = None


def commit_item(layout: OutputLayout, output: OutputSettings, work: ItemWork) -> StepRecord:
    """Write an item's outputs atomically, then its record (last, so it marks completion).

    Needs no VAE: a driver commits what remote workers return with it.
    """
    step = work.step
    who = work.identity
    video_path = layout.video_path(step, output.format)
    thumb_path = layout.thumbnail_path(step)
    record = StepRecord(
        item=step.key, prompt=step.prompt, video=step.video, step=step.step, step_index=step.step_index,
        status="failed", latent_path=str(step.path), settings=output.fingerprint(),
        load_seconds=round(work.load_seconds, 4), decode_seconds=round(work.decode_seconds, 4),
        encode_seconds=round(work.encode_seconds, 4), latent_shape=work.latent_shape,
        latent_dtype=work.latent_dtype, device=who.device if who else None, host=who.host if who else None,
        worker=who.worker if who else None, pid=who.pid if who else None, metadata=step.read_metadata(),
    )
    if work.error is None:
        if output.format == "mp4":
            write_file_atomic(video_path, work.video)
        else:
            write_dir_atomic(video_path, work.files)
        write_file_atomic(thumb_path, work.thumbnail)
        record.status = "ok"
        record.frames_shape = work.frames_shape
        record.outputs = {"video": layout.rel(video_path), "thumbnail": layout.rel(thumb_path)}
        record.output_sizes = {k: output_size(layout.root / v) for k, v in record.outputs.items()}
    else:
        # Outputs of an earlier decode no longer match this item's record: remove them.
        for path in (layout.video_path(step, "mp4"), layout.video_path(step, "png"), thumb_path):
            if path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        record.error = str(work.error)
        record.error_type = type(work.error).__name__
    record.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_record(layout, step, record)
    return record


class DecodeWorker:
    """Holds one VAE on one device. One instance decodes one latent at a time: Wan's VAE keeps
    its causal cache on the module, so concurrent decodes on one instance would corrupt it."""

    def __init__(
        self,
        output: OutputSettings,
        output_dir: Path | None = None,
        device: str = "auto",
        model: ResolvedModel | None = None,
        force: bool = False,
        name: str = "inline",
    ) -> None:
        import torch

        self.output = output
        self.layout = OutputLayout(Path(output_dir)) if output_dir is not None else None
        self.force = force
        self.device = resolve_device(device)
        self.dtype = torch_dtype(output.dtype)
        if self.device.type == "cpu" and output.dtype == "float16":
            warnings.warn("float16 on CPU is slow and poorly supported; prefer float32 or bfloat16", stacklevel=2)
        self.model = model or resolve_model(output.model, output.vae_subfolder, output.vae_config)
        self.vae, self.rule = load_vae(self.model, self.device, self.dtype)
        self.host = socket.gethostname()
        self.device_name = (
            f"{self.device} ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else str(self.device)
        )
        self.identity = WorkerIdentity(self.host, self.device_name, name, os.getpid())
        log.info("loaded %s (%s, %s) from %s on %s", self.model.class_name, self.rule.family, self.output.dtype,
                 self.model.folder, self.device_name)

    # ------------------------------------------------------------------ in-memory decode

    def decode(self, latent: np.ndarray, source: str = "<array>") -> np.ndarray:
        """Decode one model-space latent, in its family's layout with or without the batch axis (Wan:
        ``[1,C,T,H,W]``, CogVideoX: ``[1,T,C,H,W]``, LTX-Video: ``[1,S,C]``), to ``[F,H,W,3]`` uint8."""
        import torch
        import torch.nn.functional as F

        latent = validate_latent(np.asarray(latent), source, self.rule.layout)
        video_settings = self.output.video
        self.rule.check_shape(latent.shape, self.vae, video_settings, source)
        with torch.inference_mode():
            z = torch.from_numpy(np.ascontiguousarray(latent)).to(self.device, torch.float32)
            z = self.rule.to_decoder_input(z, self.vae, video_settings).to(self.dtype)
            video = self.rule.decode(self.vae, z)  # [1, 3, F, H, W] in [-1, 1]
            video = video[0].permute(1, 0, 2, 3).float()  # [F, 3, H, W]
            if self.output.scale != 1.0:
                video = F.interpolate(video, scale_factor=self.output.scale, mode="bilinear",
                                      antialias=self.output.scale < 1.0, align_corners=False)
            frames = ((video + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
            return frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    # ------------------------------------------------------------------ the item body, in stages

    def _layout(self) -> OutputLayout:
        if self.layout is None:
            raise RuntimeError("this DecodeWorker was built without an output folder")
        return self.layout

    def begin(self, step: LatentStep) -> ItemWork | None:
        """Skip-if-done, then read and validate the latent (CPU). None means already done."""
        state = item_state(self._layout(), step, self.output, self.force)
        if state is ItemState.DONE:
            return None
        return self.load(step)

    def load(self, step: LatentStep, data: bytes | None = None) -> ItemWork:
        """Read (unless given the file's bytes) and validate the latent; no output folder needed."""
        work = ItemWork(step, identity=self.identity)
        start = time.perf_counter()
        try:
            work.latent = parse_latent(read_latent_bytes(step.path) if data is None else data, step.path,
                                       self.rule.layout)
            work.latent_shape = list(work.latent.shape)
            work.latent_dtype = str(work.latent.dtype)
        except ItemError as exc:
            work.error = exc
        work.load_seconds = time.perf_counter() - start
        return work

    def decode_stage(self, work: ItemWork) -> ItemWork:
        """Run the VAE (device)."""
        if work.error is not None:
            return work
        start = time.perf_counter()
        try:
            work.frames = self.decode(work.latent, str(work.step.path))
            work.frames_shape = list(work.frames.shape)
        except ItemError as exc:
            work.error = exc
        except Exception as exc:  # a torch/diffusers failure on this latent: record it, go on
            work.error = DecodeError(f"{work.step.path}: decode failed: {describe_error(exc)}")
            log.debug("decode of %s failed", work.step.key, exc_info=True)
        finally:
            if self.device.type == "cuda":
                import torch

                torch.cuda.synchronize(self.device)
        work.decode_seconds = time.perf_counter() - start
        work.latent = None
        return work

    def encode_stage(self, work: ItemWork) -> ItemWork:
        """Frames -> encoded bytes (CPU)."""
        if work.error is not None:
            return work
        start = time.perf_counter()
        try:
            frames = work.frames
            if self.output.format == "mp4":
                work.video = encode_mp4(frames, self.output.fps, self.output.crf)
            else:
                work.files = {png_frame_name(i): encode_png(f) for i, f in enumerate(frames)}
            work.thumbnail = encode_jpeg(frames[0])
        except Exception as exc:
            work.error = DecodeError(f"{work.step.path}: encoding {self.output.format} failed: {describe_error(exc)}")
        work.encode_seconds = time.perf_counter() - start
        return work

    def commit(self, work: ItemWork) -> StepRecord:
        """Write outputs atomically, then the record (last, so it marks completion)."""
        return commit_item(self._layout(), self.output, work)

    def process(self, step: LatentStep, data: bytes) -> ItemWork:
        """Everything but the disk: bytes a driver read in, encoded files out (frames dropped)."""
        work = self.encode_stage(self.decode_stage(self.load(step, data)))
        work.frames = None
        return work

    def run(self, step: LatentStep) -> StepRecord | None:
        """The whole body for one item; None if it was already done."""
        work = self.begin(step)
        if work is None:
            return None
        return self.commit(self.encode_stage(self.decode_stage(work)))

    def close(self) -> None:
        """Free the VAE and its device memory."""
        import torch

        self.vae = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        return {"model": self.model.source, "model_folder": str(self.model.folder), "vae_class": self.model.class_name,
                "family": self.rule.family, "mirrors": self.rule.mirrors, "device": self.device_name,
                "dtype": self.output.dtype, "host": self.host, "worker": self.identity.worker, "pid": self.identity.pid}
