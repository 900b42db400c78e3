"""Cosmos 1, Cosmos 2 / 2.5 and HunyuanVideo 1.5 decode stored latents as their diffusers pipelines do.

Each case is a tiny random VAE with non-default normalisation in a pipeline folder (``model_index.json``
naming the pipeline), a stored latent, and the pipeline's own decode lines (copied from its source, or
its own method where it has one) run on it. Cosmos 2 / 2.5 use Wan's VAE and, in float32, Wan's
formula, but de-normalise in the loop's float32 before casting (Wan casts first): the bf16 tests show
the difference matters. Tiny Cosmos 1, Cosmos 2, Cosmos 2.5 and HunyuanVideo 1.5 pipelines run end to
end on CPU (transformers without the padding mask, which needs torchvision; a pass-through safety
checker). HunyuanVideo 1.5 has no ``callback_on_step_end``: its steps are captured from a wrapped
``pipe.scheduler.step``. Cosmos2_5_TransferPipeline is checked through its decode lines only: a run
needs a ControlNet and decodes each autoregressive chunk's latent on its own, as this rule does.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from latent_decoder import families
from latent_decoder.synthetic import build_tiny_wan_vae
from latent_decoder.experiment import VideoSettings
from latent_decoder.families import PipelineFacts, detect

from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, Case, FamilyCase, assert_inspect_says,
                            assert_wrong_rules_caught, build_case as _build_case, capture, cli_frames, divide_by_std,
                            in_memory, postprocess, psnr, random_stats, save_model, store_and_decode)

SIGMA_DATA = 0.7  # a scheduler config's sigma_data other than EDMEulerScheduler's default 0.5

# --------------------------------------------------------------------------- tiny VAEs


def _cosmos1(stats: bool) -> Callable[[], Any]:
    """A tiny causal 8x8x8 Cosmos VAE; with ``stats``, 4 channels x 3 latent frames of mean/std."""
    def build() -> Any:
        import torch
        from diffusers import AutoencoderKLCosmos

        mean, std = random_stats(11, 12) if stats else (None, None)
        torch.manual_seed(11)
        return AutoencoderKLCosmos(
            latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8), decode_block_out_channels=(8, 8, 8, 8),
            attention_resolutions=(8,), resolution=64, num_layers=1, latents_mean=mean, latents_std=std,
        ).eval()

    return build


def _wan21() -> Any:
    """Cosmos 2 / 2.5's VAE: Wan 2.1's (16 channels), tiny."""
    mean, std = random_stats(21, 16)
    return build_tiny_wan_vae(seed=21, latents_mean=mean, latents_std=std)


def _hv15() -> Any:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo15

    torch.manual_seed(15)
    return AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
                                       scaling_factor=0.6).eval()


# --------------------------------------------------------------------------- pipeline decode paths


def _ref_cosmos1(sigma_data: float) -> Callable[[Any, Any, VideoSettings], Any]:
    """pipeline_cosmos_text2world.py after the loop (float32 latents; ``scheduler.config.sigma_data``)."""
    def reference(vae: Any, latents: Any, video: VideoSettings) -> Any:
        import torch

        if vae.config.latents_mean is not None:
            latents_mean, latents_std = vae.config.latents_mean, vae.config.latents_std
            latents_mean = (torch.tensor(latents_mean)
                            .view(1, vae.config.latent_channels, -1, 1, 1)[:, :, : latents.size(2)].to(latents))
            latents_std = (torch.tensor(latents_std)
                           .view(1, vae.config.latent_channels, -1, 1, 1)[:, :, : latents.size(2)].to(latents))
            latents = latents * latents_std / sigma_data + latents_mean
        else:
            latents = latents / sigma_data
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0]

    return reference


def _ref_cosmos2(vae: Any, latents: Any, video: VideoSettings) -> Any:
    """pipeline_cosmos2_video2world.py after the loop; ``sigma_data`` is what its ``__init__`` registers."""
    import torch

    sigma_data = 1.0
    latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                               latents.dtype)
    latents_std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                             latents.dtype)
    latents = latents * latents_std / sigma_data + latents_mean
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0]


def _ref_cosmos2_5(vae: Any, latents: Any, video: VideoSettings) -> Any:
    """pipeline_cosmos2_5_predict.py: ``__init__``'s statistics, the lines after the loop, and the
    pipeline's own ``_match_num_frames``."""
    import torch
    from diffusers import Cosmos2_5_PredictBasePipeline

    latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).float()
    latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).float()
    latents = latents / latents_std.to(latents.device, latents.dtype) + latents_mean.to(latents.device, latents.dtype)
    out = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    pipe = SimpleNamespace(vae_scale_factor_temporal=2 ** sum(vae.temperal_downsample))
    return Cosmos2_5_PredictBasePipeline._match_num_frames(pipe, out, video.frames)


