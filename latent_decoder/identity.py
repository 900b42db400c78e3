"""What an item's outputs were made from: its input files, identified as git's index identifies files,
and the parameters its decode took from elsewhere.

The fast check, run on every resume, compares the file's path, size and mtime (ns) with what the
journal stored when it was decoded. Only when those differ is the file read and its SHA-256
compared with the digest taken, at decode time, of the very bytes that were decoded: a ``touch``
or a copy of the same bytes is still done, a regenerated latent is "changed input". A no-op
resume therefore reads no latent file. An item that reads several files (``LatentStep.inputs``:
the x0 view reads the previous step too, Wan2.2 I2V the video's condition latent) is identified by
all of them: sizes and mtimes summed (so a change of any one shows), one digest.

The x0 view's sigmas (from step metadata or the scheduler config) change the decode without
changing a file the item reads, so they are the item's ``params``: compared on the fast path too,
and hashed into the digest.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LatentFileError

if TYPE_CHECKING:
    from .experiment import LatentStep


@dataclass(frozen=True)
class InputId:
    path: str  # absolute path of the latent file
    size: int  # of all the item's input files
    mtime_ns: int  # summed over the item's input files
    digest: str | None  # sha256 of the file's bytes; None where unknown (entries migrated from .records/)
    params: str | None = None  # what the decode took besides the files (x0: the sigmas); None: none, or unknown


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_params(step: "LatentStep") -> str | None:
    """The parameters of the item's decode that no input file holds: the x0 view's sigma_i, sigma_{i+1}."""
    return None if step.x0 is None else f"x0 {step.x0.sigma!r} {step.x0.sigma_next!r}"


def add_input(step: "LatentStep", size: int, mtime_ns: int, **fields: Any) -> "LatentStep":
    """``step`` reading one more file (of this stat), set by ``fields``: its stat then covers that file too."""
    return replace(step, size=step.size + size, mtime_ns=step.mtime_ns + mtime_ns, **fields)


def _read(path: str | Path) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
            return data, os.fstat(fh.fileno())
    except OSError as exc:
        raise LatentFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def read_identified(step: "LatentStep") -> tuple[list[bytes], InputId]:
    """The bytes of every file the item reads (``step.inputs``, in that order) and the identity of
    exactly those bytes (stat taken on the open files, one digest over all of them and the params)."""
    read = [_read(p) for p in step.inputs]
    data = [d for d, _ in read]
    size = sum(st.st_size for _, st in read)
    mtime = sum(st.st_mtime_ns for _, st in read)
    return data, InputId(step.file, size, mtime, _digest_of(data, step), input_params(step))


def _digest_of(data: list[bytes], step: "LatentStep") -> str:
    params = input_params(step)
    if len(data) == 1 and params is None:
        return digest(data[0])
    hasher = hashlib.sha256()
    for chunk in data:
        hasher.update(hashlib.sha256(chunk).digest())
    if params is not None:
        hasher.update(params.encode())
    return hasher.hexdigest()


def same_stat(stored: InputId, step: "LatentStep") -> bool:
    """The fast check: same files by path, size and mtime, decoded with the same params."""
    return (stored.path == step.file and stored.size == step.size and stored.mtime_ns == step.mtime_ns
            and stored.params == input_params(step))


def same_content(stored: InputId, step: "LatentStep") -> bool:
    """The slow check, for an item whose stat changed (or whose params were not recorded): are its
    files' bytes, and its params, still the ones decoded?"""
    if stored.digest is None or step.size != stored.size:
        return False
    if stored.params is not None and stored.params != input_params(step):
        return False
    try:
        data, _ = read_identified(step)
    except LatentFileError:
        return False
    return _digest_of(data, step) == stored.digest
