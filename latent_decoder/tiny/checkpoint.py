"""Reading a tiny decoder file: ``.safetensors`` or a PyTorch ``.pth`` (only through
``torch.load(weights_only=True)``, which refuses a pickle that would run code), read once, so that the
digest recorded in every item's fingerprint is the digest of exactly the tensors decoded with.

Every failure is one ``TinyCheckpointError`` line naming the file: missing, truncated, a pickle with
code in it, or tensors that are not a TAEHV-family decoder.
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
from .model import NotTaehvDecoder, TinyConfig, config_from_state_dict, decoder_keys

SUFFIXES = (".safetensors", ".pth")


@dataclass(frozen=True)
class TinyCheckpoint:
    """A tiny decoder file's decoder tensors, the configuration they describe and the file's digest."""

    path: Path
    digest: str  # SHA-256 of the file's bytes
    config: TinyConfig
    state: dict[str, Any]  # ``decoder.*`` tensors, published key layout

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
        raise TinyCheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of a TAEHV decoder")
    return state


def load_checkpoint(path: str | Path) -> TinyCheckpoint:
    """Read, hash and check a tiny decoder file. The configuration comes from the tensors."""
    path = Path(path).expanduser().absolute()
    if path.suffix not in SUFFIXES:
        raise TinyCheckpointError(f"{path}: a tiny decoder is a {' or '.join(SUFFIXES)} file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TinyWeightsNotFoundError(f"{path}: no such tiny decoder file") from None
    except OSError as exc:
        raise TinyCheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    state = decoder_keys(_tensors(data, path))
    try:
        config = config_from_state_dict(state)
    except NotTaehvDecoder as exc:
        raise TinyCheckpointError(f"{path}: not a TAEHV-family decoder ({exc})") from None
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
