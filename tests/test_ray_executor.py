"""The Ray executor on a real local Ray runtime (CPU only, two fake GPUs): the session's
(``shared_ray``, conftest), but for the test of a CLI process that starts its own.

Worker classes that misbehave are built inside functions so Ray ships them by value to its
worker processes; production code has no test hooks.
"""
from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from latent_decoder.experiment import Experiment  # noqa: E402
from latent_decoder.runner import run_decode  # noqa: E402
from latent_decoder.settings import CliOptions, RunSettings, resolve_settings  # noqa: E402

from conftest import held_worker_cls, journal_records, meeting_vae_worker_cls, model_free_worker_cls  # noqa: E402

# Every run here gets it (fake GPUs); the first test checks it is given once.
pytestmark = pytest.mark.filterwarnings("ignore:Ray assigned GPUs but torch sees no CUDA:UserWarning")


def ray_settings(exp: Path, **opts) -> RunSettings:
    return resolve_settings(Experiment.load(exp), CliOptions(executor="ray", **opts))


def summary_of(settings: RunSettings) -> dict:
    return json.loads((settings.output_dir / "decode_summary.json").read_text())


def assert_each_once(summary: dict, settings: RunSettings) -> dict[str, dict]:
    """Every item of the experiment has exactly one journal entry; returns them (item key -> record)."""
    items = [s.key for s in settings.experiment.discover(settings.filters)]
    records = journal_records(settings.output_dir)
    assert sorted(records) == sorted(items)
    assert summary["total_steps"] == len(items)
    return records


def test_two_fake_gpus_two_actors_decode_everything(shared_ray, make_experiment, tmp_path):
    from PIL import Image

    exp = make_experiment(prompts=2, videos=2, steps=3)
    settings = ray_settings(exp)
    with pytest.warns(UserWarning, match="torch sees no CUDA") as caught:
        report = run_decode(settings, progress=False, worker_cls=meeting_vae_worker_cls(tmp_path / "loaded", 2))
    assert sum("torch sees no CUDA" in str(w.message) for w in caught) == 1
    assert report.exit_code == 0 and report.succeeded == 12
    summary = summary_of(settings)
    steps = list(assert_each_once(summary, settings).values())
    assert summary["successful_steps"] == 12
    assert {s["worker"] for s in steps} == {"ray-0", "ray-1"}
    assert len({s["pid"] for s in steps}) == 2 and os.getpid() not in {s["pid"] for s in steps}
    assert {s["device"] for s in steps} == {"cpu"} and all(s["host"] for s in steps)
    # The driver wrote what the actors decoded: same pictures as the in-process path.
    inline = resolve_settings(Experiment.load(exp), CliOptions(executor="inline", output_dir=tmp_path / "inline"))
    assert run_decode(inline, progress=False).exit_code == 0
    for step in steps:
        thumb = step["outputs"]["thumbnail"]
        ours = np.asarray(Image.open(settings.output_dir / thumb), dtype=np.int16)
        theirs = np.asarray(Image.open(inline.output_dir / thumb), dtype=np.int16)
        assert np.abs(ours - theirs).max() <= 3
        assert (settings.output_dir / step["outputs"]["video"]).stat().st_size == step["output_sizes"]["video"]


def test_shared_io_workers_write_outputs_and_resume_skips(shared_ray, make_experiment):
    """Where outputs are written, not what decodes them: a model-free worker (the VAE with shared io:
    ``test_full_disk_with_shared_io_stops_the_run_as_inline_does``)."""
    exp = make_experiment(prompts=1, videos=1, steps=3)
    settings = ray_settings(exp, io="shared", gpus=1)
    report = run_decode(settings, progress=False, worker_cls=model_free_worker_cls())
    assert report.exit_code == 0 and report.succeeded == 3
    steps = list(journal_records(settings.output_dir).values())
    assert len(steps) == 3 and {s["worker"] for s in steps} == {"ray-0"}
    assert all((settings.output_dir / s["outputs"]["video"]).is_file() for s in steps)
    again = run_decode(settings, progress=False)
    assert again.records == {} and again.skipped == 3


