"""What an item's outputs were made from: the latent file, identified as git's index identifies files.

The fast check, run on every resume, compares the file's path, size and mtime (ns) with what the
journal stored when it was decoded. Only when those differ is the file read and its SHA-256
compared with the digest taken, at decode time, of the very bytes that were decoded: a ``touch``
or a copy of the same bytes is still done, a regenerated latent is "changed input". A no-op
resume therefore reads no latent file. An item that reads several files (the x0 view reads the
previous step too) is identified by all of them: summed sizes, newest mtime, one digest.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LatentFileError

if TYPE_CHECKING:
    from .experiment import LatentStep


@dataclass(frozen=True)
class InputId:
    path: str  # absolute path of the latent file
    size: int
    mtime_ns: int
    digest: str | None  # sha256 of the file's bytes; None where unknown (entries migrated from .records/)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str | Path) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            return data, os.fstat(fh.fileno())
    except OSError as exc:
        raise LatentFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def read_identified(step: "LatentStep") -> tuple[list[bytes], InputId]:
    """The bytes of every file the item reads (the latent; for the x0 view also the previous step)
    and the identity of exactly those bytes (stat taken on the open files; sizes summed, newest
    mtime, one digest over all of them and the x0 view's sigmas)."""
    paths = [step.file] + ([step.x0.previous] if step.x0 else [])
    read = [_read(p) for p in paths]
    data = [d for d, _ in read]
    size = sum(st.st_size for _, st in read)
    mtime = max(st.st_mtime_ns for _, st in read)
    return data, InputId(step.file, size, mtime, _digest_of(data, step))


def _digest_of(data: list[bytes], step: "LatentStep") -> str:
    if step.x0 is None:
        return digest(data[0])
    hasher = hashlib.sha256()
    for chunk in data:
        hasher.update(hashlib.sha256(chunk).digest())
    hasher.update(f"x0 {step.x0.sigma!r} {step.x0.sigma_next!r}".encode())
    return hasher.hexdigest()


def same_stat(stored: InputId, path: str, size: int, mtime_ns: int) -> bool:
    return stored.path == path and stored.size == size and stored.mtime_ns == mtime_ns


def same_content(stored: InputId, step: "LatentStep") -> bool:
    """The slow check, for an item whose files' stat changed: are their bytes still the ones decoded?"""
    if stored.digest is None or step.size != stored.size:
        return False
    try:
        data, _ = read_identified(step)
    except LatentFileError:
        return False
    return _digest_of(data, step) == stored.digest
