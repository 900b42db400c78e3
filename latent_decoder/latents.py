"""Loading and validating stored latents: ``np.save`` files (``.npy``, ``.npy.gz``, see ``npyfile``)
and ``torch.save`` files (``.pt``, ``.pt.gz``, see ``torchfile``), the latent layouts of the
pipelines, and the statistics of a stored latent.

Every failure here is a ``LatentFileError`` naming the file, so the item is recorded as
failed with a reason a researcher can act on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LatentFileError
from .npyfile import check_dtype, parse_npy_payload, read_npy_header

TORCH_SUFFIXES = (".pt", ".pt.gz")


def is_torch_file(path: Path | str) -> bool:
    return str(path).endswith(TORCH_SUFFIXES)

@dataclass(frozen=True)
class Layout:
    """A stored latent's axes, batch first, as a pipeline hands it to ``callback_on_step_end``.

    Letters: B batch, C channels, T latent frames, H/W latent height/width, S packed tokens
    (``T*H*W``; unpacking needs the video's frames/height/width). ``also``: other forms the same
    pipeline's latents may be stored in, told apart by their rank (MiniMax H3: its packed rows, or
    the unpacked grid); the first is the pipeline's own.
    """

    axes: str
    also: tuple["Layout", ...] = ()

    @property
    def rank(self) -> int:
        return len(self.axes)

    def form(self, ndim: int) -> "Layout | None":
        """The form a stored latent of ``ndim`` axes (batch axis or not) is in; None if none has that rank."""
        for form in (self, *self.also):
            if ndim in (form.rank, form.rank - 1):
                return form
        return None

    def batched(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """``shape`` with its batch axis (added when the stored latent has none); None if no form fits."""
        form = self.form(len(shape))
        if form is None:
            return None
        return (1, *shape) if len(shape) == form.rank - 1 else tuple(shape)

    def describe_all(self) -> str:
        """Every form, batched or not: ``[1, S, C] or [S, C] or [1, C, T, H, W] or [C, T, H, W]``."""
        return " or ".join(f"{f.describe()} or {f.describe(batched=False)}" for f in (self, *self.also))

    def describe(self, batched: bool = True, **sizes: int | str) -> str:
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


def parse_latent(data: bytes, path: Path | str, layout: Layout = BCTHW) -> np.ndarray:
    """Decompress (if gzip'd) and parse a stored latent's bytes into a batched ``layout`` array.

    Sizes are checked before anything is allocated (size limit, bytes present); nothing is ever
    unpickled beyond tensors. A bfloat16 ``.pt`` latent comes back as float32 (exactly).
    """
    return parse_stored_latent(data, path, layout)[0]


def parse_stored_latent(data: bytes, path: Path | str, layout: Layout = BCTHW) -> tuple[np.ndarray, str]:
    """``parse_latent``, and the dtype the file stores (``bfloat16`` for a bfloat16 ``.pt``, whose
    array is float32): what the journal records as the step's ``latent_dtype``."""
    array, stored = read_stored(data, path)
    return validate_latent(array, path, layout), stored


def read_array(data: bytes, path: Path | str) -> np.ndarray:
    """A stored latent's bytes as an array, by the file's suffix; not yet validated."""
    return read_stored(data, path)[0]


def read_stored(data: bytes, path: Path | str) -> tuple[np.ndarray, str]:
    """``read_array`` and the stored dtype's name (numpy has no bfloat16: those come back float32)."""
    if is_torch_file(path):
        from .torchfile import parse_torch

        return parse_torch(data, path)
    array = parse_npy_payload(data, path)
    return array, str(array.dtype)


def validate_latent(array: np.ndarray, path: Path | str, layout: Layout = BCTHW) -> np.ndarray:
    """Check dtype, rank (for the VAE family's ``layout``) and values; return a batched view."""
    check_dtype(array.dtype, path)
    batched = layout.batched(array.shape)
    if batched is None:
        raise LatentFileError(
            f"{path}: latent has {array.ndim} dims {tuple(array.shape)}, expected {layout.describe_all()} "
            f"for this VAE (does the config's model id match the experiment?)"
        )
    array = array.reshape(batched)
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


def read_latent_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype | str]:
    """Shape and dtype of a stored latent without reading its data (``inspect``)."""
    if is_torch_file(path):
        from .torchfile import read_torch_header

        return read_torch_header(Path(path))
    return read_npy_header(path)


def load_latent(path: str | Path, layout: Layout = BCTHW) -> np.ndarray:
    """Read, decompress, parse and validate one stored latent file."""
    path = Path(path)
    return parse_latent(read_latent_bytes(path), path, layout)


def latent_stats(array: np.ndarray, layout: Layout = BCTHW) -> dict[str, object]:
    """Mean, standard deviation and per-channel L2 norms of a stored (batched) latent: they cost no
    model and show how the noise leaves across steps."""
    x = np.asarray(array, dtype=np.float32)
    channel = (layout.form(x.ndim) or layout).axes.index("C")
    others = tuple(i for i in range(x.ndim) if i != channel)
    norms = np.sqrt(np.square(x, dtype=np.float64).sum(axis=others))
    return {"mean": round(float(x.mean(dtype=np.float64)), 6), "std": round(float(x.std(dtype=np.float64)), 6),
            "channel_norms": [round(float(n), 4) for n in norms]}
