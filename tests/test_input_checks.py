"""Every input the user controls is checked once, at setup, with one line: the config's values, the
output path, ``--scale``; what the journal records of a latent (its stored dtype) and whose folder
``status`` shows are true."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from latent_decoder.cli import cli
from latent_decoder.errors import ExperimentError
from latent_decoder.experiment import Experiment
from latent_decoder.settings import CliOptions, resolve_settings

from conftest import journal_records


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def set_config(exp: Path, section: str, key: str, value: object) -> None:
    path = exp / "configs" / "generation_config.yaml"
    config = yaml.safe_load(path.read_text())
    config.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(config))


# ------------------------------------------------------------------------------- config values


@pytest.mark.parametrize("section,key,text,needle", [
    ("video_settings", "fps", ".nan", "video_settings.fps must be a finite number above 0, got nan"),
    ("video_settings", "fps", "0", "video_settings.fps must be a finite number above 0, got 0"),
    ("video_settings", "fps", "true", "video_settings.fps must be a number, got True"),
    ("video_settings", "frames", "9.7", "video_settings.frames must be a whole number, got 9.7"),
    ("video_settings", "frames", "true", "video_settings.frames must be a whole number, got True"),
    ("video_settings", "width", "'48'", "video_settings.width must be a whole number, got '48'"),
    ("video_settings", "height", "0", "video_settings.height must be at least 1, got 0"),
    ("model_settings", "model_id", "123", "model_settings.model_id must be a string"),
])
def test_a_wrong_config_value_is_one_line_naming_it_and_nothing_is_created(make_experiment, section, key, text,
                                                                           needle):
    """Reproduced: fps .nan failed every step at encoding, fps 0 became 12, frames 9.7 became 9 and
    frames true became 1, all silently."""
    exp = make_experiment(prompts=1, steps=1)
    set_config(exp, section, key, "PLACEHOLDER")
    path = exp / "configs" / "generation_config.yaml"
    path.write_text(path.read_text().replace("PLACEHOLDER", text))
    result = invoke("decode", str(exp), "--device", "cpu")
    assert result.exit_code == 2, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {needle}"), result.output
    assert not (exp / "latents_videos").exists()


def test_fps_from_the_command_line_is_checked_like_the_configs(make_experiment):
    exp = make_experiment(prompts=1, steps=1)
    result = invoke("decode", str(exp), "--device", "cpu", "--fps", "nan")
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == ["error: --fps must be a finite number above 0, got nan"]
    assert not (exp / "latents_videos").exists()


def test_sizes_are_whole_numbers_where_a_whole_float_counts(make_experiment):
    exp = make_experiment(prompts=1, steps=1)
    for key, value in (("width", 48.0), ("height", 32.0), ("frames", 9.0), ("fps", 8)):
        set_config(exp, "video_settings", key, value)
    output = resolve_settings(Experiment.load(exp), CliOptions()).output
    assert (output.width, output.height, output.frames, output.fps) == (48, 32, 9, 8.0)
    assert isinstance(output.width, int) and isinstance(output.fps, float)
    set_config(exp, "video_settings", "frames", 9.5)
    with pytest.raises(ExperimentError, match=r"video_settings.frames must be a whole number, got 9.5$"):
        Experiment.load(exp)


# ------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("given", [".", "out/.."])
def test_relative_output_dirs_are_resolved_once(make_experiment, tmp_path, monkeypatch, given):
    """Reproduced: ``--output-dir .`` could not build the views ("PosixPath('.') has an empty name"),
    ``--view both --output-dir .`` crashed with a ValueError traceback, and ``--output-dir out/..``
    put the x0 tree in ``out/.._x0``. The x0 tree belongs beside the folder the path names."""
    exp = make_experiment(prompts=1, steps=3)
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    monkeypatch.chdir(work)
    result = invoke("decode", str(exp), "--device", "cpu", "--output-dir", given, "--view", "both")
    assert result.exit_code == 0, result.output
    assert "empty name" not in result.output and "could not build" not in result.output, result.output
    assert (work / "prompt_000" / "vid_001" / "step_002.mp4").is_file()  # x_t in the folder given
    assert (work / "index.html").is_file() and (work / "prompt_000" / "vid_001" / "progression.png").is_file()
    assert f"videos:  {work}\n" in result.output
    x0 = tmp_path / "work_x0"
    assert (x0 / "prompt_000" / "vid_001" / "step_001.mp4").is_file(), sorted(tmp_path.rglob("*.mp4"))
    assert not (work / "out" / ".._x0").exists() and not (work / "._x0").exists()


# ------------------------------------------------------------------------------- --scale


def test_a_scale_that_rounds_the_configs_size_to_zero_is_refused_at_setup(make_experiment):
    """Reproduced: ``--scale 0.01`` failed every step (a misleading FileNotFoundError on a temp file
    for previews). 48x32 at 0.01 is 0x0; at 0.05 it is 2x1, which encodes (yuv420p is padded)."""
    exp = make_experiment(prompts=1, steps=1)
    refused = invoke("decode", str(exp), "--device", "cpu", "--scale", "0.01")
    assert refused.exit_code == 2, refused.output
    assert error_lines(refused.output) == [
        "error: --scale 0.01 makes 48x32 frames 0x0: use a larger --scale (the config's video_settings size)"]
    assert not (exp / "latents_videos").exists()

    tiny = invoke("decode", str(exp), "--device", "cpu", "--scale", "0.05", "--format", "png")
    assert tiny.exit_code == 0, tiny.output
    frame = exp / "latents_videos" / "prompt_000" / "vid_001" / "step_000" / "frame_0000.png"
    assert Image.open(frame).size == (2, 1)


@pytest.mark.parametrize("decoder", ["vae", "preview"])
def test_a_scale_that_rounds_the_decoded_size_to_zero_fails_each_item_naming_the_size(make_experiment, decoder):
    """Without width/height in the config the size is known only after decoding: each item fails with
    a line that names the file and the size, not an encoder's temp file."""
    exp = make_experiment(prompts=1, steps=1)
    path = exp / "configs" / "generation_config.yaml"
    config = yaml.safe_load(path.read_text())
    del config["video_settings"]["width"], config["video_settings"]["height"]
    path.write_text(yaml.safe_dump(config))
    result = invoke("decode", str(exp), "--device", "cpu", "--scale", "0.01", "--decoder", decoder)
    assert result.exit_code == 1, result.output
    out = exp / ("latents_videos" if decoder == "vae" else "latents_previews")
    [record] = journal_records(out).values()
    assert record["status"] == "failed"
    assert "--scale 0.01 makes 48x32 frames 0x0" in record["error"], record["error"]
    assert "step_000.npy.gz" in record["error"] and "\n" not in record["error"]


