"""Experiment reading, discovery, filters and the settings merge, on real folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.synthetic import save_npy_gz, write_config
from latent_decoder.errors import SetupError
from latent_decoder.experiment import Experiment, Filters
from latent_decoder.settings import CliOptions, resolve_settings


def _exp(tmp_path: Path, config: str | None = None) -> Path:
    root = tmp_path / "exp"
    if config is None:
        write_config(root, "Org/model", 64, 32, 9, 16)
    else:
        (root / "configs").mkdir(parents=True)
        (root / "configs" / "generation_config.yaml").write_text(config)
    z = np.zeros((1, 16, 3, 4, 8), np.float16)
    for prompt in ("prompt_000", "prompt_001", "p000_b001_s002", "not_a_prompt"):
        for video in ("vid_001", "vid_002"):
            for step in (0, 1, 10):
                save_npy_gz(root / "latents" / prompt / video / f"step_{step:03d}.npy.gz", z)
    (root / "latents" / "prompt_000" / "vid_001" / "notes.txt").write_text("ignored")
    np.save(root / "latents" / "prompt_000" / "vid_001" / "step_002.npy", z)  # plain .npy
    np.save(root / "latents" / "prompt_000" / "vid_001" / "step_010.npy", z)  # loses to the .npy.gz
    return root


def test_discovery_finds_both_prompt_naming_schemes_and_plain_npy(tmp_path):
    exp = Experiment.load(_exp(tmp_path))
    keys = [s.key for s in exp.discover()]
    assert len(keys) == 3 * 2 * 3 + 1
    assert "p000_b001_s002/vid_002/step_010" in keys
    assert not any(k.startswith("not_a_prompt") for k in keys)
    steps = {s.key: s for s in exp.discover()}
    assert steps["prompt_000/vid_001/step_002"].path.name == "step_002.npy"
    assert steps["prompt_000/vid_001/step_010"].path.name == "step_010.npy.gz"
    # Stable order: by prompt, video, step number.
    assert keys[:4] == ["p000_b001_s002/vid_001/step_000", "p000_b001_s002/vid_001/step_001",
                        "p000_b001_s002/vid_001/step_010", "p000_b001_s002/vid_002/step_000"]


def test_filters_are_exact_comma_lists_and_steps_accept_numbers(tmp_path):
    exp = Experiment.load(_exp(tmp_path))
    got = exp.discover(Filters.parse("prompt_000, prompt_001", "vid_002", "step_000,10"))
    assert [s.key for s in got] == ["prompt_000/vid_002/step_000", "prompt_000/vid_002/step_010",
                                    "prompt_001/vid_002/step_000", "prompt_001/vid_002/step_010"]
    # Exact names only: a prefix selects nothing.
    assert exp.discover(Filters.parse("prompt_00")) == []
    assert [s.step for s in exp.discover(Filters.parse(None, None, "step_001"))] == ["step_001"] * 6


def test_dry_run_uses_the_same_matcher(tmp_path):
    root = _exp(tmp_path)
    result = CliRunner().invoke(cli, ["decode", str(root), "--dry-run", "--prompt-filter", "prompt_001",
                                      "--step-filter", "0,step_010", "-v"])
    assert result.exit_code == 0, result.output
    assert "dry run: 4 items (4 decode)" in result.output
    assert "prompt_001/vid_001: 2 steps" in result.output and "prompt_000" not in result.output.split("output")[-1]
    assert not (root / "latents_videos").exists()


def test_settings_merge_cli_over_config_over_defaults(tmp_path):
    exp = Experiment.load(_exp(tmp_path))
    s = resolve_settings(exp, CliOptions())
    assert (s.output.model, s.output.fps, s.output.crf, s.output.dtype, s.output.format) == ("Org/model", 16.0, 25,
                                                                                           "float32", "mp4")
    assert s.output_dir == exp.root / "latents_videos"
    s = resolve_settings(exp, CliOptions(model="/m", fps=30, quality=10, dtype="bfloat16", output_dir=tmp_path / "o"))
    assert (s.output.model, s.output.fps, s.output.crf, s.output.dtype) == ("/m", 30.0, 0, "bfloat16")
    assert s.output_dir == tmp_path / "o"
    assert resolve_settings(exp, CliOptions(crf=18)).output.crf == 18
    with pytest.raises(SetupError, match="either --crf or --quality"):
        resolve_settings(exp, CliOptions(crf=18, quality=5))


def test_config_variants(tmp_path):
    root = _exp(tmp_path, "model_id: Top/level\n")
    exp = Experiment.load(root)
    s = resolve_settings(exp, CliOptions())
    assert s.output.model == "Top/level" and s.output.fps == 12.0  # no video_settings -> 12 fps
    (root / "configs" / "generation_config.yaml").write_text("model_id: x\nvideo_settings: {fps: fast}\n")
    with pytest.raises(SetupError, match="video_settings.fps must be a number"):
        resolve_settings(Experiment.load(root), CliOptions())


def test_png_fingerprint_ignores_fps_and_crf():
    from latent_decoder.settings import OutputSettings

    a = OutputSettings(model="m", format="png", fps=8, crf=20)
    b = OutputSettings(model="m", format="png", fps=30, crf=40)
    assert a.fingerprint() == b.fingerprint()
    assert OutputSettings(model="m", fps=8).fingerprint() != OutputSettings(model="m", fps=30).fingerprint()


def test_fingerprint_counts_the_geometry_and_tracks_the_vae_choice():
    from latent_decoder.settings import OutputSettings

    plain = OutputSettings(model="m")
    # Unset optional model fields are left out, so fingerprints of older runs (migrated) still match.
    assert set(plain.fingerprint()) == {"model", "dtype", "fps", "format", "crf", "scale", "frames", "height", "width"}
    # The decode depends on the video geometry (LTX unpacking, CogVideoX 1.5 frame dropping).
    assert OutputSettings(model="m", frames=61, height=480, width=848).fingerprint() != plain.fingerprint()
    assert (OutputSettings(model="m", frames=61, height=480, width=848).fingerprint()
            != OutputSettings(model="m", frames=49, height=480, width=848).fingerprint())
    # Another VAE subfolder or single-file config is another VAE: its items are decoded again.
    assert OutputSettings(model="m", vae_subfolder="vae_2").fingerprint() != plain.fingerprint()
    assert OutputSettings(model="m", vae_config="cfg").fingerprint() != plain.fingerprint()
