"""The item lifecycle's stages, written once: prepare -> compute -> write -> commit.

* prepare (where the latent is readable): read the bytes of every file the item reads (the latent,
  the x0 view's previous step, the video's condition file) and identify exactly those bytes
  (``identity.read_identified``); they travel with the item, so a worker never reads the experiment;
* compute (where the model is): a ``compute.Worker``'s ``decode_stage`` and ``encode_stage``, i.e.
  parse and validate, decode on the device (or project, for the preview), encode on CPU;
* write (where the output folder is): ``write_outputs`` puts a success's files at their final paths
  atomically (a failure writes nothing, so an earlier good output stays until a new success replaces
  it) and returns the record;
* commit: ``commit`` appends the record to the journal, which is what makes the item done, and
  removes outputs a success made obsolete (``GroupCommit`` groups records that arrive close together).

Which items a run takes is decided once, in ``plan.make_plan``; ``pipeline.run_items`` moves them
through the stages and executors only choose where compute runs. Item failures never escape a
stage: they travel with the item (``ItemWork.error``) to a "failed" journal entry naming the file.
"""
from __future__ import annotations

import errno
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import DiskFullError, ItemError, OutputWriteError
from .experiment import LatentStep
from .identity import InputId, read_identified
from .journal import Journal, StepRecord
from .layout import OutputLayout, output_size
from .x0 import read_x0
from .settings import OutputSettings
from .video import write_dir_atomic, write_file_atomic

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class WorkerIdentity:
    """Who decoded an item; copied into its record."""

    host: str
    device: str
    worker: str
    pid: int


@dataclass
class ItemWork:
    """One item travelling through the stages; plain data, so it can travel to and from a Ray actor."""

    step: LatentStep
    data: bytes | None = None  # the latent file's bytes, until parsed
    condition: bytes | None = None  # the video's condition file's bytes (``LatentStep.condition``), until parsed
    input: InputId | None = None
    latent: np.ndarray | None = None
    frames: np.ndarray | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # png frame name -> bytes (png format)
    video: bytes | None = None  # mp4 bytes (mp4 format)
    thumbnail: bytes | None = None
    error: ItemError | None = None
    load_seconds: float = 0.0
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    latent_shape: list[int] | None = None
    latent_dtype: str | None = None
    latent_stats: dict[str, object] | None = None  # mean, std, channel norms of the stored latent
    frames_shape: list[int] | None = None
    identity: WorkerIdentity | None = None


def prepare(step: LatentStep) -> ItemWork:
    """Read and identify the item's files (no VAE needed): the latent; for the x0 view also the
    previous step's, recovering the x0 latent here (plain arithmetic on the stored arrays); the
    video's condition file, if it has one."""
    work = ItemWork(step)
    start = time.perf_counter()
    try:
        data, work.input = read_identified(step)
        if step.condition is not None:
            work.condition = data.pop()
        if step.x0 is None:
            work.data = data[0]
        else:
            work.latent = read_x0(step, *data)
    except ItemError as exc:
        work.error = exc
    work.load_seconds = time.perf_counter() - start
    return work


def write_outputs(layout: OutputLayout, output: OutputSettings, work: ItemWork) -> StepRecord:
    """A success's files at their final paths (each atomically); the record that says what happened.

    A disk that is full stops the run (``DiskFullError``); any other OS error fails this item only.
    """
    step, who = work.step, work.identity
    record = StepRecord(
        item=step.key, prompt=step.prompt, video=step.video, step=step.step, step_index=step.step_index,
        status="failed", latent_path=step.file, settings=output.fingerprint(), input=work.input,
        load_seconds=round(work.load_seconds, 4), decode_seconds=round(work.decode_seconds, 4),
        encode_seconds=round(work.encode_seconds, 4), latent_shape=work.latent_shape,
        latent_dtype=work.latent_dtype, latent_stats=work.latent_stats, device=who.device if who else None,
        host=who.host if who else None, worker=who.worker if who else None, pid=who.pid if who else None,
    )
    if work.error is None:
        video_path = layout.video_path(step, output.format)
        thumb_path = layout.thumbnail_path(step)
        try:
            if output.format == "mp4":
                write_file_atomic(video_path, work.video)
            else:
                write_dir_atomic(video_path, work.files)
            write_file_atomic(thumb_path, work.thumbnail)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise DiskFullError(f"{exc.filename or video_path}: no space left on the device; "
                                    "free some space and run again (finished items are kept)") from exc
            work.error = OutputWriteError(f"{exc.filename or video_path}: cannot write output: "
                                          f"{exc.strerror or exc}")
        else:
            record.status = "ok"
            record.frames_shape = work.frames_shape
            record.outputs = {"video": layout.rel(video_path), "thumbnail": layout.rel(thumb_path)}
            record.output_sizes = {k: output_size(layout.root / v) for k, v in record.outputs.items()}
    if work.error is not None:
        record.error = str(work.error)
        record.error_type = type(work.error).__name__
    record.finished_at = datetime.now().astimezone().isoformat(timespec="seconds")
    return record


def commit(journal: Journal, layout: OutputLayout, records: list[StepRecord], run: int | None = None) -> None:
    """Append records to the journal (this makes a success done), then remove outputs of earlier
    successes that a new success did not overwrite (another format)."""
    for record, old in zip(records, journal.append(records, run)):
        for rel in set(old.values()) - set(record.outputs.values()):
            path = layout.root / rel
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                Path(path).unlink(missing_ok=True)


class GroupCommit:
    """``commit`` in small groups. Results that arrive slowly are committed at once; results that
    arrive faster than ``window`` apart share one journal transaction (a few fsyncs instead of a few
    per item), so bookkeeping keeps up with many GPUs. A record still waiting when the process dies
    only means its item is decoded again: its outputs were complete, the journal never lies."""

    def __init__(self, journal: Journal, layout: OutputLayout, run: int | None, window: float = 0.1,
                 most: int = 256) -> None:
        self.journal, self.layout, self.run = journal, layout, run
        self.window, self.most = window, most
        self.waiting: list[StepRecord] = []
        self.last = 0.0

    def add(self, record: StepRecord) -> None:
        self.waiting.append(record)
        if time.monotonic() - self.last >= self.window or len(self.waiting) >= self.most:
            self.flush()

    def flush(self) -> None:
        records, self.waiting = self.waiting, []
        if records:
            commit(self.journal, self.layout, records, self.run)
        self.last = time.monotonic()
