"""Loading and validating stored latents (gzip'd or plain ``np.save`` files).

Every failure here is a ``LatentFileError`` naming the file, so the item is recorded as
failed with a reason a researcher can act on.
"""
from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from .errors import LatentFileError

ACCEPTED_DTYPES = (np.float16, np.float32, np.float64)


def read_latent_bytes(path: Path) -> bytes:
    """The raw file bytes (still gzip'd); kept separate so a driver can ship them to a worker."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LatentFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def parse_latent(data: bytes, path: Path) -> np.ndarray:
    """Decompress (if gzip'd) and parse an ``np.save`` payload into a ``[1, C, T, H, W]`` array."""
    if str(path).endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except gzip.BadGzipFile as exc:
            raise LatentFileError(f"{path}: not a gzip file ({exc})") from exc
        except EOFError as exc:
            raise LatentFileError(f"{path}: truncated gzip stream (file cut short?)") from exc
        except zlib.error as exc:
            raise LatentFileError(f"{path}: corrupt gzip data ({exc})") from exc
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentFileError(f"{path}: not a valid .npy array ({reason})") from exc
    if not isinstance(array, np.ndarray):
        raise LatentFileError(f"{path}: holds an .npz archive, expected a single .npy array")
    return validate_latent(array, path)


def validate_latent(array: np.ndarray, path: Path | str) -> np.ndarray:
    """Check dtype, rank and values; return a ``[1, C, T, H, W]`` view."""
    if array.dtype.type not in ACCEPTED_DTYPES:
        raise LatentFileError(f"{path}: dtype {array.dtype} is not a float16/float32 latent")
    if array.ndim == 4:
        array = array[None]
    elif array.ndim != 5:
        raise LatentFileError(
            f"{path}: latent has {array.ndim} dims {tuple(array.shape)}, expected [1,C,T,H,W] or [C,T,H,W]"
        )
    if array.shape[0] != 1:
        raise LatentFileError(f"{path}: batch of {array.shape[0]} latents {tuple(array.shape)}, expected batch 1")
    if array.size == 0:
        raise LatentFileError(f"{path}: latent {tuple(array.shape)} is empty")
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        inf = int(array.size - finite.sum() - nan)
        raise LatentFileError(f"{path}: latent contains {nan} NaN and {inf} Inf values")
    return array


def load_latent(path: str | Path) -> np.ndarray:
    """Read, decompress, parse and validate one stored latent file."""
    path = Path(path)
    return parse_latent(read_latent_bytes(path), path)
