"""The pipelines on the Wan VAE that decode otherwise than ``WanPipeline``, or reuse its rule, decode
exactly as their own decode lines do.

Each reference is the pipeline's own code where diffusers exposes it (the modular pipelines' decode
blocks, run as a ``ModularPipeline`` around the tiny VAE; ``wan_animate_2``'s ``decode_vae``;
``MotifVideoPipeline._denormalize_latents``), else the pipeline's decode lines, copied (Helios,
Lucy Edit, AnyFlow, ChronoEdit, Wan Animate, Wan VACE, Cosmos 3). Stored latents are in the layout
each loop hands on: AnyFlow's frames first, the modular Wan Animate's and Cosmos 3's without a batch
axis, VACE's with a reference image's latent frame ahead of the video's.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from latent_decoder.experiment import VideoSettings
from latent_decoder.synthetic import build_tiny_wan_vae

from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, Case, FamilyCase, assert_inspect_says,
                            assert_wrong_rules_caught, build_case as _build_case, cli_frames, decoded_by_blocks,
                            divide_by_std, in_memory, postprocess, psnr, random_stats, save_model, torch_dtype)

WAN_VAE = "AutoencoderKLWan"
VIDEO = VideoSettings(width=48, height=32, fps=FPS, frames=9)  # 3 x 4 x 6 latent grid at Wan's 4x / 8x


def wan_vae() -> Any:
    mean, std = random_stats(21, 16)
    return build_tiny_wan_vae(seed=21, latents_mean=mean, latents_std=std)


# --------------------------------------------------------------------------- the pipelines' decode lines


def _wan_lines(vae: Any, latents: Any) -> Any:
    """The decode lines Helios (per chunk), Lucy Edit, ChronoEdit and Wan Animate share, copied:
    ``latents.to(vae.dtype) / (1 / latents_std) + latents_mean``, the reciprocal in float32."""
    import torch

    latents = latents.to(vae.dtype)
    latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                                 latents.dtype)
    latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                                   latents.dtype)
    return latents / latents_std + latents_mean


def ref_wan(vae: Any, latent: Any, video: VideoSettings) -> Any:
    return vae.decode(_wan_lines(vae, latent), return_dict=False)[0]


def ref_motif(vae: Any, latent: Any, video: VideoSettings) -> Any:
    from diffusers import MotifVideoPipeline

    latents = latent.to(vae.dtype)
    latents = MotifVideoPipeline._denormalize_latents(latents, vae.config.latents_mean, vae.config.latents_std)
    return vae.decode(latents, return_dict=False)[0]


def ref_anyflow(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """AnyFlowPipeline after its loop: ``latents.permute(0, 2, 1, 3, 4)``, then Wan's lines."""
    return ref_wan(vae, latent.permute(0, 2, 1, 3, 4), video)


