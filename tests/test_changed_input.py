"""Resume never keeps a wrong result: an item is done only if its outputs were made from this latent
file (path, size, mtime; else the bytes' digest), of this experiment, with these settings and
geometry. A failed re-decode keeps the earlier good output; non-finite frames fail the item."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from latent_decoder import identity
from latent_decoder.cli import cli
from latent_decoder.synthetic import save_npy_gz

from conftest import journal_records

ITEM = "prompt_000/vid_001/step_001"


def invoke(*args: str):
    return CliRunner().invoke(cli, [*args, "--device", "cpu"], catch_exceptions=False)


def decoded(out: Path) -> dict[str, int]:
    """Item -> journal attempt id of its latest success."""
    return {k: r["attempt"] for k, r in journal_records(out).items() if r["status"] == "ok"}


def load(path: Path) -> np.ndarray:
    return np.load(io.BytesIO(gzip.decompress(path.read_bytes())))


def first_frame(mp4: Path) -> np.ndarray:
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(gen)
    w, h = meta["size"]
    return np.frombuffer(next(gen), np.uint8).reshape(h, w, 3)


@pytest.fixture
def counted_reads(monkeypatch):
    """Counts every read of a latent file's bytes (decode-time reads and digest checks)."""
    calls: list[str] = []
    real_read, real_same = identity.read_identified, identity.same_content

    def read(step):
        calls.append(f"read {step.path.name}")
        return real_read(step)

    def same(stored, step):
        calls.append(f"digest {step.path.name}")
        return real_same(stored, step)

    monkeypatch.setattr("latent_decoder.lifecycle.read_identified", read)
    monkeypatch.setattr("latent_decoder.plan.same_content", same)
    return calls


def test_replaced_latent_is_decoded_again_and_dry_run_says_changed_input(make_experiment, counted_reads):
    exp = make_experiment(prompts=1, steps=3)
    out = exp / "latents_videos"
    latent = exp / "latents" / ITEM.replace("step_001", "step_001.npy.gz")
    assert invoke("decode", str(exp)).exit_code == 0
    first = decoded(out)
    old_frame = first_frame(out / f"{ITEM}.mp4")

    # A no-op resume reads no latent file at all.
    counted_reads.clear()
    result = invoke("decode", str(exp))
    assert result.exit_code == 0 and "3 already done" in result.output
    assert counted_reads == []

    # The user regenerates that video: another latent of the same shape and size class.
    save_npy_gz(latent, -load(latent))
    dry = invoke("decode", str(exp), "--dry-run", "-v")
    assert "1 decode again (changed input)" in dry.output and "step_001  decode again (changed input)" in dry.output
    inspected = CliRunner().invoke(cli, ["inspect", str(exp)])
    assert f"decode again (changed input): {ITEM}" in inspected.output, inspected.output
    assert "2 done, 1 decode again (changed input)" in inspected.output
    counted_reads.clear()
    result = invoke("decode", str(exp))
    assert result.exit_code == 0 and "1 ok, 0 failed, 2 already done" in result.output, result.output
    now = decoded(out)
    assert now[ITEM] != first[ITEM] and {k: v for k, v in now.items() if k != ITEM} == {
        k: v for k, v in first.items() if k != ITEM}
    assert not np.array_equal(first_frame(out / f"{ITEM}.mp4"), old_frame), "the video must be of the new latent"
    # The stat changed, so its bytes were compared once (then read to decode); the others were not read.
    assert sorted(counted_reads) == ["digest step_001.npy.gz", "read step_001.npy.gz"]


