"""Loading and validating stored latents (gzip'd or plain ``np.save`` files).

Every failure here is a ``LatentFileError`` naming the file, so the item is recorded as
failed with a reason a researcher can act on.
"""
from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LatentFileError, first_line

ACCEPTED_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class Layout:
    """A stored latent's axes, batch first, as a pipeline hands it to ``callback_on_step_end``.

    Letters: B batch, C channels, T latent frames, H/W latent height/width, S packed tokens
    (``T*H*W``; unpacking needs the video's frames/height/width).
    """

    axes: str

    @property
    def rank(self) -> int:
        return len(self.axes)

    def describe(self, batched: bool = True, **sizes: int) -> str:
        """``[1, C, T, H, W]``; known sizes fill their letter (``C=16`` -> ``[1, 16, T, H, W]``)."""
        axes = self.axes if batched else self.axes[1:]
        return "[" + ", ".join("1" if a == "B" else str(sizes.get(a, a)) for a in axes) + "]"


BCTHW = Layout("BCTHW")  # Wan, HunyuanVideo, Mochi
BTCHW = Layout("BTCHW")  # CogVideoX: frames first
BSC = Layout("BSC")  # LTX-Video: packed tokens


def read_latent_bytes(path: Path) -> bytes:
    """The raw file bytes (still gzip'd); kept separate so a driver can ship them to a worker."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LatentFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def parse_latent(data: bytes, path: Path, layout: Layout = BCTHW) -> np.ndarray:
    """Decompress (if gzip'd) and parse an ``np.save`` payload into a batched ``layout`` array."""
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
        raise LatentFileError(f"{path}: not a valid .npy array ({first_line(exc)})") from exc
    if not isinstance(array, np.ndarray):
        raise LatentFileError(f"{path}: holds an .npz archive, expected a single .npy array")
    return validate_latent(array, path, layout)


def validate_latent(array: np.ndarray, path: Path | str, layout: Layout = BCTHW) -> np.ndarray:
    """Check dtype, rank (for the VAE family's ``layout``) and values; return a batched view."""
    if array.dtype.type not in ACCEPTED_DTYPES:
        raise LatentFileError(f"{path}: dtype {array.dtype} is not a float16/float32 latent")
    if array.ndim == layout.rank - 1:
        array = array[None]
    elif array.ndim != layout.rank:
        raise LatentFileError(
            f"{path}: latent has {array.ndim} dims {tuple(array.shape)}, expected {layout.describe()} or "
            f"{layout.describe(batched=False)} for this VAE (does the config's model id match the experiment?)"
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


def read_latent_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` header, reading only the file's first bytes (gzip'd or not)."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise LatentFileError(f"{path}: cannot read the .npy header ({first_line(exc)})") from exc
    return tuple(int(n) for n in shape), dtype


def load_latent(path: str | Path, layout: Layout = BCTHW) -> np.ndarray:
    """Read, decompress, parse and validate one stored latent file."""
    path = Path(path)
    return parse_latent(read_latent_bytes(path), path, layout)