def _ref_cosmos2_5_transfer(vae: Any, latents: Any, video: VideoSettings) -> Any:
    """pipeline_cosmos2_5_transfer.py: ``__init__``'s statistics, cast to the VAE dtype in ``__call__``,
    then its ``decode_latents`` on one chunk's latents."""
    import torch

    latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).float()
    latents_std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).float()
    latents_mean = latents_mean.to(dtype=vae.dtype)
    latents_std = latents_std.to(dtype=vae.dtype)
    latents = latents * latents_std + latents_mean
    return vae.decode(latents.to(dtype=vae.dtype), return_dict=False)[0]


def _ref_cosmos2_text2image(vae: Any, latents: Any, video: VideoSettings) -> Any:
    """pipeline_cosmos2_text2image.py after the loop (``sigma_data`` 1.0 from its ``__init__``)."""
    import torch

    latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                               latents.dtype)
    latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                                   latents.dtype)
    latents = latents / latents_std / 1.0 + latents_mean
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0]


def _ref_hv15(vae: Any, latents: Any, video: VideoSettings) -> Any:
    """pipeline_hunyuan_video1_5.py: ``latents.to(vae.dtype) / vae.config.scaling_factor``."""
    latents = latents.to(vae.dtype) / vae.config.scaling_factor
    return vae.decode(latents, return_dict=False)[0]


CASES = {
    "cosmos1": FamilyCase("cosmos1", "AutoencoderKLCosmos", _cosmos1(True), (4, 2, 2, 3),
                          VideoSettings(24, 16, FPS, 9), _ref_cosmos1(0.5), pipeline="CosmosTextToWorldPipeline"),
    "cosmos1-no-stats": FamilyCase("cosmos1", "AutoencoderKLCosmos", _cosmos1(False), (4, 2, 2, 3),
                                   VideoSettings(24, 16, FPS, 9), _ref_cosmos1(SIGMA_DATA),
                                   pipeline="CosmosVideoToWorldPipeline"),
    "cosmos2": FamilyCase("cosmos2", "AutoencoderKLWan", _wan21, (16, 2, 2, 3), VideoSettings(24, 16, FPS, 5),
                          _ref_cosmos2, pipeline="Cosmos2VideoToWorldPipeline"),
    "cosmos2.5": FamilyCase("cosmos2.5", "AutoencoderKLWan", _wan21, (16, 2, 2, 3), VideoSettings(24, 16, FPS, 5),
                            _ref_cosmos2_5, pipeline="Cosmos2_5_PredictBasePipeline"),
    "cosmos2.5-7-frames": FamilyCase("cosmos2.5", "AutoencoderKLWan", _wan21, (16, 2, 2, 3),
                                     VideoSettings(24, 16, FPS, 7), _ref_cosmos2_5,
                                     pipeline="Cosmos2_5_PredictBasePipeline"),
    "cosmos2.5-transfer": FamilyCase("cosmos2.5-transfer", "AutoencoderKLWan", _wan21, (16, 2, 2, 3),
                                     VideoSettings(24, 16, FPS, 5), _ref_cosmos2_5_transfer,
                                     pipeline="Cosmos2_5_TransferPipeline"),
    "cosmos2-text2image": FamilyCase("cosmos2.5", "AutoencoderKLWan", _wan21, (16, 1, 2, 3),
                                     VideoSettings(24, 16, FPS, 1), _ref_cosmos2_text2image,
                                     pipeline="Cosmos2TextToImagePipeline"),
    "hunyuanvideo1.5": FamilyCase("hunyuanvideo1.5", "AutoencoderKLHunyuanVideo15", _hv15, (4, 2, 1, 2),
                                  VideoSettings(32, 16, FPS, 5), _ref_hv15, pipeline="HunyuanVideo15Pipeline"),
}
SCHEDULERS = {"cosmos1-no-stats": {"_class_name": "EDMEulerScheduler", "sigma_data": SIGMA_DATA}}
WAN_VAE_CASES = ["cosmos2", "cosmos2.5", "cosmos2.5-transfer", "cosmos2-text2image"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cosmos_hv15_models")


def build_case(name: str, models_dir: Path) -> Case:
    """The harness's case, plus the scheduler config the pipeline folder holds, if the case has one."""
    case = _build_case(name, CASES, models_dir)
    if name in SCHEDULERS:
        (case.model_dir / "scheduler").mkdir(exist_ok=True)
        (case.model_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULERS[name]))
    return case


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, models_dir: Path) -> Case:
    return build_case(request.param, models_dir)