# ------------------------------------------------------------------------------- stored dtype


@pytest.mark.parametrize("decoder", ["vae", "preview"])
def test_a_bfloat16_latent_is_recorded_as_bfloat16(make_experiment, decoder):
    """Reproduced: a bfloat16 ``.pt`` latent was recorded as ``latent_dtype: float32`` (the widened
    array's dtype), in the journal and in ``status --json``."""
    import gzip

    import torch

    exp = make_experiment(prompts=1, steps=2)
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    latent = np.load(io.BytesIO(gzip.decompress((video_dir / "step_001.npy.gz").read_bytes())))
    (video_dir / "step_001.npy.gz").unlink()
    torch.save(torch.from_numpy(latent.astype(np.float32)).to(torch.bfloat16), video_dir / "step_001.pt")

    out = exp / ("latents_videos" if decoder == "vae" else "latents_previews")
    result = invoke("decode", str(exp), "--device", "cpu", "--decoder", decoder)
    assert result.exit_code == 0, result.output
    records = journal_records(out)
    assert records["prompt_000/vid_001/step_001"]["latent_dtype"] == "bfloat16"
    assert records["prompt_000/vid_001/step_000"]["latent_dtype"] == "float16"
    status = invoke("status", str(exp), "--output-dir", str(out), "--json")
    dtypes = {r["item"]: r["latent_dtype"] for r in map(json.loads, status.stdout.splitlines())}
    assert dtypes["prompt_000/vid_001/step_001"] == "bfloat16"


# ------------------------------------------------------------------------------- whose folder


def test_status_says_when_a_shared_output_folder_holds_another_experiments_items(make_experiment, tmp_path):
    """Reproduced: ``status A --output-dir shared`` listed experiment B's items as if they were A's."""
    a = make_experiment("a", prompts=1, steps=1)
    b = make_experiment("b", prompts=2, steps=1)
    shared = tmp_path / "shared"
    assert invoke("decode", str(a), "--device", "cpu", "--output-dir", str(shared)).exit_code == 0
    mine = CliRunner().invoke(cli, ["status", str(a), "--output-dir", str(shared)])
    assert mine.exit_code == 0 and "warning" not in mine.stderr, mine.output

    assert invoke("decode", str(b), "--device", "cpu", "--output-dir", str(shared)).exit_code == 0
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(cli, ["status", str(a), "--output-dir", str(shared), *extra])
        assert result.exit_code == 0, result.output
        assert result.stderr.splitlines() == [
            f"warning: {shared} was last decoded from {b}, not {a}: the steps below are that experiment's"]
        assert "prompt_001" in result.stdout  # what the folder holds, shown all the same
    for line in result.stdout.splitlines():  # --json: stdout stays JSON lines
        json.loads(line)
