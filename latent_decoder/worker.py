"""DecodeWorker: one VAE on one device, a ``compute.Worker`` whose frames come from the VAE.

One instance decodes one latent at a time: Wan's VAE keeps its causal cache on the module, so
concurrent decodes would corrupt it.

Device trouble is told apart from bad items: a CUDA out-of-memory is retried once with the VAE's
tiling, then fails the item; a sticky CUDA error (device-side assert, illegal address) poisons the
device for good, so it raises ``DeviceFailure`` and stops whoever holds the device.
"""
from __future__ import annotations

import logging
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .compute import Worker
from .errors import DecodeError, DeviceError, DeviceFailure, ItemError, first_line
from .families import DecodeContext, Family, detect
from .latents import Layout, parse_latent, validate_latent
from .lifecycle import ItemWork
from .models import ResolvedModel, load_vae, resolve_model
from .settings import OutputSettings
from .wan_stream import NonFiniteOutput, decode_to_uint8, streams_correctly, video_to_uint8

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Messages of CUDA errors after which the CUDA context is unusable (every later call fails too).
STICKY_CUDA_ERRORS = ("device-side assert", "illegal memory access", "illegal address", "illegal instruction",
                      "unspecified launch failure", "misaligned address", "uncorrectable ecc",
                      "cudaerrorlaunchfailure", "an illegal", "hardware stack error")


def is_sticky_device_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return ("cuda" in text or "acceleratorerror" in type(exc).__name__.lower()) and any(
        marker in text for marker in STICKY_CUDA_ERRORS)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


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