# --------------------------------------------------------------------------- parity


def test_cli_decode_matches_the_pipeline(case: Case, tmp_path: Path):
    """Parity, and ``Family.output_frames`` (what ``inspect`` says) predicts the decoded shape: causal
    VAEs give ``(T - 1) * factor + 1`` frames, Cosmos 2.5's ``_match_num_frames`` ``num_frames``."""
    import torch

    from latent_decoder.families import DecodeContext
    from latent_decoder.models import load_vae, resolve_model

    frames, summary = cli_frames(case, tmp_path)
    assert frames.shape == case.reference().shape
    assert psnr(frames, case.reference()) >= PARITY_DB
    assert summary["model"]["vae_class"] == case.family.vae_class
    assert summary["model"]["family"] == case.family.family
    vae = load_vae(resolve_model(str(case.model_dir)), torch.device("cpu"), torch.float32)
    rule = families.FAMILIES[case.family.family]
    v = case.family.video
    assert rule.output_frames(case.latent.shape, DecodeContext(vae, v)) == frames.shape[:3] == (v.frames, v.height,
                                                                                                 v.width)


@pytest.mark.parametrize("name", ["cosmos1", "cosmos2", "cosmos2.5", "cosmos2.5-transfer", "hunyuanvideo1.5"])
def test_bfloat16_decode_is_the_pipelines_own(name: str, models_dir: Path):
    case = build_case(name, models_dir)
    frames = in_memory(case, dtype="bfloat16")
    assert psnr(frames, np.round(case.reference("bfloat16"))) >= LOW_PRECISION_DB
    assert psnr(frames, case.reference("float32")) < LOW_PRECISION_DB  # bf16 did change the frames


