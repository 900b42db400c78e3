"""Loading and validating stored latents (gzip'd or plain ``np.save`` files).

Every failure here is a ``LatentFileError`` naming the file, so the item is recorded as
failed with a reason a researcher can act on.

The ``.npy`` header is read and checked before anything is allocated: a header may declare any
shape, and trusting it (as ``np.load`` does) lets one corrupt or forged file ask for terabytes and
stop the whole run with a ``MemoryError``. Gzip'd files are decompressed a bounded amount at a time,
never past what the header declares, so a gzip bomb cannot blow memory either.
"""
from __future__ import annotations

import gzip
import io
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import LatentFileError, first_line

ACCEPTED_DTYPES = (np.float16, np.float32, np.float64)
# A real latent is at most a few hundred MB; a header declaring more than this is corrupt or forged.
MAX_LATENT_BYTES = 8 * 2**30
# deflate's best ratio is ~1032:1: a gzip file of N bytes cannot decompress to more than ~1032 N bytes.
GZIP_MAX_RATIO = 1100
_NPY_MAGIC = b"\x93NUMPY"
_NPY_VERSIONS = {1: 2, 2: 4, 3: 4}  # major version -> bytes of the little-endian header-length field
_MAX_HEADER_BYTES = 65536  # numpy itself refuses headers over 10000 characters
_INPUT_CHUNK = 1 << 20  # compressed bytes fed to zlib per call
_OUTPUT_CHUNK = 16 << 20  # decompressed bytes produced per call (bounds the transient copy)


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


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` header declares, and where its data starts."""

    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype
    offset: int  # bytes before the data: magic, version, header length and header text

    @property
    def nbytes(self) -> int:
        """Declared data size; Python ints, so an absurd shape cannot overflow."""
        return math.prod(self.shape) * self.dtype.itemsize


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def _read_header(read: Callable[[int], bytes]) -> NpyHeader:
    """Parse the ``.npy`` header from ``read(n)`` calls that ask for exactly the header's bytes, so a
    stream is left at the first data byte.

    Raises ``ValueError`` for a payload that is not an ``.npy`` array; callers add the file name.
    """
    def take(n: int, what: str) -> bytes:
        got = read(n)
        if len(got) < n:
            raise ValueError(f"data ends inside the {what}")
        return got

    magic = take(len(_NPY_MAGIC) + 2, "magic string")
    if magic[: len(_NPY_MAGIC)] != _NPY_MAGIC:
        raise ValueError(f"no .npy magic string, starts with {magic!r}")
    major, minor = magic[-2], magic[-1]
    size_len = _NPY_VERSIONS.get(major)
    if size_len is None or minor != 0:
        raise ValueError(f"unsupported .npy format version {major}.{minor}")
    size = take(size_len, "header length")
    header_len = int.from_bytes(size, "little")
    if header_len > _MAX_HEADER_BYTES:
        raise ValueError(f"header of {header_len} bytes is too long")
    text = take(header_len, "header")
    parse = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = parse(io.BytesIO(size + text))
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in shape {list(shape)}")
    return NpyHeader(tuple(int(n) for n in shape), bool(fortran_order), dtype, len(magic) + size_len + header_len)


def _check_header(header: NpyHeader, path: Path | str) -> int:
    """Refuse what must never be allocated or unpickled; returns the declared data size."""
    if header.dtype.hasobject:
        raise LatentFileError(f"{path}: dtype {header.dtype} holds Python objects; object arrays are refused, "
                              f"never unpickled")
    declared = header.nbytes
    if declared > MAX_LATENT_BYTES:
        raise LatentFileError(
            f"{path}: header declares shape {list(header.shape)} {header.dtype}, {declared} bytes "
            f"({_human(declared)}), over the {_human(MAX_LATENT_BYTES)} limit for one latent "
            f"(corrupt or forged header?)"
        )
    return declared


def _check_dtype(dtype: np.dtype, path: Path | str) -> None:
    if dtype.type not in ACCEPTED_DTYPES:
        raise LatentFileError(f"{path}: dtype {dtype} is not a float16/float32 latent")


def _allocate(nbytes: int, path: Path | str) -> np.ndarray:
    try:
        return np.empty(nbytes, np.uint8)
    except MemoryError as exc:
        raise LatentFileError(f"{path}: cannot allocate {nbytes} bytes ({_human(nbytes)}) for the latent") from exc


def _as_array(buf: np.ndarray, header: NpyHeader) -> np.ndarray:
    """The data bytes viewed as the declared array, as ``np.load`` would build it (no copy)."""
    flat = buf.view(header.dtype)
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).transpose()
    return flat.reshape(header.shape)


class _CutShort(Exception):
    """The compressed data ended inside a gzip member."""


class _Gunzip:
    """Decompresses a gzip payload (every member, as ``gzip.decompress`` does) a bounded amount at a
    time, so that no more is ever produced than the caller asks for."""

    def __init__(self, data: bytes, path: Path | str) -> None:
        self._data = memoryview(data)
        self._path = path
        self._pos = 0  # next compressed byte not yet fed to zlib
        self._tail: bytes | memoryview = b""
        self._d: zlib._Decompress | None = None  # type: ignore[name-defined]
        self.ended = False
        self.produced = 0
        if not len(self._data):
            raise LatentFileError(f"{path}: not a gzip file (empty file)")
        self._start_member()

    def _start_member(self) -> None:
        # gzip.decompress skips zero padding after a member and rejects anything else that is not a member.
        data, pos = self._data, self._pos
        if self._d is not None:
            while pos < len(data) and data[pos] == 0:
                pos += 1
        self._pos = pos
        if pos >= len(data):
            self.ended = True
            return
        if data[pos:pos + 2] != b"\x1f\x8b":
            raise LatentFileError(f"{self._path}: not a gzip file (bad magic number {bytes(data[pos:pos + 2])!r} "
                                  f"at byte {pos})")
        self._d = zlib.decompressobj(wbits=31)

    def readinto(self, out: memoryview) -> int:
        """Fill ``out``; fewer bytes only when the stream ends."""
        filled = 0
        while filled < len(out) and not self.ended:
            assert self._d is not None
            if not self._tail:
                if self._pos >= len(self._data):
                    raise _CutShort()
                self._tail = self._data[self._pos:self._pos + _INPUT_CHUNK]
                self._pos += len(self._tail)
            try:
                chunk = self._d.decompress(self._tail, min(len(out) - filled, _OUTPUT_CHUNK))
            except zlib.error as exc:
                raise LatentFileError(f"{self._path}: corrupt gzip data ({exc})") from exc
            self._tail = self._d.unconsumed_tail
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            self.produced += len(chunk)
            if self._d.eof:
                self._pos -= len(self._d.unused_data)  # the compressed bytes after this member
                self._tail = b""
                self._start_member()
        return filled

    def cut_short(self, expected: int | None = None) -> LatentFileError:
        if expected is None:
            where = f"after {self.produced} bytes"
        elif self.produced < expected:
            where = f"after {self.produced} of the {expected} bytes its .npy header declares"
        else:
            where = "before its gzip trailer"
        return LatentFileError(f"{self._path}: truncated gzip stream (file cut short?): it ends {where}")

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        return bytes(buf[: self.readinto(memoryview(buf))])


def _gzip_bomb(path: Path | str, declared: int) -> LatentFileError:
    return LatentFileError(f"{path}: header declares {declared} bytes of data, the decompressed stream holds more "
                           f"(gzip bomb?); refused without decompressing the rest")


def _too_long(path: Path | str, declared: int, present: int) -> LatentFileError:
    return LatentFileError(f"{path}: header declares {declared} bytes of data, file holds {present} "
                           f"(not a single np.save array)")


def _parse_npy(data: bytes, path: Path | str) -> np.ndarray:
    try:
        header = _read_header(io.BytesIO(data).read)
    except ValueError as exc:
        raise LatentFileError(f"{path}: not a valid .npy array ({first_line(exc)})") from exc
    declared = _check_header(header, path)
    _check_dtype(header.dtype, path)
    present = len(data) - header.offset
    if present < declared:
        raise LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, file holds {present}")
    if present > declared:
        raise _too_long(path, declared, present)
    buf = _allocate(declared, path)
    buf[:] = np.frombuffer(data, np.uint8, declared, header.offset)
    return _as_array(buf, header)


def _parse_gzip(data: bytes, path: Path | str) -> np.ndarray:
    stream = _Gunzip(data, path)
    try:
        header = _read_header(stream.read)
    except _CutShort:
        raise stream.cut_short() from None
    except ValueError as exc:
        raise LatentFileError(f"{path}: not a valid .npy array ({first_line(exc)})") from exc
    declared = _check_header(header, path)
    _check_dtype(header.dtype, path)
    if declared > len(data) * GZIP_MAX_RATIO:
        raise LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, more than a gzip file of "
                              f"{len(data)} bytes can hold")
    buf = _allocate(declared, path)
    try:
        present = stream.readinto(memoryview(buf))
        if present < declared:
            raise LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, file holds "
                                  f"{present} (decompressed)")
        # Bounded to one byte past the declared data; also runs zlib to the end of the stream,
        # which checks the gzip CRC and length.
        if stream.read(1):
            raise _gzip_bomb(path, declared)
    except _CutShort:
        raise stream.cut_short(header.offset + declared) from None
    return _as_array(buf, header)


def read_latent_bytes(path: Path) -> bytes:
    """The raw file bytes (still gzip'd); kept separate so a driver can ship them to a worker."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LatentFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def parse_latent(data: bytes, path: Path, layout: Layout = BCTHW) -> np.ndarray:
    """Decompress (if gzip'd) and parse an ``np.save`` payload into a batched ``layout`` array.

    The header is checked before anything is allocated (size limit, bytes present, no object arrays).
    """
    if str(path).endswith(".gz"):
        array = _parse_gzip(data, path)
    elif data[:4] == b"PK\x03\x04":
        raise LatentFileError(f"{path}: holds an .npz archive, expected a single .npy array")
    else:
        array = _parse_npy(data, path)
    return validate_latent(array, path, layout)


def validate_latent(array: np.ndarray, path: Path | str, layout: Layout = BCTHW) -> np.ndarray:
    """Check dtype, rank (for the VAE family's ``layout``) and values; return a batched view."""
    _check_dtype(array.dtype, path)
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
    """Shape and dtype from an ``.npy`` header, reading only the file's first bytes (gzip'd or not).

    A header that declares more data than a latent can be (``MAX_LATENT_BYTES``) or than the file can
    hold, or an object array, is a ``LatentFileError``: ``inspect`` must not plan memory for it.
    """
    path = Path(path)
    gzipped = path.name.endswith(".gz")
    try:
        size = path.stat().st_size
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            header = _read_header(f.read)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise LatentFileError(f"{path}: cannot read the .npy header ({first_line(exc)})") from exc
    declared = _check_header(header, path)
    if not gzipped and size - header.offset < declared:
        raise LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, "
                              f"file holds {size - header.offset}")
    if not gzipped and size - header.offset > declared:
        raise _too_long(path, declared, size - header.offset)
    if gzipped and declared > size * GZIP_MAX_RATIO:
        raise LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, more than a gzip file of "
                              f"{size} bytes can hold")
    return header.shape, header.dtype


def load_latent(path: str | Path, layout: Layout = BCTHW) -> np.ndarray:
    """Read, decompress, parse and validate one stored latent file."""
    path = Path(path)
    return parse_latent(read_latent_bytes(path), path, layout)


def latent_stats(array: np.ndarray, layout: Layout = BCTHW) -> dict[str, object]:
    """Mean, standard deviation and per-channel L2 norms of a stored (batched) latent: they cost no
    model and show how the noise leaves across steps."""
    x = np.asarray(array, dtype=np.float32)
    channel = layout.axes.index("C")
    others = tuple(i for i in range(x.ndim) if i != channel)
    norms = np.sqrt(np.square(x, dtype=np.float64).sum(axis=others))
    return {"mean": round(float(x.mean(dtype=np.float64)), 6), "std": round(float(x.std(dtype=np.float64)), 6),
            "channel_norms": [round(float(n), 4) for n in norms]}
