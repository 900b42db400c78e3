"""The programmatic API kept from the original tool (``ExperimentLatentDecoder``) and the
compatibility script ``scripts/decode_latent_steps.py`` with the original flags."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import latent_decoder.worker
from latent_decoder import ExperimentLatentDecoder, decode_latent
from latent_decoder.cli import cli
from latent_decoder.latents import load_latent

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "decode_latent_steps.py"
FRAMES, HEIGHT, WIDTH, FPS = 5, 16, 32, 8.0  # small: these tests are about the API, not the pixels


def mp4_info(path: Path) -> tuple[float, tuple[int, int], int]:
    """(fps, (width, height), frame count) of an MP4, read back with ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    return meta["fps"], tuple(meta["size"]), count


@pytest.fixture
def exp(make_experiment) -> Path:
    return make_experiment(prompts=2, steps=3, frames=FRAMES, height=HEIGHT, width=WIDTH)


@pytest.fixture
def load_count(monkeypatch) -> list[str]:
    """Counts VAE loads (each ``DecodeWorker`` loads its VAE once)."""
    calls: list[str] = []
    real = latent_decoder.worker.load_vae

    def counting(resolved, device, dtype):
        calls.append(str(resolved.folder))
        return real(resolved, device, dtype)

    monkeypatch.setattr(latent_decoder.worker, "load_vae", counting)
    return calls


def test_accessors(exp, tiny_model_dir):
    decoder = ExperimentLatentDecoder(exp, device="cpu")
    assert decoder.get_model_id() == str(tiny_model_dir)
    assert decoder.get_video_settings() == {"width": WIDTH, "height": HEIGHT, "fps": FPS, "frames": FRAMES}
    assert decoder.find_latent_directories() == [exp / "latents" / "prompt_000" / "vid_001",
                                                 exp / "latents" / "prompt_001" / "vid_001"]
    assert [p.name for p in decoder.find_latent_steps(exp / "latents" / "prompt_001" / "vid_001")] == [
        "step_000.npy.gz", "step_001.npy.gz", "step_002.npy.gz"]
    assert ExperimentLatentDecoder(exp, model="Org/Other").get_model_id() == "Org/Other"


def test_decode_video_directory(exp, tmp_path, load_count):
    decoder = ExperimentLatentDecoder(exp, device="cpu")
    video_dir = decoder.find_latent_directories()[0]
    results = decoder.decode_video_directory(video_dir, step_filter="step_000,step_002")
    assert sorted(results) == ["step_000", "step_002"]
    out = exp / "latents_videos" / "prompt_000" / "vid_001"
    for name, result in results.items():
        assert result.success and result.error_message is None
        assert result.decode_time > 0
        assert result.output_path == out / f"{name}.mp4"
        assert mp4_info(result.output_path) == (pytest.approx(FPS), (WIDTH, HEIGHT), FRAMES)
        assert (out / f"{name}.jpg").is_file()
    assert not (out / "step_001.mp4").exists()  # filtered out
    assert not (exp / "latents_videos" / "prompt_001").exists()  # other video folder untouched

    # output_dir and fps arguments; the VAE loaded for the first call is reused.
    other = decoder.decode_video_directory(video_dir, output_dir=tmp_path / "fps5", fps=5, step_filter="step_001")
    assert list(other) == ["step_001"] and other["step_001"].success
    assert other["step_001"].output_path == tmp_path / "fps5" / "prompt_000" / "vid_001" / "step_001.mp4"
    assert mp4_info(other["step_001"].output_path)[0] == pytest.approx(5.0)
    assert len(load_count) == 1

    decoder.cleanup()
    assert decoder.worker is None
    # Usable again after cleanup (loads the VAE anew).
    again = decoder.decode_video_directory(exp / "latents" / "prompt_001" / "vid_001", step_filter="step_002")
    assert list(again) == ["step_002"] and again["step_002"].success
    assert len(load_count) == 2
    decoder.cleanup()


def test_decode_video_directory_with_another_spelling_of_the_path(exp, monkeypatch):
    """The experiment opened by a relative path, the video folder named by an absolute one."""
    monkeypatch.chdir(exp.parent)
    decoder = ExperimentLatentDecoder(exp.name, device="cpu")
    results = decoder.decode_video_directory(exp / "latents" / "prompt_000" / "vid_001", step_filter="step_000")
    decoder.cleanup()
    assert list(results) == ["step_000"] and results["step_000"].success
    assert results["step_000"].output_path.resolve() == (
        exp / "latents_videos" / "prompt_000" / "vid_001" / "step_000.mp4").resolve()