class DeviceWorker(Worker):
    """A decoder that runs torch on one device in one precision: what the VAE and the tiny decoder share
    (the device and its failures, the rule's condition file)."""

    rule: Family  # set by the subclass: the family rule its latents are decoded by

    def __init__(self, output: OutputSettings, output_dir: Path | None = None, device: str = "auto",
                 name: str = "inline") -> None:
        import torch

        self.device = resolve_device(device)
        self.device_name = (
            f"{self.device} ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else str(self.device)
        )
        super().__init__(output, output_dir, self.device_name, name)
        self.dtype = torch_dtype(output.dtype)
        if self.device.type == "cpu" and output.dtype == "float16":
            warnings.warn("float16 on CPU is slow and poorly supported; prefer float32 or bfloat16", stacklevel=3)

    def non_finite(self, source: str, what: str) -> DecodeError:
        """The item error for a decode whose output holds NaN/Inf (an overflow), naming a safer dtype."""
        others = " or ".join(d for d in ("bfloat16", "float32") if d != self.output.dtype)
        return DecodeError(f"{source}: {what}'s output holds NaN/Inf values in {self.output.dtype} "
                           f"(overflow?); decode with --dtype {others}")

    @property
    def latent_layout(self) -> Layout:
        return self.rule.layout

    def parse_condition(self, work: ItemWork) -> "torch.Tensor | None":
        """The item's condition file, as ``prepare`` read it, parsed when this rule reads it (never read here:
        with ``--io driver`` this process may not see the experiment)."""
        path = work.step.condition
        if work.condition is None or path is None or not self.rule.reads_condition(path):
            return None
        import torch

        return torch.from_numpy(parse_latent(work.condition, path, self.rule.layout).astype(np.float32))

    def _free_device_memory(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def item_error(self, exc: Exception, work: ItemWork) -> ItemError:
        """A sticky CUDA error stops the device's holder; out-of-memory frees what it can first."""
        if is_sticky_device_error(exc):
            raise DeviceFailure(f"{self.device_name}: {first_line(exc)} while decoding {work.step.path}; "
                                "the device cannot be used any more") from exc
        if is_out_of_memory(exc):
            self._free_device_memory()
        return super().item_error(exc, work)

    def synchronize(self) -> None:
        """Wait for the device, so a decode's time is its own and an asynchronous CUDA error surfaces here."""
        if self.device.type == "cuda":
            import torch

            try:
                torch.cuda.synchronize(self.device)
            except RuntimeError as exc:
                if is_sticky_device_error(exc):
                    raise DeviceFailure(f"{self.device_name}: {first_line(exc)}") from exc
                raise


class DecodeWorker(DeviceWorker):
    """Holds one VAE on one device and computes items; knows nothing of the journal."""

    def __init__(
        self,
        output: OutputSettings,
        output_dir: Path | None = None,
        device: str = "auto",
        model: ResolvedModel | None = None,
        name: str = "inline",
    ) -> None:
        super().__init__(output, output_dir, device, name)
        self.model = model or resolve_model(output.model, output.vae_subfolder, output.vae_config)
        self.detection = detect(self.model.class_name, self.model.pipeline, output.family)
        self.rule = self.detection.family
        self.vae = load_vae(self.model, self.device, self.dtype)
        # Wan: decode_to_uint8 streams frame by frame through lean modules, once shown to give vae.decode here
        self.streams = streams_correctly(self.vae, self.device)
        log.info("loaded %s (%s rule: %s; %s) from %s on %s", self.model.class_name, self.rule.name,
                 self.detection.reason, self.output.dtype, self.model.folder, self.device_name)

    def context(self, condition: "torch.Tensor | None" = None) -> DecodeContext:
        """What the family rule reads besides the latent (``condition``: the video's condition latent)."""
        return DecodeContext(self.vae, self.output.video, self.model.pipeline, self.output.decode_options,
                             condition)

    # ------------------------------------------------------------------ in-memory decode

    def decode(self, latent: np.ndarray, source: str = "<array>", condition: "torch.Tensor | None" = None
               ) -> np.ndarray:
        """Decode one model-space latent, in its family's layout with or without the batch axis (Wan:
        ``[1,C,T,H,W]``, CogVideoX: ``[1,T,C,H,W]``, LTX-Video: ``[1,S,C]``), to ``[F,H,W,3]`` uint8;
        ``condition``: the video's condition latent, for a rule that reads one.

        Non-finite output (fp16 overflow) is an error, never a black or white video."""
        import torch

        latent = validate_latent(np.asarray(latent), source, self.rule.layout)
        ctx = self.context(condition)
        self.rule.check_shape(latent.shape, ctx, source)
        with torch.inference_mode():
            z = torch.from_numpy(np.ascontiguousarray(latent)).to(self.device, torch.float32)
            try:
                if self.rule.decodes_plainly and self.streams:  # vae.decode(z), streamed
                    return decode_to_uint8(self.vae, self.rule.to_decoder_input(z, ctx), scale=self.output.scale)
                video = self.rule.decode_latent(z, ctx)  # [1, 3, F, H, W] in [-1, 1]
                if not bool(torch.isfinite(video).all()):
                    raise NonFiniteOutput(source)
                return video_to_uint8(video, self.output.scale).cpu().numpy()
            except NonFiniteOutput:
                raise self.non_finite(source, "the VAE") from None

    def _decode_with_fallback(self, latent: np.ndarray, source: str, condition: "torch.Tensor | None") -> np.ndarray:
        """``decode``; on out-of-memory once more with the VAE's tiling (slower, far less memory)."""
        try:
            return self.decode(latent, source, condition)
        except Exception as exc:
            if not is_out_of_memory(exc) or not hasattr(self.vae, "enable_tiling"):
                raise
            out_of_memory = exc
        self._free_device_memory()
        tiled = bool(getattr(self.vae, "use_tiling", False))  # MiniMax H3's VAE tiles by default: left so
        try:
            self.vae.enable_tiling()
        except NotImplementedError:  # diffusers' answer for a VAE without tiling (SVD's temporal decoder)
            raise out_of_memory from None
        log.warning("%s: out of memory (%s); trying again with tiling", source, first_line(out_of_memory))
        try:
            return self.decode(latent, source, condition)
        finally:
            if not tiled:
                self.vae.disable_tiling()

    # ------------------------------------------------------------------ the Worker hooks

    def to_frames(self, latent: np.ndarray, work: ItemWork) -> np.ndarray:
        """The VAE's decode of the item's latent (with its condition, for a rule that reads one)."""
        return self._decode_with_fallback(latent, str(work.step.path), self.parse_condition(work))

    def close(self) -> None:
        """Free the VAE and its device memory."""
        self.vae = None
        self._free_device_memory()

    def details(self) -> dict[str, Any]:
        return {"model": self.model.source, "model_folder": str(self.model.folder), "vae_class": self.model.class_name,
                "family": self.rule.name, "family_rule": self.detection.reason, "mirrors": self.rule.mirrors,
                "device": self.device_name, "dtype": self.output.dtype}