def test_same_bytes_with_a_new_mtime_stay_done_and_get_the_fast_path_back(make_experiment, counted_reads):
    exp = make_experiment(prompts=1, steps=2)
    out = exp / "latents_videos"
    assert invoke("decode", str(exp)).exit_code == 0
    first = decoded(out)
    latent = exp / "latents" / "prompt_000" / "vid_001" / "step_000.npy.gz"
    os.utime(latent, ns=(latent.stat().st_atime_ns, latent.stat().st_mtime_ns + 5_000_000_000))  # touch

    counted_reads.clear()
    result = invoke("decode", str(exp))
    assert result.exit_code == 0 and "2 already done" in result.output, result.output
    assert counted_reads == ["digest step_000.npy.gz"] and decoded(out) == first
    # The journal took the new stat: the next resume compares no digest.
    counted_reads.clear()
    assert invoke("decode", str(exp)).exit_code == 0 and counted_reads == []


def test_another_experiment_into_the_same_output_folder_is_decoded(make_experiment, tmp_path):
    a = make_experiment("a", prompts=1, steps=2)
    b = make_experiment("b", prompts=1, steps=2, seed=7)
    out = tmp_path / "shared_out"
    assert invoke("decode", str(a), "--output-dir", str(out)).exit_code == 0
    first = decoded(out)
    result = invoke("decode", str(b), "--output-dir", str(out))
    assert result.exit_code == 0 and "2 ok, 0 failed, 0 already done" in result.output, result.output
    assert all(decoded(out)[k] != first[k] for k in first)
    # A byte-identical copy of B somewhere else made the same outputs: done, nothing decoded.
    copy = tmp_path / "b_copy"
    shutil.copytree(b, copy)
    result = invoke("decode", str(copy), "--output-dir", str(out))
    assert result.exit_code == 0 and "2 already done" in result.output, result.output


def test_changed_video_geometry_decodes_again(make_experiment):
    exp = make_experiment(prompts=1, steps=2)
    assert invoke("decode", str(exp)).exit_code == 0
    config_path = exp / "configs" / "generation_config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["video_settings"]["frames"] = 13
    config_path.write_text(yaml.safe_dump(config))
    dry = invoke("decode", str(exp), "--dry-run")
    assert "2 decode again (settings changed)" in dry.output, dry.output


def test_a_failed_redecode_keeps_the_good_output(make_experiment):
    exp = make_experiment(prompts=1, steps=3)
    out = exp / "latents_videos"
    assert invoke("decode", str(exp)).exit_code == 0
    video = out / f"{ITEM}.mp4"
    good_bytes, good_thumb = video.read_bytes(), (out / f"{ITEM}.jpg").read_bytes()
    latent = exp / "latents" / "prompt_000" / "vid_001" / "step_001.npy.gz"
    latent.write_bytes(latent.read_bytes()[:40])  # became unreadable

    result = invoke("decode", str(exp), "--force")
    assert result.exit_code == 1, result.output
    assert video.read_bytes() == good_bytes and (out / f"{ITEM}.jpg").read_bytes() == good_thumb
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["failed_steps"] == 1 and summary["successful_steps"] == 2
    [failure] = summary["failures"]
    assert failure["item"] == ITEM and str(latent) in failure["error"] and "truncated" in failure["error"]
    status = CliRunner().invoke(cli, ["status", str(exp), "--failed"])
    assert status.exit_code == 0 and "step_001" in status.output and "truncated" in status.output

    # The file is fixed: a new success replaces the kept output.
    shutil.copy(exp / "latents" / "prompt_000" / "vid_001" / "step_002.npy.gz", latent)
    result = invoke("decode", str(exp))
    assert result.exit_code == 0 and "1 ok" in result.output
    assert video.read_bytes() != good_bytes
    assert json.loads((out / "decode_summary.json").read_text())["failed_steps"] == 0


def test_out_of_memory_is_retried_once_with_tiling(make_experiment, monkeypatch):
    import torch

    from latent_decoder.worker import DecodeWorker

    tiled: list[bool] = []
    real = DecodeWorker.decode

    def decode(self, latent, source="<array>", condition=None):
        tiled.append(bool(getattr(self.vae, "use_tiling", False)))
        if "step_001" in source and not self.vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if "step_002" in source:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return real(self, latent, source, condition)

    monkeypatch.setattr(DecodeWorker, "decode", decode)
    exp = make_experiment(prompts=1, steps=3)
    result = invoke("decode", str(exp))
    assert result.exit_code == 1
    records = journal_records(exp / "latents_videos")
    assert records[ITEM]["status"] == "ok"
    failed = records["prompt_000/vid_001/step_002"]
    assert failed["status"] == "failed" and "out of memory" in failed["error"].lower()
    # step_000 once untiled; step_001 untiled then tiled; step_002 untiled then tiled; tiling off after.
    assert tiled == [False, False, True, False, True]