@pytest.mark.parametrize("name", ["cosmos1", "cosmos2", "cosmos2.5", "cosmos2.5-transfer"])
def test_bfloat16_with_wans_cast_first_order_is_caught(name: str, models_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The Cosmos pipelines de-normalise in float32 and cast after; casting first (as Wan does)
    gives other bf16 frames, and the bf16 parity check rejects them."""
    case = build_case(name, models_dir)
    rule = families.FAMILIES[case.family.family]
    monkeypatch.setitem(families.FAMILIES, rule.name, dataclasses.replace(rule, cast_first=True))
    assert psnr(in_memory(case, dtype="bfloat16"), np.round(case.reference("bfloat16"))) < LOW_PRECISION_DB


def test_cosmos2_5_transfer_bf16_keeps_its_statistics_rounding(models_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Transfer casts mean/std to the VAE dtype before its float32 arithmetic; the predict rule
    (float32 statistics) does not give its bf16 frames."""
    case = build_case("cosmos2.5-transfer", models_dir)
    rule = families.FAMILIES["cosmos2.5-transfer"]
    float32_statistics = families.FAMILIES["cosmos2"].denormalize  # the same formula, statistics left float32
    monkeypatch.setitem(families.FAMILIES, rule.name, dataclasses.replace(rule, denormalize=float32_statistics))
    assert psnr(in_memory(case, dtype="bfloat16"), np.round(case.reference("bfloat16"))) < LOW_PRECISION_DB


@pytest.mark.parametrize("name", WAN_VAE_CASES)
def test_cosmos2_formulas_equal_wans_in_float32(name: str, models_dir: Path):
    """Same latent, same VAE: the ``wan`` rule and the Cosmos rule give the same float32 frames."""
    case = build_case(name, models_dir)
    wan = in_memory(case, family="wan")
    assert psnr(wan, in_memory(case)) >= PARITY_DB
    assert psnr(wan, case.reference()) >= PARITY_DB


def _cosmos1_wrong(sigma: float, first_frame_only: bool = False) -> Callable[[Any, Any], Any]:
    """Cosmos 1's formula with another ``sigma_data``, or one statistic per channel (the first frame's)."""
    def wrong(z: Any, ctx: Any) -> Any:
        from latent_decoder.families.cosmos import frame_stats

        c = ctx.config
        like = z[:, :, :1] if first_frame_only else z
        return z * frame_stats(c.latents_std, like, 4) / sigma + frame_stats(c.latents_mean, like, 4)

    return wrong


def _wan_sigma(sigma: float) -> Callable[[Any, Any], Any]:
    def wrong(z: Any, ctx: Any) -> Any:
        from latent_decoder.families.base import channel_stats

        c = ctx.config
        return z * channel_stats(c.latents_std, z, c.z_dim) / sigma + channel_stats(c.latents_mean, z, c.z_dim)

    return wrong




WRONG: dict[str, dict[str, Callable[[Any, Any], Any]]] = {
    "cosmos1": {"one statistic per channel": _cosmos1_wrong(0.5, first_frame_only=True),
                "sigma_data 1.0 (Cosmos 2's)": _cosmos1_wrong(1.0)},
    "cosmos1-no-stats": {"EDMEulerScheduler's default sigma_data, not the config's": lambda z, ctx: z / 0.5},
    "cosmos2": {"divide by std": divide_by_std, "sigma_data 0.5 (Cosmos 1's)": _wan_sigma(0.5)},
    "cosmos2.5": {"divide by std": divide_by_std},
    "cosmos2.5-7-frames": {"divide by std": divide_by_std},
    "cosmos2.5-transfer": {"divide by std": divide_by_std},
    "cosmos2-text2image": {"divide by std": divide_by_std},
    "hunyuanvideo1.5": {"multiply by scaling_factor": lambda z, ctx: z * ctx.config.scaling_factor},
}


def test_negative_control_wrong_denormalization_is_caught(case: Case, monkeypatch: pytest.MonkeyPatch):
    name = next(n for n, c in CASES.items() if c is case.family)
    assert_wrong_rules_caught(case, WRONG[name], monkeypatch)


def test_negative_control_frames_not_matched_is_caught(models_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Without ``_match_num_frames`` a 7-frame Cosmos 2.5 video decodes to 5 frames."""
    from latent_decoder.families.base import plain_decode

    case = build_case("cosmos2.5-7-frames", models_dir)
    rule = families.FAMILIES["cosmos2.5"]
    monkeypatch.setitem(families.FAMILIES, "cosmos2.5", dataclasses.replace(rule, decode=plain_decode))
    assert in_memory(case).shape[0] == 5 != case.reference().shape[0]


# --------------------------------------------------------------------------- which rule


@pytest.mark.parametrize("pipeline, family", [
    ("Cosmos2VideoToWorldPipeline", "cosmos2"), ("Cosmos2_5_PredictBasePipeline", "cosmos2.5"),
    ("Cosmos2TextToImagePipeline", "cosmos2.5"), ("Cosmos2_5_TransferPipeline", "cosmos2.5-transfer"),
    ("WanPipeline", "wan"), (None, "wan"),
])
def test_the_pipeline_decides_for_wans_vae(pipeline: str | None, family: str):
    facts = PipelineFacts(class_name=pipeline, index={"_class_name": pipeline} if pipeline else {})
    assert detect("AutoencoderKLWan", facts).family.name == family
    assert detect("AutoencoderKLWan", facts, override="cosmos2").family.name == "cosmos2"


@pytest.mark.parametrize("vae_class, family", [("AutoencoderKLCosmos", "cosmos1"),
                                               ("AutoencoderKLHunyuanVideo15", "hunyuanvideo1.5")])
def test_own_vae_classes_default_to_their_family(vae_class: str, family: str):
    assert detect(vae_class, PipelineFacts()).family.name == family
    assert detect(vae_class, PipelineFacts(class_name="SomeOtherPipeline")).family.name == family


@pytest.mark.parametrize("name, label, mirrors", [
    ("cosmos1", "Cosmos 1", "diffusers.CosmosTextToWorldPipeline"),
    ("cosmos2", "Cosmos 2", "diffusers.Cosmos2VideoToWorldPipeline"),
    ("cosmos2.5", "Cosmos 2.5 Predict", "diffusers.Cosmos2_5_PredictBasePipeline"),
    ("hunyuanvideo1.5", "HunyuanVideo 1.5", "diffusers.HunyuanVideo15Pipeline"),
])
def test_inspect_names_the_family_and_the_rule(name: str, label: str, mirrors: str, models_dir: Path,
                                               tmp_path: Path):
    case = build_case(name, models_dir)
    assert_inspect_says(case, tmp_path / "exp", [
        f"family      {name} ({label}), mirrors {mirrors}",
        f"rule        pipeline {case.family.pipeline} in {case.model_dir / 'model_index.json'}"])


def test_wans_vae_without_model_index_is_wan_unless_told(models_dir: Path, tmp_path: Path):
    """A bare copy of the Cosmos 2 VAE folder decodes with ``wan``; ``--family cosmos2`` overrides."""
    case = build_case("cosmos2", models_dir)
    bare = dataclasses.replace(case, model_dir=save_model(case.vae, tmp_path / "bare"))
    _, summary = cli_frames(bare, tmp_path / "plain")
    assert summary["model"]["family"] == "wan"
    frames, summary = cli_frames(bare, tmp_path / "told", "--family", "cosmos2")
    assert summary["model"]["family"] == "cosmos2"
    assert psnr(frames, case.reference()) >= PARITY_DB


# --------------------------------------------------------------------------- real pipeline runs


class PassThroughSafetyChecker:
    """Stands in for ``cosmos_guardrail`` (not installed): every prompt and video is let through."""

    device = "cpu"

    def to(self, *args: Any, **kwargs: Any) -> "PassThroughSafetyChecker":
        return self

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames: np.ndarray) -> np.ndarray:
        return frames


def _cosmos_transformer(in_channels: int, out_channels: int) -> Any:
    import torch
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    return CosmosTransformer3DModel(
        in_channels=in_channels, out_channels=out_channels, num_attention_heads=2, attention_head_dim=16,
        num_layers=1, mlp_ratio=2, text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2),
        concat_padding_mask=False,
    ).eval()


def _record_decodes(vae: Any, decoded: list[Any]) -> None:
    """Keep what ``vae.decode`` returns: the Cosmos safety-checker path floors the frames to 8 bits."""
    decode = vae.decode

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = decode(*args, **kwargs)
        decoded.append(out[0] if isinstance(out, tuple) else out.sample)
        return out

    vae.decode = recording


def _run_cosmos(pipe: Any, vae: Any, video: VideoSettings, **kwargs: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """Run a tiny Cosmos pipeline for 3 steps; its per-step latents and its decoded frames (0..255)."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    decoded: list[Any] = []
    _record_decodes(vae, decoded)
    with torch.inference_mode():
        out = pipe(prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
                   height=video.height, width=video.width, num_frames=video.frames, num_inference_steps=3,
                   guidance_scale=1.0, callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0), **kwargs)
    del vae.decode
    expected = postprocess(decoded[-1])
    assert psnr(np.asarray(out.frames[0], np.float64) * 255.0, expected) > 45  # the output is these frames
    return captured, expected


def _assert_steps_decode_to(tmp_path: Path, model_dir: Path, captured: list[np.ndarray], video: VideoSettings,
                            expected: np.ndarray, family: str) -> None:
    first, last, summary = store_and_decode(tmp_path, model_dir, captured, video)
    assert summary["model"]["family"] == family
    assert last.shape == expected.shape
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected) < psnr(last, expected)


