"""``latent-decoder inspect``: the resolved model, family rule, latent shapes with counts, output
frames per shape and a memory estimate, read from headers and configs without decoding."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.synthetic import save_npy_gz


def inspect(*args: str):
    return CliRunner().invoke(cli, ["inspect", *args])


def test_inspect_reports_model_family_shapes_and_output(make_experiment, tiny_model_dir: Path):
    exp = make_experiment(prompts=2, steps=3, frames=9, height=32, width=48)  # latents [1, 16, 3, 4, 6]
    save_npy_gz(exp / "latents" / "prompt_001" / "vid_001" / "step_009.npy.gz", np.zeros((16, 5, 4, 6), np.float32))
    save_npy_gz(exp / "latents" / "prompt_001" / "vid_002" / "step_000.npy.gz", np.zeros((1, 48, 3, 4, 6), np.float16))
    garbage = exp / "latents" / "prompt_001" / "vid_003" / "step_000.npy.gz"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"not gzip at all")
    result = inspect(str(exp))
    assert result.exit_code == 1, result.output  # one shape does not fit the VAE
    out = result.output
    assert f"{tiny_model_dir}: {tiny_model_dir / 'vae'} (local folder)" in out
    assert "vae class   AutoencoderKLWan" in out
    assert "family      wan (Wan 2.1/2.2), mirrors diffusers.WanPipeline" in out
    assert "rule        VAE class AutoencoderKLWan (no model_index.json names the pipeline)" in out
    assert "[1, 16, T, H, W]" in out
    assert "latents     9 file(s); headers read: 9" in out
    lines = out.splitlines()
    [main] = [line for line in lines if line.startswith("  [1, 16, 3, 4, 6] float16 x6 ")]
    assert "-> 9 frames 48x32" in main  # (3-1)*4+1 frames at 8x the latent size
    memory = re.search(r"decode memory ~([\d.]+) (KiB|MiB|GiB)", main)
    assert memory is not None, main
    [unbatched] = [line for line in lines if line.startswith("  [16, 5, 4, 6] float32 x1 ")]
    assert "-> 17 frames 48x32" in unbatched
    [bad] = [line for line in lines if line.startswith("  [1, 48, 3, 4, 6] float16 x1")]
    assert "does not fit" in bad and "48 channels" in bad and "[1, 16, T, H, W]" in bad
    [unreadable] = [line for line in lines if line.startswith("  unreadable: ")]
    assert str(garbage) in unreadable and "header" in unreadable
    assert not (exp / "latents_videos").exists()  # nothing decoded, nothing written


def test_inspect_memory_estimate_scales_with_dtype_and_size(make_experiment):
    small = make_experiment("small", prompts=1, steps=1, frames=9, height=32, width=48)
    large = make_experiment("large", prompts=1, steps=1, frames=9, height=64, width=96)

    def estimate(exp: Path, *args: str) -> float:
        result = inspect(str(exp), *args)
        assert result.exit_code == 0, result.output
        value, unit = re.search(r"decode memory ~([\d.]+) (KiB|MiB|GiB)", result.output).groups()
        return float(value) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]

    assert estimate(large) > 3 * estimate(small)
    assert estimate(small, "--dtype", "bfloat16") < estimate(small)


def test_inspect_with_a_missing_model_still_lists_shapes(make_experiment, tmp_path: Path):
    exp = make_experiment(prompts=1, steps=2, frames=9, height=32, width=48)
    result = inspect(str(exp), "--model", str(tmp_path / "no_such_model"))
    assert result.exit_code == 2, result.output
    assert "not found" in result.output and str(tmp_path / "no_such_model") in result.output
    assert "[1, 16, 3, 4, 6] float16 x2" in result.output
