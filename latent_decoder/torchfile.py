"""Reading ``torch.save`` latents (``step_NNN.pt``, ``.pt.gz``): how bfloat16 latents are kept, since
numpy has no bfloat16.

Only ``torch.load(weights_only=True)`` is used: it unpickles tensors and plain containers and
refuses anything else, so a malicious file cannot run code. The archive's storage sizes are read
from its zip directory before anything is loaded, so a forged file cannot ask for terabytes.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LatentFileError, first_line
from . import npyfile

KEYS = ("latents", "latent")  # a dict saved by a generator holds the latent under one of these


def _check_archive(source: bytes | Path, path: Path | str) -> None:
    """Refuse a payload whose tensors would exceed the latent limit, before loading it (only the
    archive's directory is read)."""
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            declared = sum(info.file_size for info in archive.infolist() if "/data/" in info.filename)
    except zipfile.BadZipFile:
        raise LatentFileError(f"{path}: not a torch.save archive (saved with torch >= 1.6's zip format)") from None
    if declared > npyfile.MAX_LATENT_BYTES:
        raise LatentFileError(f"{path}: its tensors hold {declared} bytes, over the {npyfile.MAX_LATENT_BYTES} byte limit "
                              "for one latent (corrupt or forged file?)")


def _tensor_of(obj: Any, path: Path | str) -> Any:
    import torch

    if isinstance(obj, dict):
        found = [k for k in KEYS if k in obj]
        if not found:
            raise LatentFileError(f"{path}: a dict with keys {sorted(map(str, obj))[:8]}, expected a tensor or "
                                  f"a dict with a {' or '.join(repr(k) for k in KEYS)} tensor")
        obj = obj[found[0]]
    if not isinstance(obj, torch.Tensor):
        raise LatentFileError(f"{path}: holds a {type(obj).__name__}, expected a tensor")
    return obj


def _load(data: bytes, path: Path | str) -> Any:
    import pickle

    import torch

    if str(path).endswith(".gz"):
        data = npyfile.gunzip_bounded(data, path)
    _check_archive(data, path)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise LatentFileError(f"{path}: refused: it holds more than tensors and plain containers "
                              f"(unpickling arbitrary objects could run code): {first_line(exc)}") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise LatentFileError(f"{path}: not a readable torch.save file ({first_line(exc)})") from exc
    return _tensor_of(obj, path)


def parse_torch(data: bytes, path: Path | str) -> tuple[np.ndarray, str]:
    """The latent as a numpy array (bfloat16 widened to float32, exactly) and its stored dtype."""
    import torch

    tensor = _load(data, path).detach()
    stored = str(tensor.dtype).removeprefix("torch.")
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    elif not tensor.is_floating_point():
        raise LatentFileError(f"{path}: dtype {stored} is not a floating-point latent")
    return tensor.contiguous().numpy(), stored


def read_torch_header(path: Path) -> tuple[tuple[int, ...], np.dtype | str]:
    """Shape and stored dtype, for ``inspect`` (a plain ``.pt`` is memory-mapped, not read)."""
    import torch

    if str(path).endswith(".gz"):
        tensor = _load(Path(path).read_bytes(), path)
    else:
        _check_archive(Path(path), path)
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # the same refusals as _load, for a file on disk
            raise LatentFileError(f"{path}: not a readable torch.save file ({first_line(exc)})") from exc
        tensor = _tensor_of(obj, path)
    return tuple(int(n) for n in tensor.shape), str(tensor.dtype).removeprefix("torch.")