def test_non_finite_frames_fail_the_item_and_suggest_another_dtype(make_experiment, monkeypatch):
    import torch

    from latent_decoder import families

    exp = make_experiment(prompts=1, steps=2)
    rule = families.FAMILIES["wan"]

    def overflowing(z, ctx):
        video = rule.decode(z, ctx)
        return video * torch.tensor(float("inf"))  # what an fp16 overflow leaves behind

    import dataclasses

    monkeypatch.setitem(families.FAMILIES, "wan", dataclasses.replace(rule, decode=overflowing))
    result = invoke("decode", str(exp))
    assert result.exit_code == 1
    for rec in journal_records(exp / "latents_videos").values():
        assert rec["status"] == "failed" and "NaN/Inf" in rec["error"] and "--dtype bfloat16" in rec["error"]
    assert not list((exp / "latents_videos").rglob("*.mp4"))


def test_sticky_device_error_stops_the_run_keeping_finished_items(make_experiment, monkeypatch):
    from latent_decoder.worker import DecodeWorker

    real = DecodeWorker.decode

    def decode(self, latent, source="<array>", condition=None):
        if "step_002" in source:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, latent, source, condition)

    monkeypatch.setattr(DecodeWorker, "decode", decode)
    exp = make_experiment(prompts=1, steps=4)
    result = invoke("decode", str(exp))
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "illegal memory access" in errors[0] and "cannot be used" in errors[0]
    records = journal_records(exp / "latents_videos")
    assert {k for k, r in records.items() if r["status"] == "ok"} == {
        "prompt_000/vid_001/step_000", "prompt_000/vid_001/step_001"}
    assert "prompt_000/vid_001/step_002" not in records, "a device failure is not the item's fault"
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert summary["successful_steps"] == 2 and summary["pending_steps"] == 2
    assert "illegal memory access" in summary["last_run"]["stopped"]


def x264_subme(mp4: Path) -> bytes:
    """x264 writes its settings into the stream; subme differs per preset (ultrafast 0, veryfast 2, medium 7)."""
    data = mp4.read_bytes()
    start = data.index(b"subme=")
    return data[start:data.index(b" ", start)]


def test_encoder_preset_default_and_option(make_experiment):
    exp = make_experiment(prompts=1, steps=1)
    video = exp / "latents_videos" / "prompt_000" / "vid_001" / "step_000.mp4"
    assert invoke("decode", str(exp)).exit_code == 0
    assert x264_subme(video) == b"subme=2"  # veryfast
    dry = invoke("decode", str(exp), "--preset", "medium", "--dry-run")
    assert "1 decode again (settings changed)" in dry.output
    assert invoke("decode", str(exp), "--preset", "medium").exit_code == 0
    assert x264_subme(video) == b"subme=7"


def test_a_truncated_output_video_is_decoded_again(make_experiment):
    exp = make_experiment(prompts=1, steps=2)
    assert invoke("decode", str(exp)).exit_code == 0
    video = exp / "latents_videos" / f"{ITEM}.mp4"
    whole = video.read_bytes()
    video.write_bytes(whole[: len(whole) // 2])  # a disk problem, a careless copy
    dry = invoke("decode", str(exp), "--dry-run")
    assert "1 decode again (outputs missing)" in dry.output, dry.output
    result = invoke("decode", str(exp))
    assert result.exit_code == 0 and "1 ok, 0 failed, 1 already done" in result.output, result.output
    assert len(video.read_bytes()) == len(whole)