def test_tiny_cosmos1_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """CosmosTextToWorldPipeline with a non-default ``sigma_data``, read back from the saved scheduler."""
    from diffusers import CosmosTextToWorldPipeline, EDMEulerScheduler

    vae = _cosmos1(True)()
    scheduler = EDMEulerScheduler(sigma_data=SIGMA_DATA, final_sigmas_type="sigma_min")
    pipe = CosmosTextToWorldPipeline(text_encoder=None, tokenizer=None, transformer=_cosmos_transformer(4, 4),
                                     vae=vae, scheduler=scheduler, safety_checker=PassThroughSafetyChecker())
    video = VideoSettings(width=32, height=16, fps=FPS, frames=9)
    captured, expected = _run_cosmos(pipe, vae, video)
    assert [c.shape for c in captured] == [(1, 4, 2, 2, 4)] * 3
    model_dir = save_model(vae, tmp_path / "model", pipeline="CosmosTextToWorldPipeline")
    scheduler.save_pretrained(model_dir / "scheduler")
    _assert_steps_decode_to(tmp_path, model_dir, captured, video, expected, "cosmos1")


def test_tiny_cosmos2_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """Cosmos2VideoToWorldPipeline (image to world, Wan's VAE)."""
    from diffusers import Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler
    from PIL import Image

    vae = _wan21()
    pipe = Cosmos2VideoToWorldPipeline(text_encoder=None, tokenizer=None, transformer=_cosmos_transformer(17, 16),
                                       vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
                                       safety_checker=PassThroughSafetyChecker())
    video = VideoSettings(width=32, height=16, fps=FPS, frames=5)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (16, 32, 3), dtype=np.uint8))
    captured, expected = _run_cosmos(pipe, vae, video, image=image)
    assert [c.shape for c in captured] == [(1, 16, 2, 2, 4)] * 3
    model_dir = save_model(vae, tmp_path / "model", pipeline="Cosmos2VideoToWorldPipeline")
    _assert_steps_decode_to(tmp_path, model_dir, captured, video, expected, "cosmos2")


