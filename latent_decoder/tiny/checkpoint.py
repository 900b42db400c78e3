"""Reading a tiny decoder file: ``.safetensors`` or a PyTorch ``.pth`` (only through
``torch.load(weights_only=True)``, which refuses a pickle that would run code), read once, so that the
digest recorded in every item's fingerprint is the digest of exactly the tensors decoded with; or a
diffusers ``AutoencoderTiny`` folder, by its weights file.

Its keys say which decoder it is: ``decoder.<index>...`` a TAEHV-family video decoder (``model.py``);
``<index>...`` (a published TAESD decoder file) or ``decoder.layers.<index>...`` (``AutoencoderTiny``) a
TAESD-family image decoder, run per frame (``taesd.py``); its shapes then give the configuration.

Every failure is one ``TinyCheckpointError`` line naming the file: missing, truncated, a pickle with
code in it, or tensors that are neither decoder.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TinyCheckpointError, TinyWeightsNotFoundError, first_line
from ..models import WEIGHTS_NAME
from . import taesd
from .model import NotTaehvDecoder, PieceDecoder, TinyConfig, config_from_state_dict, decoder_keys, load_decoder

SUFFIXES = (".safetensors", ".pth")


@dataclass(frozen=True)
class TinyCheckpoint:
    """A tiny decoder file's decoder tensors, the configuration they describe and the file's digest."""

    path: Path
    digest: str  # SHA-256 of the file's bytes
    config: TinyConfig | taesd.TaesdConfig
    state: dict[str, Any]  # the decoder's tensors, keyed as its module's state dict

    def decoder(self) -> PieceDecoder:
        """The decoder these tensors make (on the CPU, in the file's dtype)."""
        if isinstance(self.config, taesd.TaesdConfig):
            return taesd.load_decoder(self.state, self.config)
        return load_decoder(self.state, self.config)

    @property
    def identity(self) -> str:
        """What the settings fingerprint records: another file (another digest) decodes again."""
        return f"sha256:{self.digest[:16]}"

    def describe(self) -> str:
        return f"{self.path.name} ({self.config.describe()})"


def _tensors(data: bytes, path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(data)
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise TinyCheckpointError(f"{path}: truncated or not a safetensors file ({first_line(exc)})") from None
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        called = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if called:
            raise TinyCheckpointError(f"{path}: refused: the pickle calls {called.group(1)}, code that would run on "
                                      f"loading (only tensors are read: torch.load weights_only=True)") from None
        what = "truncated" if "truncated" in text.lower() else "not a PyTorch checkpoint"
        raise TinyCheckpointError(f"{path}: {what} (an unreadable pickle)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise TinyCheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict):
        raise TinyCheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of a tiny decoder")
    return state


def _decoder(tensors: dict[str, Any], path: Path) -> tuple[dict[str, Any], TinyConfig | taesd.TaesdConfig]:
    """The decoder tensors and their configuration, by the keys' layout (see the module's docstring)."""
    video = decoder_keys(tensors)
    if video:
        try:
            return video, config_from_state_dict(video)
        except NotTaehvDecoder as exc:
            raise TinyCheckpointError(f"{path}: not a TAEHV-family decoder ({exc})") from None
    image, layout = taesd.decoder_keys(tensors)
    if image:
        try:
            return image, taesd.config_from_state_dict(image, layout)
        except taesd.NotTaesdDecoder as exc:
            raise TinyCheckpointError(f"{path}: not a TAESD-family decoder ({exc})") from None
    raise TinyCheckpointError(f"{path}: not a TAEHV-family decoder nor a TAESD one (no decoder.<i>.* tensors, "
                              f"nor a TAESD decoder file's <i>.* or an AutoencoderTiny's decoder.layers.<i>.*)")


def _in_diffusers_folder(folder: Path) -> Path:
    """A diffusers ``AutoencoderTiny`` folder's weights file."""
    weights = folder / f"{WEIGHTS_NAME}.safetensors"
    if not weights.is_file():
        raise TinyWeightsNotFoundError(f"{folder}: a folder without {weights.name} (a tiny decoder is a "
                                       f"{' or '.join(SUFFIXES)} file, or a diffusers AutoencoderTiny folder)")
    return weights


def load_checkpoint(path: str | Path) -> TinyCheckpoint:
    """Read, hash and check a tiny decoder file (or an ``AutoencoderTiny`` folder's). The configuration
    comes from the tensors."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        path = _in_diffusers_folder(path)
    if path.suffix not in SUFFIXES:
        raise TinyCheckpointError(f"{path}: a tiny decoder is a {' or '.join(SUFFIXES)} file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TinyWeightsNotFoundError(f"{path}: no such tiny decoder file") from None
    except OSError as exc:
        raise TinyCheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    state, config = _decoder(_tensors(data, path), path)
    return TinyCheckpoint(path, hashlib.sha256(data).hexdigest(), config, state)


def save_checkpoint(state: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write decoder tensors (published key layout) as ``.safetensors``, atomically."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path
