"""TinyWorker: a ``compute.Worker`` whose frames come from a tiny decoder on a device (a TAEHV-family
video decoder, or a TAESD-family image decoder run on every frame: the checkpoint says which).

It reads the model's VAE config only (the family rule brings the stored latent to its
``[B, C, T, H, W]`` grid, without de-normalising: the tiny decoders take the sampler's latents), loads
the tiny decoder file the run was planned with (the same digest, or the run stops), and gives the full
VAE's frames and size, rounded to uint8 like every decoder's. The runner, both executors, the journal
and the views treat it like any decoder.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TinyMismatchError
from ..families import DecodeContext
from ..latents import validate_latent
from ..lifecycle import ItemWork
from ..models import ResolvedModel
from ..settings import OutputSettings
from ..worker import DeviceWorker
from .model import frames_uint8
from .setup import TinySetup, resolve_tiny, tiny_input, trim_for

log = logging.getLogger(__name__)


class TinyWorker(DeviceWorker):
    """Holds one tiny decoder on one device and computes items; knows nothing of the journal."""

    def __init__(self, output: OutputSettings, output_dir: Path | None = None, device: str = "auto",
                 model: ResolvedModel | None = None, name: str = "inline") -> None:
        super().__init__(output, output_dir, device, name)
        if not output.tiny_file:
            raise TinyMismatchError("--decoder tiny: the run's settings name no tiny decoder file")
        # the file is named by the settings: no experiment folder is searched (Path("."))
        self.setup: TinySetup = resolve_tiny(Path("."), output.model, output.vae_subfolder, output.vae_config,
                                             output.family, output.tiny_file, model)
        checkpoint = self.setup.checkpoint
        if checkpoint.identity != output.tiny_weights:
            raise TinyMismatchError(f"{checkpoint.path} changed since the run was planned ({output.tiny_weights} -> "
                                    f"{checkpoint.identity}); run again")
        self.rule = self.setup.rule
        self.decoder = checkpoint.decoder().to(self.device, self.dtype)
        log.info("loaded tiny decoder %s (%s rule; %s) on %s", checkpoint.describe(), self.rule.name,
                 output.dtype, self.device_name)

    def decode(self, latent: np.ndarray, source: str = "<array>", condition: Any = None) -> np.ndarray:
        """One stored latent (the rule's layout, batch axis included) -> ``[F, H, W, 3]`` uint8 frames of
        the full decode's count and size (resized by ``--scale``)."""
        latent = validate_latent(np.asarray(latent), source, self.rule.layout)
        ctx = DecodeContext(self.setup.vae, self.output.video, self.setup.model.pipeline, self.output.decode_options,
                            condition)
        x = tiny_input(self.rule, ctx, latent, source)
        trim = trim_for(self.rule, ctx, x.shape[1], self.decoder.config.t_upscale, self.setup.segment, source)
        x = x.to(self.device, self.dtype)
        try:
            return frames_uint8(self.decoder, x, trim, self.setup.segment, self.output.scale)
        except FloatingPointError:
            raise self.non_finite(source, "the tiny decoder") from None

    def to_frames(self, latent: np.ndarray, work: ItemWork) -> np.ndarray:
        return self.decode(latent, str(work.step.path), self.parse_condition(work))

    def close(self) -> None:
        self.decoder = None
        self._free_device_memory()

    def details(self) -> dict[str, Any]:
        return {"model": self.setup.model.source, "model_folder": str(self.setup.model.folder),
                "vae_class": self.setup.model.class_name, "family": self.rule.name, **self.setup.describe(),
                "device": self.device_name, "dtype": self.output.dtype}
