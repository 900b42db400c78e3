"""What an item's outputs were made from: the latent file, identified as git's index identifies files.

The fast check, run on every resume, compares the file's path, size and mtime (ns) with what the
journal stored when it was decoded. Only when those differ is the file read and its SHA-256
compared with the digest taken, at decode time, of the very bytes that were decoded: a ``touch``
or a copy of the same bytes is still done, a regenerated latent is "changed input". A no-op
resume therefore reads no latent file.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import LatentFileError


@dataclass(frozen=True)
class InputId:
    path: str  # absolute path of the latent file
    size: int
    mtime_ns: int
    digest: str | None  # sha256 of the file's bytes; None where unknown (entries migrated from .records/)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_identified(path: Path) -> tuple[bytes, InputId]:
    """The file's bytes and the identity of exactly those bytes (stat taken on the open file)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            st = os.fstat(fh.fileno())
    except OSError as exc:
        raise LatentFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return data, InputId(str(Path(path).absolute()), st.st_size, st.st_mtime_ns, digest(data))


def same_stat(stored: InputId, path: str, size: int, mtime_ns: int) -> bool:
    return stored.path == path and stored.size == size and stored.mtime_ns == mtime_ns


def same_content(stored: InputId, path: Path) -> bool:
    """The slow check, for a file whose stat changed: are its bytes still the ones decoded?"""
    if stored.digest is None:
        return False
    try:
        if os.stat(path).st_size != stored.size:
            return False
        hasher = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                hasher.update(chunk)
        return hasher.hexdigest() == stored.digest
    except OSError:
        return False
