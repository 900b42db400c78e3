"""MiniMax H3 latents decode exactly as the modular pipeline's own decode blocks decode them.

MiniMax H3 is modular only (``MiniMaxH3ModularPipeline``, no ``callback_on_step_end``): a stored
latent is what a hook in its denoising loop sees, the packed float32 rows ``[S, C*p_t*p_h*p_w]``
(conditioning rows first, no batch axis). The reference runs the pipeline's own
``MiniMaxH3AfterDenoiseStep`` and ``MiniMaxH3VideoDecodeStep`` (assembled into a ``ModularPipeline``
around a tiny ``AutoencoderKLMiniMaxH3`` loaded from the model folder at the decode dtype, so its
float32-pinned modules stay float32 as they do under the pipeline), never the code under test.
The model folder says which pipeline it is with ``modular_model_index.json``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.errors import LatentShapeError
from latent_decoder.experiment import VideoSettings
from latent_decoder.families.minimax_h3 import decoded_frames

from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, Case, FamilyCase, assert_inspect_says,
                            assert_wrong_rules_caught, cli_frames, in_memory, psnr, torch_dtype, write_experiment)

VAE = "AutoencoderKLMiniMaxH3"
PIPELINE = "MiniMaxH3ModularPipeline"
CHANNELS, PATCH = 4, (1, 2, 2)
# 22 frames = 17 + 5: 7 latent frames; 24x16 at the tiny VAE's 4x: a 4 x 6 latent grid, 7 x 2 x 3 rows.
VIDEO = VideoSettings(width=24, height=16, fps=FPS, frames=22)
GRID = (CHANNELS, 7, 4, 6)
CONDITION_ROWS = 6  # an fl2va keyframe's rows, ahead of the video's


def tiny_vae(seed: int = 31) -> Any:
    """A tiny MiniMax H3 VAE: 4x spatial, 4x temporal (so ``clip_length`` 17's chunking is the released
    one), one ViT decoder layer, non-trivial latent statistics."""
    import torch
    from diffusers import AutoencoderKLMiniMaxH3

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    return AutoencoderKLMiniMaxH3(
        latent_channels=CHANNELS, block_out_channels=(8, 8), layers_per_block=1, spatial_downsample_factors=(2, 2),
        temporal_downsample_factors=(2, 2), norm_num_groups=4, decoder_num_layers=1, decoder_num_attention_heads=2,
        decoder_attention_head_dim=8, decoder_num_register_tokens=1, decoder_ffn_mult=1,
        latents_mean=tuple(float(x) for x in rng.normal(0, 1, CHANNELS)),
        latents_std=tuple(float(x) for x in rng.uniform(1.5, 4.0, CHANNELS)),
    ).eval()


def save_modular_model(vae: Any, root: Path) -> Path:
    """``vae/`` and a ``modular_model_index.json`` naming the pipeline, as ``ModularPipeline.save_pretrained``
    writes one (each component a ``[library, class, loading spec]`` triple)."""
    vae.save_pretrained(root / "vae")
    spec = {"pretrained_model_name_or_path": "MiniMaxAI/MiniMax-H3", "subfolder": "vae", "type_hint": ["diffusers", VAE]}
    index = {"_class_name": PIPELINE, "_diffusers_version": "0.42.1", "_blocks_class_name": "MiniMaxH3Blocks",
             "vae": ["diffusers", VAE, spec]}
    (root / "modular_model_index.json").write_text(json.dumps(index))
    return root


def pack(grid: np.ndarray, condition_rows: int = 0) -> np.ndarray:
    """What the loop holds: ``patchify_video_latents`` (the pipeline's own), conditioning rows first."""
    import torch
    from diffusers.modular_pipelines.minimax_h3.before_denoise import patchify_video_latents

    rows = patchify_video_latents(torch.from_numpy(grid), PATCH).numpy()
    condition = np.random.default_rng(7).standard_normal((condition_rows, rows.shape[1])).astype(np.float32)
    return np.concatenate([condition, rows])


def pipeline_frames(model_dir: Path, rows: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """The pipeline's decode blocks on the loop's rows: its ``videos`` output (``output_type="np"``), 0..255."""
    import torch
    from diffusers import AutoencoderKLMiniMaxH3
    from diffusers.modular_pipelines import SequentialPipelineBlocks
    from diffusers.modular_pipelines.minimax_h3.decoders import MiniMaxH3AfterDenoiseStep, MiniMaxH3VideoDecodeStep

    vae = AutoencoderKLMiniMaxH3.from_pretrained(model_dir / "vae", torch_dtype=torch_dtype(dtype)).eval()
    blocks = SequentialPipelineBlocks.from_blocks_dict({"after_denoise": MiniMaxH3AfterDenoiseStep(),
                                                        "decode": MiniMaxH3VideoDecodeStep()})
    pipe = blocks.init_pipeline()
    pipe.update_components(vae=vae)
    _, t, h, w = GRID
    with torch.no_grad():
        videos = pipe(latents=torch.from_numpy(rows), audio_latents=torch.zeros(2 * 3, 32),
                      num_condition_video_rows=rows.shape[0] - t * h * w // (PATCH[1] * PATCH[2]),
                      num_latent_frames=t, latent_height=h, latent_width=w, num_audio_latents=3, output_type="np",
                      output="videos")
    return np.asarray(videos[0], np.float64) * 255.0


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """The model folder, the loop's rows (an fl2va run's: conditioning rows first, no batch axis) and the
    pipeline's frames at each dtype."""
    model_dir = save_modular_model(tiny_vae(), tmp_path_factory.mktemp("minimax_h3") / "model")
    grid = np.random.default_rng(5).standard_normal((1, *GRID)).astype(np.float16).astype(np.float32)
    rows = pack(grid, CONDITION_ROWS)
    expected = {d: pipeline_frames(model_dir, rows, d) for d in ("float32", "bfloat16", "float16")}
    family = FamilyCase("minimax-h3", VAE, tiny_vae, GRID, VIDEO, reference=lambda *a: None, pipeline=PIPELINE)
    case = Case(family, model_dir, rows, None, expected)
    case.grid = grid  # type: ignore[attr-defined]  # the unpacked form of the same latent
    return case


# --------------------------------------------------------------------------- parity


def test_cli_decode_of_the_loops_rows_matches_the_pipeline(case: Case, tmp_path: Path):
    """Conditioning rows first, no batch axis: the stored latent as a hook in the loop sees it."""
    frames, summary = cli_frames(case, tmp_path)
    assert frames.shape == case.reference().shape == (22, 16, 24, 3)
    assert psnr(frames, case.reference()) >= PARITY_DB
    assert summary["model"]["family"] == "minimax-h3"
    assert summary["model"]["family_rule"].startswith(f"pipeline {PIPELINE} in ")


def test_batched_rows_and_the_unpacked_grid_decode_alike(case: Case):
    """The same latent with a batch axis, and unpacked to ``[1, C, T, H, W]`` (no conditioning rows:
    the after-denoise step has dropped them), gives the pipeline's frames."""
    batched = in_memory(case, case.latent[None])
    assert psnr(batched, case.reference()) >= PARITY_DB
    unpacked = in_memory(case, case.grid)  # type: ignore[attr-defined]
    assert psnr(unpacked, case.reference()) >= PARITY_DB


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_decode_is_the_pipelines_own(case: Case, dtype: str):
    """The pipeline de-normalises in float32 and the VAE casts on entry, keeping its float32-pinned modules."""
    frames = in_memory(case, dtype=dtype)
    assert psnr(frames, np.round(case.reference(dtype))) >= LOW_PRECISION_DB
    assert psnr(frames, case.reference("float32")) < LOW_PRECISION_DB + 40  # the dtype did change something


def test_decoded_frame_count_is_the_vaes(case: Case):
    """``5n + 2`` latent frames give ``17n + 5`` frames; other lengths what the VAE's chunking gives."""
    import torch
    from latent_decoder.families import DecodeContext

    vae = tiny_vae()
    for t in (3, 5, 6, 7, 9, 12, 17):
        with torch.no_grad():
            out = vae.decode(torch.zeros(1, CHANNELS, t, 2, 2), return_dict=False)[0]
        assert decoded_frames(t, DecodeContext(vae), vae.temporal_compression_ratio) == out.shape[2], t


# --------------------------------------------------------------------------- negative controls


def _wan_formula(z: Any, ctx: Any) -> Any:
    """Wan's ``z / std + mean`` order, the statistics read the wrong way round."""
    import torch

    shape = (1, -1, 1, 1, 1)
    c = ctx.config
    return z / torch.tensor(c.latents_std).view(shape).to(z) + torch.tensor(c.latents_mean).view(shape).to(z)


def _trailing_condition_rows(z: Any, ctx: Any) -> Any:
    """LTX-2's convention: keep the first ``T*H*W`` rows (conditions appended), not the last."""
    from latent_decoder.families.minimax_h3 import to_grid, token_grid

    t, h, w = token_grid(ctx)
    return to_grid(z[:, :t * h * w], ctx)


def _minus_one_to_one(z: Any, ctx: Any) -> Any:
    """The VAE's output read as [-1, 1], like every other VAE's: the ImageNet normalisation left in."""
    return ctx.vae.decode(z, return_dict=False)[0]


def test_negative_controls_are_caught(case: Case, monkeypatch: pytest.MonkeyPatch):
    assert_wrong_rules_caught(case, {"Wan's formula": _wan_formula}, monkeypatch)
    assert_wrong_rules_caught(case, {"conditions last": _trailing_condition_rows}, monkeypatch, field="to_grid")
    assert_wrong_rules_caught(case, {"[-1, 1] output": _minus_one_to_one}, monkeypatch, field="decode")


# --------------------------------------------------------------------------- detection


def test_detection_by_modular_index_bare_vae_and_family(case: Case, tmp_path: Path):
    """``modular_model_index.json`` names the pipeline (also for its ``vae/`` folder given directly); a bare
    VAE folder takes the VAE's default rule; ``--family`` picks the rule; ``model_index.json`` wins over a
    modular index beside it (``DiffusionPipeline`` loads from it)."""
    from latent_decoder.families import PipelineFacts, detect
    from latent_decoder.models import resolve_model

    resolved = resolve_model(str(case.model_dir))
    assert resolved.pipeline.class_name == PIPELINE
    assert resolved.pipeline.source == str(case.model_dir / "modular_model_index.json")
    assert detect(resolved.class_name, resolved.pipeline).family.name == "minimax-h3"
    assert resolve_model(str(case.model_dir / "vae")).pipeline.class_name == PIPELINE

    bare = tmp_path / "bare"
    tiny_vae().save_pretrained(bare)
    detection = detect(VAE, resolve_model(str(bare)).pipeline)
    assert detection.family.name == "minimax-h3" and detection.reason.startswith(f"VAE class {VAE}")
    assert psnr(in_memory(dataclasses.replace(case, model_dir=bare)), case.reference()) >= PARITY_DB

    assert detect(VAE, PipelineFacts(), "minimax-h3").reason == "--family minimax-h3"
    both = tmp_path / "both"
    save_modular_model(tiny_vae(), both)
    (both / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "vae": ["diffusers", VAE]}))
    assert resolve_model(str(both)).pipeline.source == str(both / "model_index.json")


