"""``latent-decoder distill`` on tiny experiments: the sample decoded through the normal run (journaled
outputs of the full-VAE tree, which a later decode skips), training pairs kept by the VAE's worker
(in-process and on Ray), weights and card written, held-out steps never trained on, ``--sample`` and
``--minutes`` respected, ``--decoder tiny`` finding the result without a flag, a card of another VAE
refused in one line, Ctrl-C saving the best decoder measured and exiting 130. The quality threshold on
the demo VAE (>= 24 dB) is checked on the demo run itself (``test_demo.py``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.experiment import Experiment, LatentStep
from latent_decoder.models import resolve_model
from latent_decoder.tiny import training
from latent_decoder.tiny.sampling import choose_sample
from latent_decoder.tiny.distilled import CARD_FILE, DISTILLED_DIRNAME, WEIGHTS_FILE, vae_identity, write_card
from latent_decoder.tiny.model import kept_frames
from latent_decoder.tiny.pairs import PAIRS_DIRNAME
from latent_decoder.tiny.quality import ssim
from latent_decoder.tiny.setup import TINY_DIR_ENV
from latent_decoder.tiny.training import Pair, Trainer, UnfitVae, config_for_vae, init_for_training

from conftest import REPO_ROOT, journal_records


@pytest.fixture(autouse=True)
def no_published_decoders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty tiny decoder folder and HF cache: distill starts from scratch (no published file found)."""
    monkeypatch.setenv(TINY_DIR_ENV, str(tmp_path / "tiny-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def invoke(*args: str) -> "CliRunner.Result":
    return CliRunner().invoke(cli, [*args, "--device", "cpu"], catch_exceptions=False)


def distill(exp: Path, *args: str) -> "CliRunner.Result":
    return invoke("distill", str(exp), "--width", "16", "--format", "png", "--executor", "inline", *args)


def test_distill_decodes_the_sample_as_outputs_trains_and_decode_tiny_uses_it(make_experiment, monkeypatch) -> None:
    exp = make_experiment(prompts=2, steps=4, frames=5)
    scored: set[str] = set()
    sample = Trainer._sample

    def recording(self):  # which pairs training ever saw
        scored.update(p.key for p in self.train_pairs)
        batch = sample(self)
        return batch

    monkeypatch.setattr(Trainer, "_sample", recording)
    result = distill(exp, "--sample", "6", "--held-out", "2", "--minutes", "0.1")
    assert result.exit_code == 0, result.output
    folder = exp / DISTILLED_DIRNAME
    card = json.loads((folder / CARD_FILE).read_text())
    assert (folder / WEIGHTS_FILE).is_file()
    model = resolve_model(str(Experiment.load(exp).model_id))
    assert card["vae"] == vae_identity(model) and card["family"] == "wan"
    trained, held = set(card["steps_trained"]), set(card["steps_held_out"])
    assert len(trained) == 4 and len(held) == 2 and not trained & held
    assert scored == trained  # training never saw a held-out step
    assert card["held_out_psnr"] > card["start_psnr"] and 0 < card["held_out_ssim"] <= 1
    assert card["config"]["widths"] == [16, 8, 4, 4] and card["training_seconds"] <= 6 + 3  # --minutes 0.1
    assert "PSNR" in result.output and "expected saving: the 2 step(s) the full VAE has not decoded" in result.output

    # The sample is ordinary outputs of the full-VAE tree: journaled, and a later decode skips them.
    out = exp / "latents_videos"
    assert set(journal_records(out)) == trained | held
    assert len(list((folder / PAIRS_DIRNAME).rglob("frames.npy"))) == 6
    full = invoke("decode", str(exp), "--format", "png", "--executor", "inline")
    assert full.exit_code == 0 and "2 ok, 0 failed, 6 already done" in full.output, full.output

    # --decoder tiny finds the distilled decoder without a flag; the gallery shows its measured quality.
    tiny = invoke("decode", str(exp), "--decoder", "tiny", "--format", "png")
    assert tiny.exit_code == 0, tiny.output
    described = json.loads((exp / "latents_tiny" / "decode_summary.json").read_text())["model"]
    assert described["tiny_from"] == f"distilled for this experiment ({folder})"
    index = (exp / "latents_tiny" / "index.html").read_text()
    assert f"PSNR {card['held_out_psnr']:.1f} dB, SSIM {card['held_out_ssim']:.3f} against the full VAE" in index
    page = (exp / "latents_tiny" / "prompt_000" / "vid_001" / "index.html").read_text()
    assert "full VAE and tiny decoder side by side" in page
    assert "../../../latents_videos/prompt_000/vid_001/progression.png" in page

    # Again: the pairs are used again (nothing decoded), training goes on from the decoder distilled before.
    again = distill(exp, "--sample", "6", "--held-out", "2", "--minutes", "0.05", "--width", "16")
    assert again.exit_code in (0, 1), again.output
    assert "decoding" not in again.output and "from the decoder distilled before" in again.output

    # A card that names another VAE is refused in one line.
    write_card(folder, {**card, "vae": {**card["vae"], "weights_sha256": "0" * 64}})
    refused = invoke("decode", str(exp), "--decoder", "tiny", "--output-dir", str(exp / "elsewhere"))
    assert refused.exit_code == 2 and "distilled from another VAE" in refused.output.strip().splitlines()[-1]


def test_a_published_file_that_fits_is_where_training_starts(make_experiment, tmp_path: Path) -> None:
    """Without --width, the published file the family rule names (here a random taew2_1-shaped one in
    the tiny decoder folder) is the start: its configuration, not the default width's."""
    from latent_decoder.tiny.checkpoint import save_checkpoint
    from taehv_reference import random_state_dict

    exp = make_experiment(prompts=1, steps=3, frames=5)
    published = save_checkpoint(random_state_dict(latent_channels=16, seed=3), tmp_path / "tiny-cache" / "taew2_1.safetensors")
    result = invoke("distill", str(exp), "--sample", "3", "--minutes", "0.05", "--format", "png", "--executor", "inline")
    assert result.exit_code in (0, 1), result.output
    assert f"from the published taew2_1.safetensors ({published})" in result.output
    assert "widths 16/12/8/8" in result.output


def test_a_card_that_describes_other_weights_is_one_line(make_experiment) -> None:
    exp = make_experiment(prompts=1, steps=3, frames=5)
    assert distill(exp, "--sample", "3", "--minutes", "0.05").exit_code == 0
    folder = exp / DISTILLED_DIRNAME
    card = json.loads((folder / CARD_FILE).read_text())
    write_card(folder, {**card, "weights_sha256": "1" * 64})
    refused = invoke("decode", str(exp), "--decoder", "tiny")
    assert refused.exit_code == 2
    assert "describes other weights than" in refused.output.strip().splitlines()[-1]


def test_distill_on_ray_keeps_the_pairs_its_workers_decode(shared_ray, make_experiment) -> None:
    exp = make_experiment(prompts=2, steps=2, frames=5)
    result = invoke("distill", str(exp), "--width", "16", "--sample", "4", "--held-out", "1", "--minutes", "0.05",
                    "--executor", "ray", "--workers", "1")
    assert result.exit_code == 0, result.output
    records = journal_records(exp / "latents_videos")
    assert len(records) == 4 and {r["worker"] for r in records.values()} == {"ray-0"}
    assert len(list((exp / DISTILLED_DIRNAME / PAIRS_DIRNAME).rglob("frames.npy"))) == 4
    assert (exp / DISTILLED_DIRNAME / WEIGHTS_FILE).is_file()


def test_setup_errors_are_one_line_before_anything_is_written(make_experiment) -> None:
    exp = make_experiment(prompts=1, steps=1, frames=5)
    one = distill(exp, "--minutes", "0.05")
    assert one.exit_code == 2 and "needs at least 2 stored steps" in one.output.strip().splitlines()[-1]
    exp2 = make_experiment("exp2", prompts=1, steps=3, frames=5)
    held = distill(exp2, "--sample", "3", "--held-out", "3")
    assert held.exit_code == 2 and "leaves no step" in held.output.strip().splitlines()[-1]
    for folder in (exp, exp2):
        assert not (folder / DISTILLED_DIRNAME).exists() and not (folder / "latents_videos").exists()


def test_ctrl_c_during_training_saves_the_best_decoder_measured_and_exits_130(make_experiment) -> None:
    exp = make_experiment(prompts=1, steps=3, frames=5)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "latent_decoder", "distill", str(exp), "--width", "16",
                             "--sample", "3", "--minutes", "1", "--device", "cpu", "--executor", "inline"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # not a tty: one "training:" line per measure
        lines.append(line)
        if line.startswith("training: step"):
            break
        assert time.monotonic() < deadline, "".join(lines)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + err
    assert "Traceback" not in err and "interrupted)" in out and "saved" in out
    card = json.loads((exp / DISTILLED_DIRNAME / CARD_FILE).read_text())
    assert card["stopped"] == "interrupted" and card["optimizer_steps"] > 0


# ------------------------------------------------------------------------------------------- the parts


def steps_of(videos: int, count: int) -> list[LatentStep]:
    return [LatentStep(f"prompt_{v:03d}", "vid_001", f"step_{i:03d}", i, f"/x/{v}/{i}")
            for v in range(videos) for i in range(count)]


def test_the_sample_spans_videos_and_noise_levels_and_holds_out_spread_steps() -> None:
    steps = steps_of(videos=4, count=20)
    train, held = choose_sample(steps, 16, 4, seed=0)
    assert len(train) == 12 and len(held) == 4 and not {s.key for s in train} & {s.key for s in held}
    chosen = train + held
    assert {s.prompt for s in chosen} == {f"prompt_{v:03d}" for v in range(4)}  # every video
    indices = sorted(s.step_index for s in chosen)
    assert indices[0] <= 1 and indices[-1] >= 18  # the noisiest and the cleanest steps
    assert max(np.diff(indices)) <= 3  # and everything between
    held_idx = sorted(s.step_index for s in held)
    assert held_idx[0] <= 5 and held_idx[-1] >= 14  # held-out steps too span the trajectory
    assert choose_sample(steps, 16, 4, seed=0) == (train, held)  # deterministic
    everything = choose_sample(steps_of(1, 5), 50, 1)
    assert len(everything[0]) + len(everything[1]) == 5


def test_a_new_decoder_takes_the_vae_geometry_or_is_refused() -> None:
    wan22 = config_for_vae(48, 4, 16, 64)
    assert (wan22.latent_channels, wan22.patch_size, wan22.t_upscale, wan22.spatial) == (48, 2, 4, 16)
    assert config_for_vae(16, 8, 8, 32).time_upscale == (True, True, True)
    assert config_for_vae(16, 1, 8, 32).t_upscale == 1
    with pytest.raises(UnfitVae, match="8x, 16x"):
        config_for_vae(16, 4, 4, 32)
    with pytest.raises(UnfitVae, match="1, 2, 4 or 8"):
        config_for_vae(16, 3, 8, 32)


def test_crops_are_scored_against_the_frames_they_decode_to() -> None:
    """Frames that show their own index: every scored raw frame of every crop meets the video frame it
    stands for (the trimmed start, the unscored context frame of a crop that starts mid-clip)."""
    config = config_for_vae(16, 4, 8, 16)
    t, h, w = 5, 6, 8
    trim = config.t_upscale - 1
    count = len(kept_frames(t, config.t_upscale, trim))
    frames = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, h * 8, w * 8, 3))
    pair = Pair("p/v/s", torch.zeros(1, t, 16, h, w), np.ascontiguousarray(frames), trim)
    trainer = Trainer(init_for_training(config, 0), [pair], [pair], torch.device("cpu"), batch=16)
    trainer.crop = training.Crop(3, 2, 2)
    starts = set()
    for _ in range(10):
        _, targets = trainer._sample()
        for which, target in targets:
            video = target[:, 0, 0, 0].astype(int)  # the video frame each scored raw frame is held against
            assert target.shape[1:3] == (16, 16) and len(video) == len(which)
            assert np.array_equal(video - video[0], which - which[0])  # one video frame per raw frame, in order
            if video[0] == 0:  # the clip's start: its first t_upscale - 1 raw frames are trimmed
                assert which[0] == trim
            else:  # mid-clip: the crop's first latent frame is context, not scored
                assert which[0] == config.t_upscale and (video[0] - 1) % config.t_upscale == 0
            starts.add(video[0] == 0)
    assert starts == {True, False}


def test_ssim_of_flat_frames_has_its_closed_form() -> None:
    """For constant frames a, b the variance terms cancel: SSIM = (2ab + C1) / (a^2 + b^2 + C1)."""
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = np.full((2, 16, 16, 3), 140, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 140 + c1) / (100 ** 2 + 140 ** 2 + c1), rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ssim(a, noisy) < 0.5