def test_killed_actor_items_are_requeued_and_decoded_once(shared_ray, make_experiment, tmp_path):
    """One worker, so the run can only finish if the killed actor is restarted."""
    exp = make_experiment(prompts=2, videos=1, steps=4)
    settings = ray_settings(exp, gpus=1)
    calls: Counter[str] = Counter()
    killed: list[int] = []
    gate = tmp_path / "killed"

    def on_result(step, record):
        calls[step.key] += 1
        if not killed:
            killed.append(record.pid)
            os.kill(record.pid, signal.SIGKILL)  # it has more items in flight, held by the gate
            gate.touch()

    report = run_decode(settings, progress=False, on_result=on_result, worker_cls=held_worker_cls(gate))
    assert report.exit_code == 0
    assert set(calls.values()) == {1} and len(calls) == 8
    summary = summary_of(settings)
    records = assert_each_once(summary, settings)
    assert summary["successful_steps"] == 8
    pids = {s["pid"] for s in records.values()}
    assert killed[0] in pids and len(pids) == 2  # the killed actor was restarted under a new pid


def test_worker_that_cannot_load_the_model_is_a_one_line_setup_error(shared_ray, make_experiment):
    from latent_decoder.errors import ClusterError

    exp = make_experiment(prompts=1, videos=1, steps=1)
    settings = ray_settings(exp, workers=1, model="Org/NotCached")
    with pytest.raises(ClusterError, match=r"failed to start: ModelNotFoundError: model 'Org/NotCached' not found"):
        run_decode(settings, progress=False)
    # The pool starts before anything is created: no output folder is left behind.
    assert not settings.output_dir.exists()


def test_cli_with_cpu_workers_starts_its_own_ray(make_experiment):
    from conftest import run_cli

    exp = make_experiment(prompts=1, videos=1, steps=2)
    proc = run_cli("decode", str(exp), "--workers", "1",
                   env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert summary["successful_steps"] == 2
    records = journal_records(exp / "latents_videos")
    assert {s["worker"] for s in records.values()} == {"ray-0"} and summary["model"]["workers"] == ["cpu"]


def test_interrupted_driver_keeps_committed_items_and_resume_decodes_the_rest(shared_ray, make_experiment):
    """The driver's stop and resume, whatever decodes: a model-free worker."""
    exp = make_experiment(prompts=2, videos=1, steps=3)
    settings = ray_settings(exp, gpus=1)
    seen: list[str] = []

    def stop_after_two(step, record):
        seen.append(step.key)
        if len(seen) == 2:
            raise KeyboardInterrupt

    first = run_decode(settings, progress=False, on_result=stop_after_two, worker_cls=model_free_worker_cls())
    assert first.interrupted is not None and first.exit_code == 130
    kept = list(journal_records(settings.output_dir).values())
    assert 2 <= len(kept) < 6 and all(s["status"] == "ok" for s in kept)
    assert summary_of(settings)["last_run"]["interrupted"] is True
    second = run_decode(settings, progress=False, worker_cls=model_free_worker_cls())
    assert second.exit_code == 0 and second.skipped == len(kept)
    assert len(second.records) == 6 - len(kept)
    assert_each_once(summary_of(settings), settings)


def test_full_disk_with_shared_io_stops_the_run_as_inline_does(shared_ray, make_experiment, mount_tmpfs, tmp_path):
    """``--io shared``: the worker writes the outputs, and its ``DiskFullError`` stops the run with one
    line and exit 1, finished items kept, instead of failing every remaining item one by one. The
    videos' folder is a small tmpfs (the journal beside it has room), so the worker's write is what
    finds the disk full."""
    import subprocess

    from click.testing import CliRunner

    from latent_decoder.cli import cli

    exp = make_experiment(prompts=1, videos=1, steps=12)
    out = tmp_path / "out"
    videos = mount_tmpfs(48, out / "prompt_000")
    args = ["decode", str(exp), "--executor", "ray", "--io", "shared", "--gpus", "1", "--output-dir", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "no space left" in line and str(videos) in line, line
    records = journal_records(out)
    kept = {k for k, r in records.items() if r["status"] == "ok"}
    assert all(r["status"] == "ok" for r in records.values()), "a full disk fails no item"
    assert 0 < len(kept) < 12, "the disk must fill mid-run for this test to mean anything"
    for key in kept:
        assert (out / f"{key}.mp4").stat().st_size > 0
    # More room: the rest is decoded, what was kept is not decoded again.
    subprocess.run(["mount", "-o", "remount,size=8m", str(videos)], check=True)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"{12 - len(kept)} ok, 0 failed, {len(kept)} already done" in result.output, result.output
