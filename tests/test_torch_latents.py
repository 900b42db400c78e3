"""Latents stored with ``torch.save`` (``step_NNN.pt``, ``.pt.gz``; how bfloat16 latents are kept):
read with ``torch.load(weights_only=True)``, validated like ``.npy`` files, never unpickling code."""
from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import latent_decoder.npyfile as npyfile
from latent_decoder.cli import cli
from latent_decoder.errors import LatentFileError
from latent_decoder.latents import load_latent, read_latent_header

from conftest import journal_records


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def stored(video_dir: Path, step: str) -> np.ndarray:
    return np.load(io.BytesIO(gzip.decompress((video_dir / f"{step}.npy.gz").read_bytes())))


def save_pt(path: Path, obj, gz: bool = False) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.write_bytes(gzip.compress(buf.getvalue()) if gz else buf.getvalue())


def frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_bf16_and_dict_torch_latents_decode_like_their_npy_twins(make_experiment, tmp_path):
    exp = make_experiment(prompts=1, steps=3)
    video_dir = exp / "latents" / "prompt_000" / "vid_001"
    # step_001 as a bfloat16 tensor; step_002 as {"latents": float32 tensor}, gzip'd.
    bf16 = torch.from_numpy(stored(video_dir, "step_001").astype(np.float32)).to(torch.bfloat16)
    save_pt(video_dir / "step_001.pt", bf16)
    save_pt(video_dir / "step_002.pt.gz", {"latents": torch.from_numpy(stored(video_dir, "step_002").astype(np.float32)),
                                            "step": 2}, gz=True)
    twin = make_experiment("twin", prompts=1, steps=3)
    twin_dir = twin / "latents" / "prompt_000" / "vid_001"
    # The twin holds the very same values as .npy (bf16 widened to float32 exactly).
    np.save(twin_dir / "step_001.npy", bf16.float().numpy())
    (twin_dir / "step_001.npy.gz").unlink()
    for step in ("step_001", "step_002"):
        (video_dir / f"{step}.npy.gz").unlink()

    for e in (exp, twin):
        result = invoke("decode", str(e), "--device", "cpu", "--format", "png")
        assert result.exit_code == 0, result.output
    records = journal_records(exp / "latents_videos")
    assert records["prompt_000/vid_001/step_001"]["latent_path"].endswith("step_001.pt")
    for step in ("step_001", "step_002"):
        mine = frames(exp / "latents_videos" / "prompt_000" / "vid_001" / step)
        theirs = frames(twin / "latents_videos" / "prompt_000" / "vid_001" / step)
        assert mine.shape[0] == 9 and np.array_equal(mine, theirs), step
    shape, dtype = read_latent_header(video_dir / "step_001.pt")
    assert shape == tuple(bf16.shape) and dtype == "bfloat16"
    inspected = invoke("inspect", str(exp))
    assert "bfloat16" in inspected.output, inspected.output


class Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_runs(make_experiment, tmp_path):
    exp = make_experiment(prompts=1, steps=2)
    marker = tmp_path / "pwned"
    evil = exp / "latents" / "prompt_000" / "vid_001" / "step_001.pt"
    save_pt(evil, {"latents": torch.zeros(1, 16, 3, 4, 6), "hook": Payload(marker)})
    (evil.parent / "step_001.npy.gz").unlink()
    with pytest.raises(LatentFileError, match="refused"):
        load_latent(evil)
    result = invoke("decode", str(exp), "--device", "cpu")
    assert result.exit_code == 1
    assert not marker.exists(), "the pickle's code ran"
    failed = journal_records(exp / "latents_videos")["prompt_000/vid_001/step_001"]
    assert failed["status"] == "failed" and "refused" in failed["error"] and str(evil) in failed["error"]


def test_torch_files_are_validated_like_npy(tmp_path, monkeypatch):
    path = tmp_path / "step_000.pt"
    save_pt(path, torch.full((1, 16, 2, 3, 3), float("nan")))
    with pytest.raises(LatentFileError, match="NaN"):
        load_latent(path)
    save_pt(path, torch.zeros(1, 16, 2, 3, 3, dtype=torch.int32))
    with pytest.raises(LatentFileError, match="not a floating-point latent"):
        load_latent(path)
    save_pt(path, {"something": torch.zeros(3)})
    with pytest.raises(LatentFileError, match="'latents'"):
        load_latent(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LatentFileError, match="not a torch.save archive|not a readable"):
        load_latent(path)
    # Sizes are checked from the archive's directory before anything is loaded.
    save_pt(path, torch.zeros(1, 16, 2, 3, 3))
    monkeypatch.setattr(npyfile, "MAX_LATENT_BYTES", 100)
    with pytest.raises(LatentFileError, match="over the 100 byte limit"):
        load_latent(path)
