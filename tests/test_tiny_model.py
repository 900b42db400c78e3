"""The tiny decoder (``latent_decoder/tiny/model.py``, ``checkpoint.py``) against an independent
reference (``taehv_reference.py``: functional float64 torch, frame by frame, never importing the code
under test), on random weights saved as real ``.safetensors``/``.pth`` files in the published key
layout: the base and wide ("super") variants, patch sizes 1 and 2, the CogVideoX even-frames rule and
MiniMax H3's pieces. Frames are compared after rounding to uint8, as every decoder writes them."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_decoder.errors import TinyCheckpointError, TinyWeightsNotFoundError
from latent_decoder.tiny.checkpoint import load_checkpoint, save_checkpoint
from latent_decoder.tiny.model import (TinyConfig, build_decoder, decode, frames_uint8, load_decoder,
                                       state_dict_for_saving, to_uint8)

from taehv_reference import random_state_dict, reference_decode, reference_uint8

VARIANTS = {
    "base, patch 1": dict(latent_channels=4, patch=1),
    "base, patch 2": dict(latent_channels=6, patch=2),
    "wide, patch 1": dict(latent_channels=4, patch=1, wide=True),
    "wide, patch 2, 8x temporal": dict(latent_channels=6, patch=2, wide=True, strides=(2, 2, 2)),
}


def assert_same_frames(ours: np.ndarray, reference: torch.Tensor) -> None:
    """Equal within float rounding after rounding to uint8: at most one level, on a handful of values;
    and the frames are real pictures, not saturated (so that equality means something)."""
    ref = reference.numpy()
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert ((ref > 0) & (ref < 255)).mean() > 0.3


def save(state: dict, path: Path) -> Path:
    if path.suffix == ".pth":
        torch.save(state, path)
    else:
        save_checkpoint(state, path)
    return path


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_frames_equal_the_reference(name: str, suffix: str, tmp_path: Path) -> None:
    state = random_state_dict(**VARIANTS[name], seed=len(name))
    checkpoint = load_checkpoint(save(state, tmp_path / f"decoder{suffix}"))
    model = load_decoder(checkpoint.state)
    latents = torch.randn(1, 3, VARIANTS[name]["latent_channels"], 4, 5, generator=torch.Generator().manual_seed(1))
    expected = reference_uint8(reference_decode(state, latents))
    assert_same_frames(frames_uint8(model, latents), expected)
    assert_same_frames(frames_uint8(model, latents, chunk=1), expected)  # piece by piece, memory carried
    assert_same_frames(to_uint8(decode(model, latents)[0]).numpy(), expected)  # the differentiable path


def test_cogvideox_keeps_the_first_frames_of_an_even_latent(tmp_path: Path) -> None:
    state = random_state_dict(latent_channels=4, seed=3)
    model = load_decoder(load_checkpoint(save(state, tmp_path / "taecvx.pth")).state)
    for t, trim in ((4, 0), (3, 3)):
        latents = torch.randn(1, t, 4, 4, 4, generator=torch.Generator().manual_seed(t))
        expected = reference_uint8(reference_decode(state, latents, cogvideox=True))
        assert len(expected) == (t * 4 if t % 2 == 0 else (t - 1) * 4 + 1)
        assert_same_frames(frames_uint8(model, latents, trim=trim, chunk=1), expected)


def test_pieces_trim_each_segment_like_separately_encoded_clips(tmp_path: Path) -> None:
    state = random_state_dict(latent_channels=4, seed=4)
    model = load_decoder(state)
    latents = torch.randn(1, 5, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    expected = reference_uint8(reference_decode(state, latents, segment=2))
    assert len(expected) == 5 + 5 + 1  # segments of 2, 2, 1 latent frames: 8, 8, 4 raw frames, 3 dropped from each
    assert_same_frames(frames_uint8(model, latents, segment=2), expected)


def test_the_checkpoint_decides_the_configuration_not_its_name(tmp_path: Path) -> None:
    state = random_state_dict(latent_channels=48, patch=2, wide=True, groups=(4, 3, 2), seed=6)
    checkpoint = load_checkpoint(save(state, tmp_path / "taew2_1.safetensors"))  # named like the 16-channel file
    assert checkpoint.config == TinyConfig(latent_channels=48, patch_size=2, widths=(16, 12, 8, 8),
                                           time_upscale=(False, True, True), wide=True, groups=(4, 3, 2))
    assert checkpoint.config.spatial == 16 and checkpoint.config.t_upscale == 4
    assert checkpoint.identity.startswith("sha256:")
    other = load_checkpoint(save(random_state_dict(latent_channels=48, patch=2, wide=True, seed=7),
                                 tmp_path / "taew2_2.safetensors"))
    assert other.identity != checkpoint.identity


def test_a_decoder_built_here_saves_in_the_published_layout_and_trains(tmp_path: Path) -> None:
    config = TinyConfig(latent_channels=4, widths=(8, 8, 4, 4), wide=True, groups=(2, 2, 1))
    model = build_decoder(config, seed=0)
    path = save_checkpoint(state_dict_for_saving(model), tmp_path / "decoder.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.config == config
    assert set(loaded.state) == set(model.state_dict()) and all(k.startswith("decoder.") for k in loaded.state)
    latents = torch.randn(1, 2, 4, 3, 3)
    np.testing.assert_array_equal(frames_uint8(load_decoder(loaded.state), latents), frames_uint8(model, latents))
    frames = decode(model, latents)
    assert frames.shape == (1, 5, 3, 24, 24)
    frames.mean().backward()
    assert model.decoder[1].weight.grad is not None and model.decoder[1].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- bad files: one line each


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_truncated_file_is_one_line(suffix: str, tmp_path: Path) -> None:
    path = save(random_state_dict(seed=8), tmp_path / f"taew2_1{suffix}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TinyCheckpointError) as exc:
        load_checkpoint(path)
    assert str(path) in one_line(exc) and "truncated" in one_line(exc)


class RunsCode:
    """What a malicious pickle carries: unpickling it calls ``Path.touch(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_is_refused_and_the_code_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "taew2_1.pth"
    torch.save({"decoder.1.weight": torch.zeros(1), "payload": RunsCode(marker)}, path)
    with pytest.raises(TinyCheckpointError) as exc:
        load_checkpoint(path)
    assert "refused" in one_line(exc) and str(path) in one_line(exc)
    assert not marker.exists()
    with open(path.with_suffix(".raw.pth"), "wb") as f:  # a plain (non-zip) pickle too
        pickle.dump(RunsCode(marker), f, protocol=2)
    with pytest.raises(TinyCheckpointError):
        load_checkpoint(path.with_suffix(".raw.pth"))
    assert not marker.exists()


def test_a_missing_file_and_a_state_dict_of_something_else(tmp_path: Path) -> None:
    with pytest.raises(TinyWeightsNotFoundError) as exc:
        load_checkpoint(tmp_path / "taew2_1.safetensors")
    assert str(tmp_path / "taew2_1.safetensors") in one_line(exc)
    other = save({"decoder.weight": torch.zeros(3, 3)}, tmp_path / "other.safetensors")
    with pytest.raises(TinyCheckpointError) as exc:
        load_checkpoint(other)
    assert "not a TAEHV-family decoder" in one_line(exc)
    broken = random_state_dict(seed=9)
    del broken["decoder.10.conv.2.bias"]
    with pytest.raises(TinyCheckpointError) as exc:
        load_checkpoint(save(broken, tmp_path / "broken.safetensors"))
    assert "decoder.10.conv.2.bias" in one_line(exc)
