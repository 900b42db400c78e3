"""Reading ``np.save`` payloads (plain or gzip'd) without trusting their header.

The ``.npy`` header is read and checked before anything is allocated: a header may declare any
shape, and trusting it (as ``np.load`` does) lets one corrupt or forged file ask for terabytes and
stop the whole run with a ``MemoryError``. Gzip'd files are decompressed a bounded amount at a time,
never past what the header declares, so a gzip bomb cannot blow memory either. Object arrays are
refused, never unpickled.
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


def gunzip_bounded(data: bytes, path: Path | str) -> bytes:
    """A whole gzip payload (for formats without a size header), refusing more than
    ``MAX_LATENT_BYTES`` of output (a gzip bomb) and a stream cut short."""
    stream = _Gunzip(data, path)
    out = bytearray()
    try:
        while not stream.ended:
            chunk = stream.read(_OUTPUT_CHUNK)
            out += chunk
            if len(out) > MAX_LATENT_BYTES:
                raise LatentFileError(f"{path}: decompresses to more than the {MAX_LATENT_BYTES} byte limit for "
                                      "one latent (gzip bomb?)")
            if not chunk:
                break
    except _CutShort:
        raise stream.cut_short() from None
    return bytes(out)


def _gzip_bomb(path: Path | str, declared: int) -> LatentFileError:
    return LatentFileError(f"{path}: header declares {declared} bytes of data, the decompressed stream holds more "
                           f"(gzip bomb?); refused without decompressing the rest")


def _too_long(path: Path | str, declared: int, present: int) -> LatentFileError:
    return LatentFileError(f"{path}: header declares {declared} bytes of data, file holds {present} "
                           f"(not a single np.save array)")


def parse_npy_payload(data: bytes, path: Path | str) -> np.ndarray:
    """An ``np.save`` payload, gzip'd when ``path`` ends in ``.gz``."""
    if str(path).endswith(".gz"):
        return _parse_gzip(data, path)
    if data[:4] == b"PK\x03\x04":
        raise LatentFileError(f"{path}: holds an .npz archive, expected a single .npy array")
    return _parse_npy(data, path)


def _parse_npy(data: bytes, path: Path | str) -> np.ndarray:
    try:
        header = _read_header(io.BytesIO(data).read)
    except ValueError as exc:
        raise LatentFileError(f"{path}: not a valid .npy array ({first_line(exc)})") from exc
    declared = _check_header(header, path)
    check_dtype(header.dtype, path)
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
    check_dtype(header.dtype, path)
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
