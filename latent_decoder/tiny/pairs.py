"""The training pairs of ``distill``: what the full VAE decoded for each sampled step, kept losslessly.

``distill`` decodes its sample through the normal run (``runner.run_decode``: prepare, compute,
write, commit), so the sampled steps become ordinary outputs of the full-VAE tree, journaled and
skipped by a later decode. The run's worker is the VAE's own class with one addition
(``keeping_pairs``): after its ``to_frames``, it also writes the latent it decoded and the uint8
frames it made to ``EXP/tiny_decoder/pairs/<prompt>/<video>/<step>/`` (``latent.npy``,
``frames.npy``, ``pair.json`` with the decode's time and device), before they are encoded. So the
item lifecycle is written once, each step is decoded once, and training reads exact frames, never
frames read back from a lossy MP4.

The worker writes the pair where it runs: in this process, or in a Ray actor (one on this machine,
or on a node that mounts the experiment's folder). ``distill`` checks that every decoded step's
pair is there before it trains.

A pair folder is written whole or not at all (``video.write_dir_atomic``). ``identity.json`` says
which VAE (and precision) made the pairs; pairs of another are removed (``drop_stale_pairs``).
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..compute import Worker
from ..lifecycle import ItemWork
from ..video import write_dir_atomic, write_file_atomic

log = logging.getLogger(__name__)

PAIRS_DIRNAME = "pairs"  # under EXP/tiny_decoder/
IDENTITY_FILE = "identity.json"
LATENT_FILE, FRAMES_FILE, META_FILE = "latent.npy", "frames.npy", "pair.json"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_pair(folder: Path, key: str, latent: np.ndarray, frames: np.ndarray, meta: dict[str, Any]) -> None:
    """One step's pair, as a whole folder (``key``: prompt/video/step)."""
    write_dir_atomic(Path(folder) / key, {LATENT_FILE: _npy(latent), FRAMES_FILE: _npy(frames),
                                          META_FILE: json.dumps(meta).encode()})


@dataclass(frozen=True)
class StoredPair:
    """A pair as kept: the stored latent (the family's layout, batched), the VAE's frames (memory-mapped)."""

    key: str
    latent: np.ndarray
    frames: np.ndarray
    decode_seconds: float | None
    device: str | None


def read_pair(folder: Path, key: str) -> StoredPair | None:
    """The pair of ``key``, or None when there is none or it cannot be read (it is then decoded again)."""
    path = Path(folder) / key
    try:
        meta = json.loads((path / META_FILE).read_text())
        latent = np.load(path / LATENT_FILE, allow_pickle=False)
        frames = np.load(path / FRAMES_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        if path.exists():
            log.warning("warning: %s: unreadable training pair (%s); decoding the step again", path, exc)
        return None
    if frames.dtype != np.uint8 or frames.ndim != 4 or not isinstance(meta, dict):
        log.warning("warning: %s: not a training pair; decoding the step again", path)
        return None
    seconds = meta.get("decode_seconds")
    return StoredPair(key, latent, frames, float(seconds) if isinstance(seconds, (int, float)) else None,
                      str(meta["device"]) if meta.get("device") else None)


def drop_stale_pairs(folder: Path, identity: dict[str, Any]) -> None:
    """Remove the pairs in ``folder`` unless ``identity.json`` says the VAE ``identity`` (and precision) made
    them (pairs of an unknown maker are removed too: a distill stopped before it said)."""
    folder = Path(folder)
    if not folder.exists():
        return
    try:
        same = json.loads((folder / IDENTITY_FILE).read_text()) == identity
    except (OSError, ValueError):
        same = False
    if not same:
        log.info("removing the training pairs in %s: another VAE or precision made them", folder)
        shutil.rmtree(folder)


def mark_pairs(folder: Path, identity: dict[str, Any]) -> None:
    """Say which VAE (and precision) made the pairs in ``folder``."""
    if Path(folder).is_dir():
        write_file_atomic(Path(folder) / IDENTITY_FILE, json.dumps(identity, indent=1, sort_keys=True).encode())


def keeping_pairs(worker_cls: type[Worker], folder: Path) -> type[Worker]:
    """``worker_cls`` that also keeps each item's latent and frames in ``folder`` (see the module's
    docstring); a class made here, so that the Ray executor builds its actors from it like any worker."""

    class PairKeepingWorker(worker_cls):  # type: ignore[valid-type, misc]
        pairs_dir = str(folder)

        def to_frames(self, latent: np.ndarray, work: ItemWork) -> np.ndarray:
            start = time.perf_counter()
            frames = super().to_frames(latent, work)
            seconds = time.perf_counter() - start
            write_pair(Path(self.pairs_dir), work.step.key, latent, frames,
                       {"decode_seconds": round(seconds, 4), "device": self.identity.device,
                        "latent_file": work.step.file})
            return frames

    PairKeepingWorker.__name__ = PairKeepingWorker.__qualname__ = f"PairKeeping{worker_cls.__name__}"
    return PairKeepingWorker
