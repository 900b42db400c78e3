"""An interrupt never separates an item's written outputs from its record.

The signal handler raises in the main thread at whatever bytecode it is running. The executors hand
an item on (its outputs written -> its record to ``on_result``, which commits it) inside
``stop.critical()``, so a Ctrl-C that lands while the record is on its way waits until it has
arrived. Here ``on_result`` raises SIGINT on its first line, before any critical section of its own,
as a real Ctrl-C can (the runner's ``record`` opens its section one line later): every item whose
files are on disk must still reach ``on_result``, and the run must still stop.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from latent_decoder.executors.driver_io import DriverIO
from latent_decoder.executors.inline import InlineExecutor
from latent_decoder.experiment import Experiment, LatentStep
from latent_decoder.journal import StepRecord
from latent_decoder.layout import OutputLayout
from latent_decoder.lifecycle import ItemWork, write_outputs
from latent_decoder.settings import OutputSettings
from latent_decoder.stop import Interrupted, StopSignals

OUTPUT = OutputSettings(model="unused")


class StandInWorker:
    """The compute stage without a VAE: a few bytes stand for the video and the thumbnail."""

    output = OUTPUT

    def decode_stage(self, work: ItemWork) -> ItemWork:
        return work

    def encode_stage(self, work: ItemWork) -> ItemWork:
        work.video, work.thumbnail = b"video " + work.step.key.encode(), b"jpeg"
        work.frames_shape = [1, 8, 8, 3]
        return work


def written_items(out: Path) -> set[str]:
    return {p.relative_to(out).with_suffix("").as_posix() for p in out.rglob("step_*.mp4")}


def interrupting(after: int, delivered: list[str]):
    """``on_result`` that records the item, having raised SIGINT at its own start on call ``after``."""
    def on_result(step: LatentStep, record: StepRecord) -> None:
        if len(delivered) + 1 == after:
            signal.raise_signal(signal.SIGINT)
        assert record.status == "ok", record.error
        delivered.append(step.key)
    return on_result


@pytest.fixture
def steps(make_experiment) -> list[LatentStep]:
    exp = make_experiment("handoff", prompts=2, videos=2, steps=4)
    return Experiment.load(exp).discover()


def test_inline_executor_hands_every_written_item_on(steps: list[LatentStep], tmp_path: Path) -> None:
    out = tmp_path / "out"
    executor = InlineExecutor(StandInWorker(), OutputLayout(out), encode_threads=2)
    delivered: list[str] = []
    with StopSignals(), pytest.raises(Interrupted):
        executor.run(steps, interrupting(3, delivered))
    assert 3 <= len(delivered) < len(steps), "the interrupt stops the run, after the item it landed on"
    assert written_items(out) == set(delivered)


def test_driver_io_hands_every_written_item_on(steps: list[LatentStep], tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path / "out")
    io = DriverIO(lambda work: write_outputs(layout, OUTPUT, StandInWorker().encode_stage(work)))
    delivered: list[str] = []
    on_result = interrupting(2, delivered)
    try:
        for step in steps:
            io.write(step, ItemWork(step))
        with StopSignals(), pytest.raises(Interrupted):
            for step, written in io.finished(block=True):
                io.hand_on(step, written, on_result)
        assert len(delivered) == 2, "the interrupt lands once the record it interrupted has arrived"
        for step, written in io.finished(block=True):  # what the Ray executor's drain does next
            io.hand_on(step, written, on_result)
    finally:
        io.close()
    assert written_items(layout.root) == set(delivered) == {s.key for s in steps}