def test_modular_index_is_read_from_the_hf_cache(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A repo id in the HF cache whose snapshot has a modular index (and no model_index.json)."""
    from conftest import save_to_hf_cache
    from latent_decoder.models import resolve_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snapshot = save_to_hf_cache(case.model_dir, tmp_path / "hf", "MiniMaxAI/MiniMax-H3")
    resolved = resolve_model("MiniMaxAI/MiniMax-H3")
    assert resolved.origin == "HF cache" and resolved.pipeline.class_name == PIPELINE
    assert resolved.pipeline.source == str(snapshot / "modular_model_index.json")


def test_inspect_names_the_pipeline_and_the_packed_grid(case: Case, tmp_path: Path):
    out = assert_inspect_says(case, tmp_path / "exp", [
        "family      minimax-h3 (MiniMax H3), mirrors diffusers.MiniMaxH3ModularPipeline",
        f"rule        pipeline {PIPELINE} in {case.model_dir / 'modular_model_index.json'}",
        "note: packed rows are unpacked with video_settings",
        "layout      [1, S, 4*p_t*p*p] or [1, 4, T, H, W] stored latents",
        "[48, 16] float16 x1 -> 22 frames 24x16",
    ])
    assert "not in the family table" not in out


def test_rows_that_do_not_fit_the_video_are_refused_before_decoding(case: Case):
    """Fewer rows than the video's grid: one line naming both shapes."""
    from latent_decoder import decode_latent

    v = VIDEO
    with pytest.raises(LatentShapeError, match="40 tokens"):
        decode_latent(case.latent[:40], str(case.model_dir), device="cpu", frames=v.frames, height=v.height,
                      width=v.width)


# --------------------------------------------------------------------------- preview


def test_calibrate_preview_works_without_published_factors(case: Case, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """No latent -> RGB factors are published for MiniMax H3: the preview asks for a calibration, which
    fits a map from the tiny VAE's own decodes; the preview then has the full decode's frames and size."""
    from latent_decoder.synthetic import save_npy_gz

    monkeypatch.setenv("LATENT_DECODER_PREVIEW_DIR", str(tmp_path / "preview-cache"))
    exp = write_experiment(tmp_path / "exp", case.model_dir, VIDEO, case.latent)
    for p in range(2):
        folder = exp / "latents" / f"prompt_{p:03d}" / "vid_001"
        grid = np.random.default_rng(p).standard_normal((1, *GRID)).astype(np.float16)
        save_npy_gz(folder / "step_000.npy.gz", pack(grid.astype(np.float32)).astype(np.float16))
        (folder / "step_000_metadata.json").write_text(json.dumps({"step": 0, "total_steps": 1}))
    before = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])
    assert before.exit_code == 2 and "calibrate-preview" in before.output, before.output
    calibrated = CliRunner().invoke(cli, ["calibrate-preview", str(exp), "--device", "cpu"])
    assert calibrated.exit_code == 0, f"{calibrated.output}\n{calibrated.exception!r}"
    after = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--format", "png"])
    assert after.exit_code == 0, after.output
    frames = sorted((exp / "latents_previews" / "prompt_000" / "vid_001" / "step_000").glob("frame_*.png"))
    assert len(frames) == 22
    model = json.loads((exp / "latents_previews" / "decode_summary.json").read_text())["model"]
    assert model["family"] == "minimax-h3" and model["factors"] == "calibrated"


def test_a_tiny_decoder_of_one_frame_per_latent_frame_is_refused_in_one_line(case: Case, tmp_path: Path):
    """No published tiny decoder fits MiniMax H3 (README): ``taeh3`` is described as one frame per latent
    frame at 8x. Such a decoder, given with ``--tiny-weights``, is refused before anything is written,
    in one line naming both geometries."""
    from latent_decoder.tiny.checkpoint import save_checkpoint

    from taehv_reference import random_state_dict

    weights = save_checkpoint(random_state_dict(latent_channels=CHANNELS, strides=(1, 1, 1)),
                              tmp_path / "taeh3.safetensors")
    exp = write_experiment(tmp_path / "exp", case.model_dir, VIDEO, case.latent)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "tiny", "--tiny-weights", str(weights)])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert str(weights) in line and "making 1 frames per latent frame at 8x" in line, line
    assert "MiniMax H3 VAE" in line and "makes 4 at 4x" in line, line
    assert not (exp / "latents_tiny").exists()
