"""An interrupt never separates an item's written outputs from its record.

The signal handler raises in the main thread at whatever bytecode it is running. The pipeline hands
an item on (its outputs written -> its record to ``on_result``, which commits it) inside
``stop.critical()``, and so does an executor handing a result on, so a Ctrl-C that lands while the
record is on its way waits until it has arrived. Here ``on_result`` raises SIGINT on its first line,
before any critical section of its own, as a real Ctrl-C can (the runner's ``record`` opens its
section one line later): every item whose files are on disk must still reach ``on_result``, and the
run must still stop. Both ways an executor hands results on are checked: computed items the
pipeline writes (in-process, Ray with the driver's io) and records of items written where they
were computed (Ray with shared io).
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from latent_decoder.executors.inline import InlineExecutor
from latent_decoder.experiment import Experiment, LatentStep
from latent_decoder.journal import StepRecord
from latent_decoder.layout import OutputLayout
from latent_decoder.lifecycle import ItemWork, prepare, write_outputs
from latent_decoder.pipeline import HandOn, run_items
from latent_decoder.settings import OutputSettings
from latent_decoder.stop import Interrupted, StopSignals, critical

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


def test_computed_items_are_written_and_handed_on(steps: list[LatentStep], tmp_path: Path) -> None:
    out = tmp_path / "out"
    delivered: list[str] = []
    with StopSignals(), pytest.raises(Interrupted):
        run_items(steps, InlineExecutor(StandInWorker(), encode_threads=2), OutputLayout(out), OUTPUT,
                  interrupting(3, delivered))
    assert 3 <= len(delivered) < len(steps), "the interrupt stops the run, after the item it landed on"
    assert written_items(out) == set(delivered)


class WrittenWhereComputed:
    """An executor whose items are read, computed and written elsewhere (Ray with shared io): results
    come back as records, several at a time."""

    prepared = False

    def __init__(self, layout: OutputLayout) -> None:
        self.layout, self.items = layout, []

    def room(self) -> int:
        return 4 - len(self.items)

    def submit(self, step: LatentStep) -> None:
        self.items.append(step)

    def busy(self) -> bool:
        return bool(self.items)

    def poll(self, timeout: float | None, hand_on: HandOn) -> None:
        for step in self.items[:2]:
            record = write_outputs(self.layout, OUTPUT, StandInWorker().encode_stage(prepare(step)))
            with critical():
                self.items.remove(step)
                hand_on(step, record)

    def stop(self, hand_on: HandOn) -> None:
        self.items.clear()

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_records_written_elsewhere_are_handed_on(steps: list[LatentStep], tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path / "out")
    delivered: list[str] = []
    with StopSignals(), pytest.raises(Interrupted):
        run_items(steps, WrittenWhereComputed(layout), layout, OUTPUT, interrupting(3, delivered))
    assert len(delivered) == 3, "the interrupt lands once the record it interrupted has arrived"
    assert written_items(layout.root) == set(delivered)


def test_an_error_raised_while_an_interrupt_unwinds_a_lock_wait_is_still_that_interrupt() -> None:
    """``Interrupted`` raised inside a ``Condition.wait`` (a thread pool's ``map``) can surface as
    "cannot release un-acquired lock" instead: ``gallery`` and ``calibrate-preview`` still exit 143
    with one line, and an error with no signal behind it stays an error."""
    import os

    from latent_decoder.cli import interruptible

    def unwinding_fails() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Interrupted:
            raise RuntimeError("cannot release un-acquired lock") from None

    with pytest.raises(SystemExit) as exited:
        interruptible(unwinding_fails)
    assert exited.value.code == 143

    def plain_error() -> None:
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        interruptible(plain_error)
