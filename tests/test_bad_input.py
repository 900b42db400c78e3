"""Bad input: broken latent files fail only their item (named, with a reason); a broken setup
stops the run with one clear line and exit code 2."""
from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.synthetic import save_npy_gz

from conftest import journal_records, run_cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _break(video_dir: Path, good: np.ndarray) -> dict[str, str]:
    """Replace steps 1..7 with broken files; returns step -> a word the error must contain."""
    truncated = gzip.compress(_npy_bytes(good))
    (video_dir / "step_001.npy.gz").write_bytes(truncated[: len(truncated) // 2])
    (video_dir / "step_002.npy.gz").write_bytes(b"definitely not gzip data")
    (video_dir / "step_003.npy.gz").write_bytes(gzip.compress(b"hello, not an npy payload"))
    save_npy_gz(video_dir / "step_004.npy.gz", good[0, 0])  # 3 dims
    save_npy_gz(video_dir / "step_005.npy.gz", np.zeros((1, 8, *good.shape[2:]), np.float16))  # 8 channels
    nan = good.copy()
    nan[0, 0, 0, 0, :3] = np.nan
    save_npy_gz(video_dir / "step_006.npy.gz", nan)
    inf = good.copy()
    inf[0, 1, 0, 1, 1] = np.inf
    save_npy_gz(video_dir / "step_007.npy.gz", inf)
    return {"step_001": "truncated", "step_002": "not a gzip", "step_003": ".npy", "step_004": "3 dims",
            "step_005": "8 channels", "step_006": "NaN", "step_007": "Inf"}


def test_broken_latents_fail_their_item_and_the_rest_decode(make_experiment):
    exp = make_experiment(prompts=1, steps=9)
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    good = np.load(io.BytesIO(gzip.decompress((video_dir / "step_000.npy.gz").read_bytes())))
    expected = _break(video_dir, good)

    result = invoke("decode", str(exp))
    assert result.exit_code == 1, result.output
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert summary["total_steps"] == 9
    assert summary["failed_steps"] == 7 and summary["successful_steps"] == 2
    steps = {s["step"]: s for s in journal_records(exp / "latents_videos").values()}
    for step, word in expected.items():
        rec = steps[step]
        assert rec["status"] == "failed"
        assert str(video_dir / f"{step}.npy.gz") in rec["error"], rec["error"]
        assert word in rec["error"], rec["error"]
        assert "\n" not in rec["error"]
        assert not (exp / "latents_videos" / "prompt_000" / "vid_001" / f"{step}.mp4").exists()
    for ok in ("step_000", "step_008"):
        assert steps[ok]["status"] == "ok"
        assert (exp / "latents_videos" / "prompt_000" / "vid_001" / f"{ok}.mp4").stat().st_size > 0
    # The end-of-run report names the failures.
    assert "7 failed" in result.output and "step_005" in result.output

    # A rerun retries only the failed items; after fixing one file it succeeds.
    save_npy_gz(video_dir / "step_006.npy.gz", good)
    result = invoke("decode", str(exp))
    assert result.exit_code == 1
    assert "1 ok, 6 failed, 2 already done" in result.output
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert (summary["total_steps"], summary["successful_steps"]) == (9, 3)


def test_plain_npy_float32_and_unbatched_latents_decode(make_experiment):
    exp = make_experiment(prompts=1, steps=2)
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    good = np.load(io.BytesIO(gzip.decompress((video_dir / "step_001.npy.gz").read_bytes())))
    (video_dir / "step_001.npy.gz").unlink()
    np.save(video_dir / "step_001.npy", good[0].astype(np.float32))  # plain .npy, [C,T,H,W], float32
    result = invoke("decode", str(exp), "--format", "png")
    assert result.exit_code == 0, result.output
    frames = sorted((exp / "latents_videos" / "prompt_000" / "vid_001" / "step_001").glob("frame_*.png"))
    assert len(frames) == 9


@pytest.mark.parametrize("case", ["no_dir", "no_config", "no_latents", "no_model_id", "bad_yaml", "missing_model",
                                  "bad_device"])
def test_setup_errors_are_one_line_exit_2(make_experiment, tmp_path, case):
    exp = make_experiment(prompts=1, steps=1)
    args = ["decode", str(exp)]
    needle = {"no_dir": "experiment folder not found", "no_config": "config not found",
              "no_latents": "latents folder not found", "no_model_id": "no model id",
              "bad_yaml": "cannot parse", "missing_model": "not found", "bad_device": "CUDA"}[case]
    if case == "no_dir":
        args = ["decode", str(tmp_path / "nope")]
    elif case == "no_config":
        (exp / "configs" / "generation_config.yaml").unlink()
    elif case == "no_latents":
        import shutil
        shutil.rmtree(exp / "latents")
    elif case == "no_model_id":
        (exp / "configs" / "generation_config.yaml").write_text("video_settings: {fps: 8}\n")
    elif case == "bad_yaml":
        (exp / "configs" / "generation_config.yaml").write_text("model_settings: [unclosed\n")
    elif case == "missing_model":
        args += ["--model", str(tmp_path / "no_such_model")]
    elif case == "bad_device":
        args += ["--device", "cuda:0"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (exp / "latents_videos" / "prompt_000").exists()


def test_setup_error_in_a_real_process_prints_one_line(make_experiment):
    exp = make_experiment(prompts=1, steps=1)
    proc = run_cli("decode", str(exp), "--model", "Some-Org/not-cached-model")
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err[-1].startswith("error: model 'Some-Org/not-cached-model' not found"), proc.stderr
    assert "Traceback" not in proc.stderr
    verbose = run_cli("decode", str(exp), "--model", "Some-Org/not-cached-model", "-v")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_a_warning_is_one_line_in_a_real_process(make_experiment, tmp_path):
    """Our warnings read like the rest of the output: one line, no file name or source line."""
    exp = make_experiment(prompts=1, steps=1)
    proc = run_cli("decode", str(exp), "--dtype", "float16", "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "float16" in line and "slow" in line]
    assert lines == ["warning: float16 on CPU is slow and poorly supported; prefer float32 or bfloat16"], proc.stderr
    assert "UserWarning" not in proc.stderr and "worker_cls(" not in proc.stderr