def ref_chronoedit(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """ChronoEditPipeline with ``enable_temporal_reasoning`` (more than two latent frames), copied."""
    import torch

    latents = _wan_lines(vae, latent)
    if latents.shape[2] > 2:
        video_edit = vae.decode(latents[:, :, [0, -1]], return_dict=False)[0]
        video_reason = vae.decode(latents[:, :, :-1], return_dict=False)[0]
        return torch.cat([video_reason, video_edit[:, :, 1:]], dim=2)
    return vae.decode(latents, return_dict=False)[0]


def ref_wan_animate(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """WanAnimatePipeline: Wan's lines, then ``vae.decode(latents[:, :, 1:])``."""
    return vae.decode(_wan_lines(vae, latent)[:, :, 1:], return_dict=False)[0]


def ref_wan_animate_2(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """WanAnimate2SegmentDecodeStep: ``decode_vae(vae, latents[:, 1:])`` on the loop's unbatched latent."""
    from diffusers.modular_pipelines.wan_animate_2.denoise import decode_vae

    return decode_vae(vae, latent.to(torch_dtype("float32"))[:, 1:])


def ref_wan_vace(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """WanVACEPipeline: ``latents[:, :, num_reference_images:]`` (one reference image here), then Wan's lines."""
    return ref_wan(vae, latent[:, :, 1:], video)


def ref_cosmos3(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """Cosmos3OmniPipeline's decode, copied (its statistics are tensors of the VAE's dtype, built at init)."""
    import torch

    vae_latents_mean = torch.tensor(vae.config.latents_mean, dtype=vae.dtype)
    vae_latents_inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=vae.dtype)
    dtype = vae.dtype
    mean = vae_latents_mean.to(device=latent.device, dtype=dtype)
    inv_std = vae_latents_inv_std.to(device=latent.device, dtype=dtype)
    z_raw = latent.to(dtype) / inv_std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
    return vae.decode(z_raw).sample.to(latent.dtype)


def ref_wan_modular(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """WanVaeDecoderStep (after WanVaceTrimReferenceLatentsStep, which drops VACE's reference frames)."""
    from diffusers.modular_pipelines.wan.decoders import WanVaceTrimReferenceLatentsStep, WanVaeDecoderStep

    references = latent.shape[2] - ((video.frames - 1) // 4 + 1)
    blocks = {"trim": WanVaceTrimReferenceLatentsStep(), "decode": WanVaeDecoderStep()}
    return decoded_by_blocks(blocks, vae, latents=latent, num_reference_images=references)


def ref_helios_modular(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """HeliosDecodeStep on one chunk's latents."""
    from diffusers.modular_pipelines.helios.decoders import HeliosDecodeStep

    return decoded_by_blocks({"decode": HeliosDecodeStep()}, vae, latent_chunks=[latent], num_frames=video.frames)


def frames_first(grid: np.ndarray) -> np.ndarray:
    return grid.transpose(0, 2, 1, 3, 4)


def unbatched(grid: np.ndarray) -> np.ndarray:
    return grid[0]


def _case(family: str, pipeline: str, reference: Callable[..., Any], t: int = 3, **kwargs: Any) -> FamilyCase:
    return FamilyCase(family, WAN_VAE, wan_vae, (16, t, 4, 6), VIDEO, reference, pipeline=pipeline, **kwargs)


CASES = {
    "helios": _case("wan-compatible", "HeliosPipeline", ref_wan),
    "helios-modular": _case("wan-compatible", "HeliosPyramidModularPipeline", ref_helios_modular, modular=True),
    "lucy": _case("wan-compatible", "LucyEditPipeline", ref_wan),
    "motif": _case("motif-video", "MotifVideoImage2VideoPipeline", ref_motif),
    "anyflow": _case("anyflow", "AnyFlowPipeline", ref_anyflow, store=frames_first),
    "anyflow-far": _case("anyflow", "AnyFlowFARPipeline", ref_anyflow, t=2, store=frames_first),
    "chronoedit": _case("chronoedit", "ChronoEditPipeline", ref_chronoedit),
    "wan-animate": _case("wan-animate", "WanAnimatePipeline", ref_wan_animate, t=4),
    "wan-animate-2": _case("wan-animate", "WanAnimate2ModularPipeline", ref_wan_animate_2, t=4, store=unbatched,
                           modular=True),
    "wan-vace": _case("wan-vace", "WanVACEPipeline", ref_wan_vace, t=4),
    "wan22-vace-modular": _case("wan-modular", "Wan22VaceModularPipeline", ref_wan_modular, t=4, modular=True),
    "wan-modular": _case("wan-modular", "WanModularPipeline", ref_wan_modular, modular=True),
    "cosmos3": _case("cosmos3", "Cosmos3OmniPipeline", ref_cosmos3, store=unbatched),
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wan_vae_users")


def build_case(name: str, models_dir: Path) -> Case:
    return _build_case(name, CASES, models_dir)


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, models_dir: Path) -> Case:
    return build_case(request.param, models_dir)


# --------------------------------------------------------------------------- parity


def test_cli_decode_matches_the_pipeline(case: Case, tmp_path: Path):
    frames, summary = cli_frames(case, tmp_path)
    assert frames.shape == case.reference().shape
    assert psnr(frames, case.reference()) >= PARITY_DB
    model = summary["model"]
    assert model["family"] == case.family.family
    index = "modular_model_index.json" if case.family.modular else "model_index.json"
    assert model["family_rule"] == f"pipeline {case.family.pipeline} in {case.model_dir / index}"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["motif", "cosmos3", "wan-modular", "anyflow", "wan-animate-2"])
def test_low_precision_decode_is_the_pipelines_own(name: str, dtype: str, models_dir: Path):
    """Motif-Video multiplies by the std, Cosmos 3 takes the reciprocal in the VAE's dtype, the modular Wan
    pipelines cast after de-normalising: each in its own order."""
    case = build_case(name, models_dir)
    frames = in_memory(case, dtype=dtype)
    assert psnr(frames, np.round(case.reference(dtype))) >= LOW_PRECISION_DB
    assert psnr(frames, case.reference("float32")) < LOW_PRECISION_DB + 40  # the dtype did change something


# --------------------------------------------------------------------------- negative controls


def _first_frames_first(z: Any, ctx: Any) -> Any:
    """AnyFlow's frames-first latent read as channels first (a reshape, as if the layout were Wan's)."""
    b, t, c, h, w = z.shape
    return z.reshape(b, c, t, h, w)


def _drop_last_frame(z: Any, ctx: Any) -> Any:
    """The reference slot taken from the end instead of the start."""
    return z[:, :, :-1]


def _plain(z: Any, ctx: Any) -> Any:
    return ctx.vae.decode(z, return_dict=False)[0]


WRONG_TO_GRID = {"anyflow": _first_frames_first, "wan-animate": _drop_last_frame, "wan-vace": _drop_last_frame}


def test_negative_controls_are_caught(case: Case, monkeypatch: pytest.MonkeyPatch):
    """Every rule: the statistics the wrong way round, or none; the layout and frame rules: the plausible
    wrong reading; ChronoEdit's temporal reasoning: one plain decode."""
    name = next(n for n, c in CASES.items() if c is case.family)
    assert_wrong_rules_caught(case, {"divide by std": divide_by_std}, monkeypatch)
    family = case.family.family
    if family in WRONG_TO_GRID:
        assert_wrong_rules_caught(case, {"wrong layout": WRONG_TO_GRID[family]}, monkeypatch, field="to_grid")
    if name == "chronoedit":
        assert_wrong_rules_caught(case, {"one plain decode": _plain}, monkeypatch, field="decode")


@pytest.mark.parametrize("name, wrong", [("motif", "wan"), ("wan-modular", "wan")])
def test_wans_own_order_is_caught_in_bfloat16(name: str, wrong: str, models_dir: Path):
    """The rules that exist for their dtype order: Wan's rule, forced with --family, does not give these
    pipelines' bfloat16 frames. (Cosmos 3's reciprocal taken in bfloat16 moves a few statistics by one
    bfloat16 step, which the tiny VAE's 8-bit frames do not show.)"""
    case = build_case(name, models_dir)
    frames = in_memory(case, dtype="bfloat16", family=wrong)
    assert psnr(frames, np.round(case.reference("bfloat16"))) < LOW_PRECISION_DB


# --------------------------------------------------------------------------- the rules' particulars


def test_chronoedit_without_temporal_reasoning_is_one_plain_decode(tmp_path: Path):
    """Two latent frames (the pipeline's 5 frames without temporal reasoning): one ``vae.decode``."""
    import torch

    vae = wan_vae()
    model = save_model(vae, tmp_path / "model", "ChronoEditPipeline")
    latent = np.random.default_rng(2).standard_normal((1, 16, 2, 4, 6)).astype(np.float16).astype(np.float32)
    with torch.no_grad():
        expected = postprocess(ref_chronoedit(vae, torch.from_numpy(latent), VIDEO))
    case = Case(dataclasses.replace(CASES["chronoedit"], video=VideoSettings(48, 32, FPS, 5)), model, latent, vae,
                {"float32": expected})
    assert expected.shape[0] == 5
    assert psnr(in_memory(case), expected) >= PARITY_DB


def test_anyflow_condition_latent_is_written_over_the_first_frames(models_dir: Path, tmp_path: Path):
    """A video-conditioned AnyFlow run writes the conditioning video's latents over the first frames after
    its loop; stored beside the steps as ``condition_latent.npy.gz`` (frames first), they are applied."""
    import torch

    from latent_decoder.synthetic import save_npy_gz

    case = build_case("anyflow", models_dir)
    condition = np.random.default_rng(9).standard_normal((1, 1, 16, 4, 6)).astype(np.float16).astype(np.float32)
    blended = case.latent.copy()
    blended[:, :1] = condition
    with torch.no_grad():
        expected = postprocess(ref_anyflow(case.vae, torch.from_numpy(blended), VIDEO))
    assert psnr(expected, case.reference()) < PARITY_DB  # the condition matters
    save_npy_gz(tmp_path / "exp" / "latents" / "prompt_000" / "vid_001" / "condition_latent.npy.gz", condition)
    frames, _ = cli_frames(case, tmp_path)
    assert psnr(frames, expected) >= PARITY_DB


def test_tiny_anyflow_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """A tiny AnyFlowPipeline runs on CPU; its callback hands frames-first ``[1, T, C, H, W]`` latents (the
    rule Wan's layout used to be assumed for), which decode back to the run's own frames."""
    import torch
    from diffusers import AnyFlowPipeline, AnyFlowTransformer3DModel, FlowMapEulerDiscreteScheduler

    from family_harness import assert_run_decodes_to_its_own_frames, capture

    torch.manual_seed(0)
    transformer = AnyFlowTransformer3DModel(num_attention_heads=2, attention_head_dim=12, text_dim=8, freq_dim=16,
                                            ffn_dim=16, num_layers=1, rope_max_seq_len=32).eval()
    vae = wan_vae()
    pipe = AnyFlowPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                           scheduler=FlowMapEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    video = VideoSettings(width=32, height=32, fps=FPS, frames=9)
    with torch.inference_mode():
        out = pipe(prompt_embeds=torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1)), height=32,
                   width=32, num_frames=9, num_inference_steps=3, guidance_scale=1.0,
                   callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in captured] == [(1, 3, 16, 4, 4)] * 3
    assert_run_decodes_to_its_own_frames(tmp_path, vae, "AnyFlowPipeline", captured, video, out, "anyflow")


def test_vace_reference_frames_need_the_video_frame_count(models_dir: Path):
    """Without ``video_settings.frames`` the reference image's latent frame cannot be told apart: decoded as
    a frame (one more latent frame, four more frames), as the note says."""
    from latent_decoder import decode_latent

    case = build_case("wan-vace", models_dir)
    frames = decode_latent(case.latent, str(case.model_dir), device="cpu")
    assert frames.shape[0] == case.reference().shape[0] + 4


# --------------------------------------------------------------------------- detection


def test_bare_vae_folder_takes_wans_rule_and_family_picks_the_pipelines(models_dir: Path, tmp_path: Path):
    """A bare Wan VAE folder (no index) takes ``wan``; ``--family`` gives each pipeline's frames from it."""
    case = build_case("motif", models_dir)
    bare = tmp_path / "bare"
    case.vae.save_pretrained(bare)
    from latent_decoder.families import detect
    from latent_decoder.models import resolve_model

    resolved = resolve_model(str(bare))
    assert detect(resolved.class_name, resolved.pipeline).family.name == "wan"
    for name in ("motif", "anyflow", "chronoedit", "wan-animate", "cosmos3"):
        named = build_case(name, models_dir)
        on_bare = dataclasses.replace(named, model_dir=bare)
        assert psnr(in_memory(on_bare, family=named.family.family), named.reference()) >= PARITY_DB, name


def test_inspect_says_the_pipeline_never_assumes(models_dir: Path, tmp_path: Path):
    for name, words in {
        "helios": ["family      wan-compatible (Wan-VAE pipelines (Lucy Edit, Helios))", "note: Helios: a stored latent"],
        "helios-modular": ["rule        pipeline HeliosPyramidModularPipeline in "],
        "motif": ["family      motif-video (Motif-Video)", "[1, 16, 3, 4, 6] float16 x1 -> 9 frames 48x32"],
        "anyflow": ["family      anyflow (AnyFlow)", "[1, T, 16, H, W] stored latents",
                    "[1, 3, 16, 4, 6] float16 x1 -> 9 frames 48x32"],
        "chronoedit": ["family      chronoedit (ChronoEdit)", "-> 9 frames 48x32"],
        "wan-animate-2": ["family      wan-animate (Wan Animate)", "[16, 4, 4, 6] float16 x1 -> 9 frames 48x32"],
        "wan-vace": ["family      wan-vace (Wan VACE)", "[1, 16, 4, 4, 6] float16 x1 -> 9 frames 48x32"],
        "wan-modular": ["family      wan-modular (Wan (modular pipelines))"],
        "cosmos3": ["family      cosmos3 (Cosmos 3)", "[16, 3, 4, 6] float16 x1 -> 9 frames 48x32"],
    }.items():
        case = build_case(name, models_dir)
        index = "modular_model_index.json" if case.family.modular else "model_index.json"
        out = assert_inspect_says(case, tmp_path / name, words + [
            f"rule        pipeline {case.family.pipeline} in {case.model_dir / index}"])
        assert "not in the family table" not in out, out


def test_bria_fibo_is_refused_with_its_reason(tmp_path: Path):
    """Bria FIBO runs the Wan VAE on one frame for images: refused, one line, unless --family."""
    from latent_decoder import decode_latent
    from latent_decoder.errors import UnsupportedModelError

    model = save_model(wan_vae(), tmp_path / "model", "BriaFiboPipeline")
    latent = np.zeros((1, 16, 1, 4, 6), np.float32)
    with pytest.raises(UnsupportedModelError, match="BriaFiboPipeline .* is not supported: an image pipeline"):
        decode_latent(latent, str(model), device="cpu")
    assert decode_latent(latent, str(model), device="cpu", family="wan").shape == (1, 32, 48, 3)


# --------------------------------------------------------------------------- preview


def test_preview_uses_wan21_factors_in_each_pipelines_layout(models_dir: Path, tmp_path: Path):
    """The Wan VAE's published factors serve its pipelines; AnyFlow's frames-first latent is read in its
    layout, and the preview has the full decode's frames and size."""
    from click.testing import CliRunner

    from latent_decoder.cli import cli
    from family_harness import png_frames, write_experiment

    case = build_case("anyflow", models_dir)
    exp = write_experiment(tmp_path / "exp", case.model_dir, VIDEO, case.latent)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--format", "png"])
    assert result.exit_code == 0, result.output
    frames = png_frames(exp / "latents_previews" / "prompt_000" / "vid_001" / "step_000")
    assert frames.shape == case.reference().shape
    import json

    model = json.loads((exp / "latents_previews" / "decode_summary.json").read_text())["model"]
    assert model["family"] == "wan2.1" and model["factors"] == "published"
