"""Reading ``np.save`` payloads (plain or gzip'd) without trusting their header.

The ``.npy`` header is read and checked before anything is allocated: a header may declare any
shape, and trusting it (as ``np.load`` does) lets one corrupt or forged file ask for terabytes and
stop the whole run with a ``MemoryError``. A gzip'd payload is decompressed into the buffer the
header declares and never past it (one byte more says it is a gzip bomb), so a small file cannot
blow memory either. Object arrays are refused, never unpickled.
"""
from __future__ import annotations

import gzip
import io
import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from .errors import LatentFileError, first_line

ACCEPTED_DTYPES = (np.float16, np.float32, np.float64)
# A real latent is at most a few hundred MB; a header declaring more than this is corrupt or forged.
MAX_LATENT_BYTES = 8 * 2**30
# deflate's best ratio is ~1032:1: a gzip file of N bytes cannot decompress to more than ~1032 N bytes.
GZIP_MAX_RATIO = 1100
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
                   (3, 0): np.lib.format.read_array_header_2_0}  # 3.0 only allows utf-8 field names
_MAX_HEADER = 10000  # characters; numpy's own default limit
_CHUNK = 16 << 20  # decompressed bytes per read (bounds the transient copy)


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


class _Bounded:
    """The next ``limit`` bytes of a stream: numpy's header reader reads as many bytes as the header's
    length field says (up to 4 GiB in format 2.0), and a forged length must end in an error, not a read."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream, self.left = stream, limit

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise ValueError(f"header longer than {_MAX_HEADER} bytes")
        data = self._stream.read(n)
        self.left -= len(data)
        return data


def _read_header(stream: BinaryIO) -> NpyHeader:
    """The ``.npy`` header at the start of ``stream``, leaving it at the first data byte. ``ValueError``
    for a payload that is not an ``.npy`` array; callers add the file name."""
    version = np.lib.format.read_magic(stream)
    if version not in _HEADER_READERS:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    limit = 4 + _MAX_HEADER  # the length field and the longest header numpy reads
    bounded = _Bounded(stream, limit)
    shape, fortran_order, dtype = _HEADER_READERS[version](bounded, max_header_size=_MAX_HEADER)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in shape {list(shape)}")
    return NpyHeader(tuple(int(n) for n in shape), bool(fortran_order), dtype,
                     np.lib.format.MAGIC_LEN + limit - bounded.left)


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


def _parsed_header(stream: BinaryIO, path: Path | str) -> tuple[NpyHeader, int]:
    """The checked header of a payload (a float array of at most ``MAX_LATENT_BYTES``) and its data size."""
    try:
        header = _read_header(stream)
    except ValueError as exc:
        raise LatentFileError(f"{path}: not a valid .npy array ({first_line(exc)})") from exc
    declared = _check_header(header, path)
    check_dtype(header.dtype, path)
    return header, declared


def check_dtype(dtype: np.dtype, path: Path | str) -> None:
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


def _cannot_hold(path: Path | str, declared: int, size: int) -> LatentFileError:
    return LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, more than a gzip file of "
                           f"{size} bytes can hold")


def _too_long(path: Path | str, declared: int, present: int) -> LatentFileError:
    return LatentFileError(f"{path}: header declares {declared} bytes of data, file holds {present} "
                           f"(not a single np.save array)")


@contextmanager
def _gunzip(data: bytes, path: Path | str) -> Iterator[gzip.GzipFile]:
    """A gzip payload (every member, as ``gzip.decompress`` reads it) as a stream; gzip's errors as
    one-line ``LatentFileError``s."""
    if data[:2] != b"\x1f\x8b":
        raise LatentFileError(f"{path}: not a gzip file "
                              f"({f'bad magic number {bytes(data[:2])!r} at byte 0' if data else 'empty file'})")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            yield stream
    except EOFError:
        raise LatentFileError(f"{path}: truncated gzip stream (file cut short?)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise LatentFileError(f"{path}: corrupt gzip data ({first_line(exc)})") from exc


def _read_into(stream: BinaryIO, buf: np.ndarray) -> int:
    """Fill ``buf`` from ``stream`` a chunk at a time; fewer bytes only where the stream ends."""
    view, filled = memoryview(buf), 0
    while filled < len(view):
        got = stream.readinto(view[filled:filled + _CHUNK])
        if not got:
            break
        filled += got
    return filled


def gunzip_bounded(data: bytes, path: Path | str) -> bytes:
    """A whole gzip payload (for formats without a size header), refusing more than
    ``MAX_LATENT_BYTES`` of output (a gzip bomb) and a stream cut short."""
    out = bytearray()
    with _gunzip(data, path) as stream:
        while chunk := stream.read(_CHUNK):
            out += chunk
            if len(out) > MAX_LATENT_BYTES:
                raise LatentFileError(f"{path}: decompresses to more than the {MAX_LATENT_BYTES} byte limit for "
                                      "one latent (gzip bomb?)")
    return bytes(out)


def parse_npy_payload(data: bytes, path: Path | str) -> np.ndarray:
    """An ``np.save`` payload, gzip'd when ``path`` ends in ``.gz``."""
    if str(path).endswith(".gz"):
        return _parse_gzip(data, path)
    if data[:4] == b"PK\x03\x04":
        raise LatentFileError(f"{path}: holds an .npz archive, expected a single .npy array")
    header, declared = _parsed_header(io.BytesIO(data), path)
    present = len(data) - header.offset
    if present < declared:
        raise LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, file holds {present}")
    if present > declared:
        raise _too_long(path, declared, present)
    buf = _allocate(declared, path)
    buf[:] = np.frombuffer(data, np.uint8, declared, header.offset)
    return _as_array(buf, header)


def _parse_gzip(data: bytes, path: Path | str) -> np.ndarray:
    with _gunzip(data, path) as stream:
        header, declared = _parsed_header(stream, path)
        if declared > len(data) * GZIP_MAX_RATIO:
            raise _cannot_hold(path, declared, len(data))
        buf = _allocate(declared, path)
        present = _read_into(stream, buf)
        if present < declared:
            raise LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, file holds "
                                  f"{present} (decompressed)")
        # One byte past the declared data at most; reading to the end also checks the gzip CRC and length.
        if stream.read(1):
            raise LatentFileError(f"{path}: header declares {declared} bytes of data, the decompressed stream holds "
                                  f"more (gzip bomb?); refused without decompressing the rest")
    return _as_array(buf, header)


def read_npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` header, reading only the file's first bytes (gzip'd or not).

    A header that declares more data than a latent can be (``MAX_LATENT_BYTES``) or than the file can
    hold, or an object array, is a ``LatentFileError``: ``inspect`` must not plan memory for it.
    """
    path = Path(path)
    gzipped = path.name.endswith(".gz")
    try:
        size = path.stat().st_size
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            header = _read_header(f)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise LatentFileError(f"{path}: cannot read the .npy header ({first_line(exc)})") from exc
    declared = _check_header(header, path)
    if gzipped:
        if declared > size * GZIP_MAX_RATIO:
            raise _cannot_hold(path, declared, size)
    elif size - header.offset < declared:
        raise LatentFileError(f"{path}: truncated: header declares {declared} bytes of data, "
                              f"file holds {size - header.offset}")
    elif size - header.offset > declared:
        raise _too_long(path, declared, size - header.offset)
    return header.shape, header.dtype
