"""A refused run leaves nothing behind: everything that can refuse it (the model, its family rule, the
VAE class, the weights, the device, the settings) comes before the output folder is created, so exit 2
means one line on stderr and no output folder at all (not only no MP4)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from latent_decoder.cli import cli


def refuse(exp: Path, *args: str, word: str) -> None:
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and word in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (exp / "latents_videos").exists(), sorted(p.name for p in (exp / "latents_videos").iterdir())
    assert not (exp / "latents_videos_x0").exists()


@pytest.fixture
def exp(make_experiment, tiny_model_dir, tmp_path) -> Path:
    """An experiment with a model folder of its own (the refusals below damage it)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    return make_experiment(prompts=1, steps=2, model_dir=model)


def test_a_family_rule_that_does_not_fit_the_vae(exp):
    """Reproduced on the old main: exit 2 with a clear line, but a journal, lock, summary and gallery
    of an empty run were left in EXP/latents_videos."""
    refuse(exp, "--family", "ltx-video", word="--family ltx-video")


def test_a_model_that_cannot_be_found(exp):
    refuse(exp, "--model", str(exp / "no_such_model"), word="no_such_model")


def test_a_vae_class_without_a_rule(exp, tmp_path):
    config = tmp_path / "model" / "vae" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "_class_name": "AutoencoderDC"}))
    refuse(exp, word="AutoencoderDC")


def test_weights_that_cannot_be_loaded(exp, tmp_path):
    weights = next((tmp_path / "model" / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    refuse(exp, word=weights.name)


def test_a_device_this_machine_does_not_have(exp):
    refuse(exp, "--device", "cuda:3", word="cuda")


def test_settings_that_do_not_go_together(exp):
    refuse(exp, "--executor", "inline", "--workers", "2", word="--workers")


def test_an_x0_view_that_has_nothing_to_decode(exp):
    refuse(exp, "--view", "x0", "--step-filter", "0", word="x0")