def test_decode_experiment_results_files_and_summary(exp, tmp_path, load_count):
    decoder = ExperimentLatentDecoder(exp, device="cpu")
    out = tmp_path / "videos"
    results = decoder.decode_experiment(output_dir=out, step_filter="step_002")
    dirs = [str(exp / "latents" / p / "vid_001") for p in ("prompt_000", "prompt_001")]
    assert sorted(results) == dirs
    for video_dir, steps in results.items():
        assert list(steps) == ["step_002"]
        result = steps["step_002"]
        assert result.success and result.decode_time > 0
        assert result.output_path == out / Path(video_dir).relative_to(exp / "latents") / "step_002.mp4"
        assert mp4_info(result.output_path)[1:] == ((WIDTH, HEIGHT), FRAMES)
    summary = json.loads((out / "decode_summary.json").read_text())
    # The summary covers the whole experiment: the other 4 steps are pending.
    assert (summary["total_steps"], summary["successful_steps"], summary["failed_steps"]) == (6, 2, 0)
    assert summary["pending_steps"] == 4
    assert summary["success_rate"] == pytest.approx(2 / 6)
    assert summary["total_decode_time"] > 0
    assert summary["avg_decode_time"] == pytest.approx(summary["total_decode_time"] / 2, abs=1e-3)
    assert sorted(summary["video_summaries"]) == ["prompt_000/vid_001", "prompt_001/vid_001"]
    assert all((v["total_steps"], v["successful_steps"]) == (3, 1) for v in summary["video_summaries"].values())

    # Filters narrow the results; the summary still covers everything in the folder.
    narrow = decoder.decode_experiment(output_dir=out, prompt_filter="prompt_001", video_filter="vid_001",
                                       step_filter="step_000")
    assert {k: list(v) for k, v in narrow.items()} == {dirs[1]: ["step_000"]}
    summary = json.loads((out / "decode_summary.json").read_text())
    assert (summary["total_steps"], summary["successful_steps"]) == (6, 3)
    assert summary["video_summaries"]["prompt_001/vid_001"]["successful_steps"] == 2

    # A repeated call skips done items (nothing rewritten) but still reports them.
    stamp = results[dirs[0]]["step_002"].output_path.stat().st_mtime_ns
    repeat = decoder.decode_experiment(output_dir=out, step_filter="step_002")
    assert sorted(repeat) == dirs and all(v["step_002"].success for v in repeat.values())
    assert results[dirs[0]]["step_002"].output_path.stat().st_mtime_ns == stamp
    assert len(load_count) == 1
    decoder.cleanup()


def test_decode_experiment_default_output_and_a_failed_step(exp):
    bad = exp / "latents" / "prompt_001" / "vid_001" / "step_001.npy.gz"
    bad.write_bytes(b"not a gzip file at all")
    decoder = ExperimentLatentDecoder(exp, device="cpu")
    results = decoder.decode_experiment(prompt_filter="prompt_001")
    decoder.cleanup()
    steps = results[str(exp / "latents" / "prompt_001" / "vid_001")]
    assert sorted(steps) == ["step_000", "step_001", "step_002"]
    failed = steps["step_001"]
    assert not failed.success and failed.output_path is None
    assert str(bad) in failed.error_message and "gzip" in failed.error_message
    assert steps["step_000"].success and steps["step_002"].success
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert (summary["total_steps"], summary["failed_steps"], summary["pending_steps"]) == (6, 1, 3)
    assert summary["success_rate"] == pytest.approx(2 / 6)  # of all steps: 3 were not in this run


def test_png_format_and_in_memory_decode_agree(exp, tiny_model_dir):
    decoder = ExperimentLatentDecoder(exp, device="cpu", format="png")
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    result = decoder.decode_video_directory(video_dir, step_filter="step_002")["step_002"]
    assert result.success and result.output_path.is_dir()
    files = sorted(result.output_path.glob("frame_*.png"))
    assert len(files) == FRAMES
    png = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    latent = load_latent(video_dir / "step_002.npy.gz")
    in_memory = decoder.decode_latent(latent)
    decoder.cleanup()
    assert in_memory.dtype == np.uint8 and in_memory.shape == (FRAMES, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(in_memory, png)
    np.testing.assert_array_equal(decode_latent(latent, model=str(tiny_model_dir), device="cpu"), png)


# --------------------------------------------------------------------------- compatibility script


def test_compat_script_tiny_preset(exp, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(exp), "--step-filter", "step_000",
                           "--compress-preset", "tiny"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = exp / "latents_videos"
    for prompt in ("prompt_000", "prompt_001"):
        video = out / prompt / "vid_001" / "step_000.mp4"
        assert mp4_info(video) == (pytest.approx(FPS), (WIDTH // 2, HEIGHT // 2), FRAMES)
        assert Image.open(video.with_suffix(".jpg")).size == (WIDTH // 2, HEIGHT // 2)
        assert not (out / prompt / "vid_001" / "step_001.mp4").exists()
    summary = json.loads((out / "decode_summary.json").read_text())
    assert summary["settings"]["scale"] == 0.5
    assert summary["settings"]["crf"] == 48  # quality 0.5 on imageio's 0-10 scale
    assert summary["total_steps"] == 6 and summary["successful_steps"] == 2


def _load_script():
    spec = importlib.util.spec_from_file_location("decode_latent_steps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compat_script_original_flags(exp, tmp_path):
    script = _load_script()
    out = tmp_path / "out"
    args = [str(exp), "--output-dir", str(out), "--device", "cpu", "--prompt-filter", "prompt_001",
            "--video-filter", "vid_001", "--step-filter", "step_001", "--fps", "10", "--quality", "7",
            "--scale", "0.75"]

    dry = CliRunner().invoke(cli, script.translate([*args, "--dry-run"]))
    assert dry.exit_code == 0, dry.stderr
    assert "prompt_001/vid_001: 1 steps, 0 done, 1 to decode" in dry.output
    assert "prompt_000" not in dry.output
    assert not out.exists() or not list(out.rglob("*.mp4"))

    run = CliRunner().invoke(cli, script.translate(args))
    assert run.exit_code == 0, run.stderr
    video = out / "prompt_001" / "vid_001" / "step_001.mp4"
    assert mp4_info(video) == (pytest.approx(10.0), (WIDTH * 3 // 4, HEIGHT * 3 // 4), FRAMES)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("step_*.mp4")) == ["prompt_001/vid_001/step_001.mp4"]
    settings = json.loads((out / "decode_summary.json").read_text())["settings"]
    assert settings["crf"] == 15 and settings["fps"] == 10.0 and settings["scale"] == 0.75

    # A preset wins over --quality/--scale, as in the original tool.
    translated = script.translate([str(exp), "--quality", "9", "--scale", "1.0", "--compress-preset", "small-file"])
    assert translated[translated.index("--quality") + 1] == "1.0"
    assert translated[translated.index("--scale") + 1] == "0.75"
