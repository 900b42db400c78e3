"""The ``compute.Worker`` contract: a new decoder is a subclass with one method, ``to_frames``, and the
base class does the rest of the compute stage (identity, timing, parsing and validation, latent stats,
encoding, errors that never escape a stage), through the real runner and journal."""
from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest

from latent_decoder.compute import Worker
from latent_decoder.errors import LatentShapeError
from latent_decoder.experiment import Experiment
from latent_decoder.lifecycle import ItemWork
from latent_decoder.previews.worker import PreviewWorker
from latent_decoder.runner import run_decode
from latent_decoder.settings import CliOptions, resolve_settings
from latent_decoder.worker import DecodeWorker

from conftest import journal_records

BAD_ITEM = "prompt_000/vid_001/step_001"  # to_frames raises an ItemError: recorded as it is
BROKEN_ITEM = "prompt_000/vid_001/step_002"  # to_frames raises a plain exception: wrapped
GREY = 200


class ConstantWorker(Worker):
    """A decoder of one colour: three frames of the experiment's size, whatever the latent."""

    def to_frames(self, latent: np.ndarray, work: ItemWork) -> np.ndarray:
        time.sleep(0.01)  # a measurable decode
        if work.step.key == BAD_ITEM:
            raise LatentShapeError(f"{work.step.path}: not a latent this decoder takes")
        if work.step.key == BROKEN_ITEM:
            raise ZeroDivisionError("division by zero")
        return np.full((3, 32, 48, 3), GREY, np.uint8)


def test_a_worker_with_only_to_frames_runs_through_the_runner(make_experiment):
    exp = make_experiment(prompts=1, steps=4)
    settings = resolve_settings(Experiment.load(exp), CliOptions())
    worker = ConstantWorker(settings.output, settings.output_dir, "cpu (constant)", "constant")

    report = run_decode(settings, worker=worker, progress=False)

    assert report.exit_code == 1 and report.succeeded == 2
    records = journal_records(settings.output_dir)
    assert len(records) == 4
    for record in records.values():  # identity and timing, on every item, failed or not
        assert (record["host"], record["device"], record["worker"], record["pid"]) == (
            socket.gethostname(), "cpu (constant)", "constant", os.getpid())
        assert record["decode_seconds"] >= 0.01
        assert record["latent_shape"] == [1, 16, 3, 4, 6] and record["latent_dtype"] == "float16"
        assert set(record["latent_stats"]) >= {"mean", "std"}
    bad, broken = records.pop(BAD_ITEM), records.pop(BROKEN_ITEM)
    assert bad["status"] == "failed" and bad["error"].endswith(": not a latent this decoder takes")
    assert broken["status"] == "failed"
    assert broken["error"].endswith("step_002.npy.gz: decode failed: ZeroDivisionError: division by zero")
    for key, record in records.items():
        assert record["status"] == "ok" and record["encode_seconds"] > 0
        assert (settings.output_dir / f"{key}.mp4").stat().st_size > 0
        assert (settings.output_dir / f"{key}.jpg").stat().st_size > 0
    model = json.loads((settings.output_dir / "decode_summary.json").read_text())["model"]
    assert model == {"model": settings.output.model, "device": "cpu (constant)", "host": socket.gethostname(),
                     "worker": "constant", "pid": os.getpid()}


def test_the_contract_is_a_type():
    """Both decoders are ``Worker``s; a subclass without ``to_frames`` is refused when built."""
    assert issubclass(DecodeWorker, Worker) and issubclass(PreviewWorker, Worker)

    class Incomplete(Worker):
        pass

    with pytest.raises(TypeError, match="to_frames"):
        Incomplete(None)