def test_tiny_cosmos2_5_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """Cosmos2_5_PredictBasePipeline (text to world) at 7 frames: its output goes through
    ``_match_num_frames`` (2 latent frames decode to 5, repeated and cut to 7)."""
    import torch
    from diffusers import Cosmos2_5_PredictBasePipeline, UniPCMultistepScheduler

    vae = _wan21()
    scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
    pipe = Cosmos2_5_PredictBasePipeline(text_encoder=None, tokenizer=None, transformer=_cosmos_transformer(17, 16),
                                         vae=vae, scheduler=scheduler, safety_checker=PassThroughSafetyChecker())
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    video = VideoSettings(width=32, height=16, fps=FPS, frames=7)
    with torch.inference_mode():
        out = pipe(prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1)),
                   height=video.height, width=video.width, num_frames=video.frames, num_inference_steps=3,
                   guidance_scale=1.0, callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    assert [c.shape for c in captured] == [(1, 16, 2, 2, 4)] * 3 and expected.shape[0] == 7
    model_dir = save_model(vae, tmp_path / "model", pipeline="Cosmos2_5_PredictBasePipeline")
    _assert_steps_decode_to(tmp_path, model_dir, captured, video, expected, "cosmos2.5")


def capture_scheduler_steps(pipe: Any, store: list[np.ndarray]) -> None:
    """Per-step latents of a pipeline without ``callback_on_step_end`` (HunyuanVideo 1.5): what each
    ``pipe.scheduler.step`` returns is the latent that step hands on."""
    step = pipe.scheduler.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        store.append((out[0] if isinstance(out, tuple) else out.prev_sample).detach().float().cpu().numpy())
        return out

    pipe.scheduler.step = recording_step


def test_tiny_hunyuanvideo15_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel
    from diffusers.guiders import ClassifierFreeGuidance

    vae = _hv15()
    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=1,
        num_refiner_layers=1, mlp_ratio=2, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=8,
        rope_axes_dim=(4, 4, 4), target_size=32, task_type="t2v",
    ).eval()
    pipe = HunyuanVideo15Pipeline(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                  tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=1.0))
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    capture_scheduler_steps(pipe, captured)
    video = VideoSettings(width=32, height=16, fps=FPS, frames=5)
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        out = pipe(prompt_embeds=torch.randn(1, 8, 16, generator=g), prompt_embeds_mask=torch.ones(1, 8),
                   prompt_embeds_2=torch.randn(1, 4, 8, generator=g), prompt_embeds_mask_2=torch.ones(1, 4),
                   height=video.height, width=video.width, num_frames=video.frames, num_inference_steps=3,
                   output_type="np", generator=torch.Generator().manual_seed(0))
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    assert [c.shape for c in captured] == [(1, 4, 2, 1, 2)] * 3
    model_dir = save_model(vae, tmp_path / "model", pipeline="HunyuanVideo15Pipeline")
    _assert_steps_decode_to(tmp_path, model_dir, captured, video, expected, "hunyuanvideo1.5")
