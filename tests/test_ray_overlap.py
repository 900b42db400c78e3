"""A Ray actor overlaps decoding with encoding, on the session's local Ray runtime (one CPU worker).

Checked by the order of events, never by time: worker classes append ``EVENT KEY`` lines to a log
file, and an item's encode waits (at most ``WAIT_S``) for an event that only an overlapping actor
can produce. A serial actor lets every such wait run out, and the log then shows the wrong order.
Worker classes are built inside functions so Ray ships them by value to its worker processes.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from latent_decoder.experiment import Experiment  # noqa: E402
from latent_decoder.runner import run_decode  # noqa: E402
from latent_decoder.settings import CliOptions, RunSettings, resolve_settings  # noqa: E402
from latent_decoder.compute import Worker  # noqa: E402

from conftest import hang_guard, journal_records, model_free_worker_cls  # noqa: E402

WAIT_S = 15.0  # how long an encode waits for its event; a serial actor waits this long per item

pytestmark = pytest.mark.usefixtures("shared_ray")


def ray_settings(exp: Path) -> RunSettings:
    return resolve_settings(Experiment.load(exp), CliOptions(executor="ray", workers=1))


def event_log(path: Path):
    """(note, events, wait_until) over the log file ``path``; nested, so Ray ships them by value."""
    def note(event: str, key: str) -> None:
        with open(path, "a") as fh:  # one short append per event: lines from several threads never mix
            fh.write(f"{event} {key}\n")

    def events() -> list[tuple[str, str]]:
        """The log's (event, item key) pairs, in the order they happened."""
        return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()] if path.exists() else []

    def wait_until(condition) -> None:
        """Poll the log until ``condition(events())`` holds, at most ``WAIT_S``."""
        deadline = time.monotonic() + WAIT_S
        while not condition(events()) and time.monotonic() < deadline:
            time.sleep(0.05)

    return note, events, wait_until


def overlap_worker_cls(log: Path, items: int) -> type[Worker]:
    """Logs each decode's start and end and each encode's end; an item's encode ends only once
    another decode has started after its own decode ended (or every item's decode has started)."""
    note, _, wait_until = event_log(log)

    class OverlapWorker(model_free_worker_cls()):
        def decode_stage(self, work):
            note("decode-start", work.step.key)
            try:
                return super().decode_stage(work)
            finally:
                note("decode-end", work.step.key)

        def encode_stage(self, work):
            key = work.step.key

            def next_decode_started(seen: list[tuple[str, str]]) -> bool:
                after = seen[seen.index(("decode-end", key)) + 1:]
                starts = [k for event, k in seen if event == "decode-start"]
                return any(event == "decode-start" for event, _ in after) or len(starts) >= items

            wait_until(next_decode_started)
            try:
                return super().encode_stage(work)
            finally:
                note("encode-end", key)

    return OverlapWorker


def test_next_decode_starts_before_the_previous_encode_ends(make_experiment, tmp_path):
    exp = make_experiment(prompts=1, videos=1, steps=4)
    settings = ray_settings(exp)
    log = tmp_path / "events.log"
    with hang_guard(240):
        report = run_decode(settings, progress=False, worker_cls=overlap_worker_cls(log, 4))
    assert report.exit_code == 0 and report.succeeded == 4
    records = journal_records(settings.output_dir)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records.values())
    _, events, _ = event_log(log)
    seen = events()
    decodes = [(event, key) for event, key in seen if event.startswith("decode")]
    # One decode at a time: starts and ends alternate, each end closing the decode just started.
    assert [event for event, _ in decodes] == ["decode-start", "decode-end"] * 4, seen
    assert all(decodes[i][1] == decodes[i + 1][1] for i in range(0, 8, 2)), seen
    order = [key for event, key in decodes if event == "decode-start"]
    assert sorted(order) == sorted(records)
    for earlier, later in zip(order, order[1:]):
        assert seen.index(("decode-start", later)) < seen.index(("encode-end", earlier)), seen


def crash_worker_cls(log: Path, poison: str) -> type[Worker]:
    """Every decode of ``poison`` ends the worker's process; the other item's first encode waits
    until that decode has started, so the first death takes both items with it."""
    note, _, wait_until = event_log(log)

    class CrashWorker(model_free_worker_cls()):
        def decode_stage(self, work):
            note("decode-start", work.step.key)
            if work.step.key == poison:
                os._exit(3)
            return super().decode_stage(work)

        def encode_stage(self, work):
            wait_until(lambda seen: ("decode-start", poison) in seen)
            note("encode-end", work.step.key)
            return super().encode_stage(work)

    return CrashWorker


def test_item_beside_a_poison_item_is_not_taken_for_it(make_experiment, tmp_path):
    """Both items were running when the actor died: both are charged, then each runs alone, so the
    poison item alone reaches three deaths, is recorded failed as poison (once, naming its file), and
    the other one is decoded."""
    exp = make_experiment(prompts=1, videos=1, steps=2)
    settings = ray_settings(exp)
    poison, other = "prompt_000/vid_001/step_001", "prompt_000/vid_001/step_000"
    log = tmp_path / "events.log"
    calls: Counter[str] = Counter()
    with hang_guard(300):
        report = run_decode(settings, progress=False, on_result=lambda step, rec: calls.update([step.key]),
                            worker_cls=crash_worker_cls(log, poison))
    assert calls == {poison: 1, other: 1}
    records = journal_records(settings.output_dir)
    assert sorted(records) == [other, poison]
    assert records[other]["status"] == "ok", records[other]
    assert records[poison]["status"] == "failed" and records[poison]["error_type"] == "PoisonItemError"
    assert "killed its worker 3 times" in records[poison]["error"]
    assert f"{poison}.npy.gz" in records[poison]["error"]
    assert report.exit_code == 1
    summary = json.loads((settings.output_dir / "decode_summary.json").read_text())
    assert (summary["total_steps"], summary["successful_steps"]) == (2, 1)
    _, events, _ = event_log(log)
    seen = events()
    assert seen.count(("decode-start", poison)) == 3, seen
    # The first death took the other item with it (encoding, or waiting to decode): a serial actor
    # would have finished that item first.
    assert seen.index(("decode-start", poison)) < seen.index(("encode-end", other)), seen
