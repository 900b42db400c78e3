"""LTX-2 and Sana-Video latents decode exactly as their diffusers pipelines decode them.

The LTX-2 reference is ``LTX2Pipeline``'s own static helpers (``_unpack_latents``,
``_denormalize_latents``) around its timestep-conditioning lines, copied; Sana-Video's is its decode
lines, copied. The two pipelines share ``AutoencoderKLLTX2Video`` but not its decode (packed tokens,
scaling factor and decode timestep in LTX-2; ``[B, C, T, H, W]``, no scaling factor in Sana-Video):
the model folder's ``model_index.json`` decides. Tiny ``LTX2Pipeline`` (random transformer, text
connectors, audio VAE and vocoder; ``text_encoder=None`` with ``prompt_embeds``) and
``SanaVideoPipeline`` (Wan VAE and LTX-2 VAE) runs on CPU decode back to their own frames.

LTX-2's decode noise (``decode_noise_scale > 0``) comes from the pipeline's generator after its loop,
a state no experiment stores: the tool draws it from a fixed seed, so the reference here draws it
from that seed too (the same lines, the same draw); against a real run only ``s = 0`` can match.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from latent_decoder import families
from latent_decoder.cli import cli
from latent_decoder.synthetic import build_tiny_wan_vae
from latent_decoder.errors import LatentShapeError
from latent_decoder.experiment import VideoSettings
from latent_decoder.families.ltx_video import NOISE_SEED, buffer_denormalize, decode_with_timestep

from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, Case, FamilyCase, assert_inspect_says,
                            assert_wrong_rules_caught, build_case as _build_case, capture, cli_frames, divide_by_std,
                            in_memory, png_frames, postprocess, psnr, random_stats, save_model, scaling_factor_only,
                            store_and_decode, torch_dtype, write_experiment)

LTX2_VAE = "AutoencoderKLLTX2Video"


# --------------------------------------------------------------------------- tiny VAEs


def _ltx2_vae(timestep_conditioning: bool, seed: int = 11) -> Any:
    """diffusers' own tiny LTX-2 test VAE (2x spatial, 2x temporal), with random mean/std buffers and
    a scaling factor far from 1; the compression ratios are written in the config, as Sana-Video reads them."""
    import torch
    from diffusers import AutoencoderKLLTX2Video

    torch.manual_seed(seed)
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=timestep_conditioning, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False, scaling_factor=0.6, spatial_compression_ratio=2,
        temporal_compression_ratio=2,
    ).eval()
    mean, std = random_stats(seed, 4)
    with torch.no_grad():  # buffers of the model, saved with its weights (not in config.json)
        vae.latents_mean.copy_(torch.tensor(mean))
        vae.latents_std.copy_(torch.tensor(std))
    return vae


def _wan_vae() -> Any:
    mean, std = random_stats(12, 16)
    return build_tiny_wan_vae(seed=12, latents_mean=mean, latents_std=std)


# --------------------------------------------------------------------------- pipeline decode paths


def _latent_grid(vae: Any, video: VideoSettings) -> tuple[int, int, int]:
    """LTX2Pipeline.__call__'s latent_num_frames / latent_height / latent_width."""
    return ((video.frames - 1) // vae.temporal_compression_ratio + 1, video.height // vae.spatial_compression_ratio,
            video.width // vae.spatial_compression_ratio)


def _ref_ltx2(decode_timestep: float = 0.0, decode_noise_scale: float | None = None,
              patch: tuple[int, int] = (1, 1)) -> Callable[[Any, Any, VideoSettings], Any]:
    """LTX2Pipeline's lines after its loop at these call arguments: ``latents[:, :base_token_count]``
    (the condition and IC-LoRA pipelines), ``_unpack_latents``, the cast to ``prompt_embeds.dtype``,
    the decode noise, ``_denormalize_latents``, ``vae.decode(latents, timestep)``. With patch sizes
    above 1 ``_unpack_latents`` gets the token grid (what ``_pack_latents`` made; the pipeline passes
    the latent grid, the same at the released models' 1)."""
    def reference(vae: Any, latent: Any, video: VideoSettings) -> Any:
        import torch
        from diffusers import LTX2Pipeline
        from diffusers.utils.torch_utils import randn_tensor

        p, p_t = patch
        t, h, w = _latent_grid(vae, video)
        t, h, w = t // p_t, h // p, w // p
        latents = LTX2Pipeline._unpack_latents(latent[:, :t * h * w], t, h, w, p, p_t)
        latents = latents.to(vae.dtype)  # prompt_embeds.dtype: the pipeline is loaded in one dtype
        batch_size = latents.shape[0]
        if not vae.config.timestep_conditioning:
            timestep = None
        else:
            generator = torch.Generator().manual_seed(NOISE_SEED)
            noise = randn_tensor(latents.shape, generator=generator, dtype=latents.dtype)
            timesteps = [decode_timestep] * batch_size
            scales = timesteps if decode_noise_scale is None else [decode_noise_scale] * batch_size
            timestep = torch.tensor(timesteps, dtype=latents.dtype)
            scale = torch.tensor(scales, dtype=latents.dtype)[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        latents = LTX2Pipeline._denormalize_latents(latents, vae.latents_mean, vae.latents_std,
                                                    vae.config.scaling_factor)
        return vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]

    return reference


def _ref_sana(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """SanaVideoPipeline's lines after its loop, copied."""
    import torch
    from diffusers import AutoencoderKLLTX2Video, AutoencoderKLWan

    latents = latent.to(vae.dtype)
    if isinstance(vae, AutoencoderKLLTX2Video):
        latents_mean = vae.latents_mean
        latents_std = vae.latents_std
        z_dim = vae.config.latent_channels
    elif isinstance(vae, AutoencoderKLWan):
        latents_mean = torch.tensor(vae.config.latents_mean)
        latents_std = torch.tensor(vae.config.latents_std)
        z_dim = vae.config.z_dim
    else:
        raise AssertionError(type(vae))
    latents_mean = latents_mean.view(1, z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    latents_std = 1.0 / latents_std.view(1, z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    latents = latents / latents_std + latents_mean
    return vae.decode(latents, return_dict=False)[0]


def _packed(patch: int = 1, patch_t: int = 1, extra_tokens: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """What LTX2Pipeline.prepare_latents hands the loop: ``_pack_latents``; the condition pipelines
    append keyframe tokens after the video's."""
    def store(grid: np.ndarray) -> np.ndarray:
        import torch
        from diffusers import LTX2Pipeline

        packed = LTX2Pipeline._pack_latents(torch.from_numpy(grid), patch, patch_t).numpy()
        extra = np.random.default_rng(3).standard_normal((1, extra_tokens, packed.shape[2])).astype(np.float32)
        return np.concatenate([packed, extra], axis=1)

    return store


LTX2_VIDEO = VideoSettings(24, 16, FPS, 5)  # 3 x 8 x 12 latent grid
CASES = {
    "ltx2": FamilyCase("ltx2", LTX2_VAE, partial(_ltx2_vae, False), (4, 3, 8, 12), LTX2_VIDEO, _ref_ltx2(),
                       store=_packed(), pipeline="LTX2Pipeline"),
    "ltx2-tc": FamilyCase("ltx2", LTX2_VAE, partial(_ltx2_vae, True), (4, 3, 8, 12), LTX2_VIDEO, _ref_ltx2(),
                          store=_packed(), pipeline="LTX2ImageToVideoPipeline"),
    "ltx2-patch2": FamilyCase("ltx2", LTX2_VAE, partial(_ltx2_vae, False), (4, 3, 8, 12), LTX2_VIDEO,
                              _ref_ltx2(patch=(2, 1)), store=_packed(2, 1), pipeline="LTX2Pipeline"),
    "ltx2-conditioned": FamilyCase("ltx2-conditioned", LTX2_VAE, partial(_ltx2_vae, True), (4, 3, 8, 12),
                                   LTX2_VIDEO, _ref_ltx2(), store=_packed(extra_tokens=10),
                                   pipeline="LTX2ConditionPipeline"),
    "sana-video-ltx2": FamilyCase("sana-video", LTX2_VAE, partial(_ltx2_vae, False), (4, 3, 8, 12), LTX2_VIDEO,
                                  _ref_sana, pipeline="SanaVideoPipeline"),
    "sana-video-wan": FamilyCase("sana-video", "AutoencoderKLWan", _wan_vae, (16, 2, 4, 6),
                                 VideoSettings(48, 32, FPS, 5), _ref_sana, pipeline="SanaImageToVideoPipeline"),
}
TRANSFORMER_CONFIGS = {"ltx2-patch2": {"_class_name": "LTX2VideoTransformer3DModel", "patch_size": 2,
                                       "patch_size_t": 1}}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ltx2_sana_models")


def build_case(name: str, models_dir: Path) -> Case:
    case = _build_case(name, CASES, models_dir)
    if name in TRANSFORMER_CONFIGS:  # the patch sizes the tool reads, beside model_index.json
        (case.model_dir / "transformer").mkdir(exist_ok=True)
        (case.model_dir / "transformer" / "config.json").write_text(json.dumps(TRANSFORMER_CONFIGS[name]))
    return case


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, models_dir: Path) -> Case:
    return build_case(request.param, models_dir)


def _frames(case: Case, reference: Callable[[Any, Any, VideoSettings], Any], latent: np.ndarray | None = None,
            dtype: str = "float32") -> np.ndarray:
    """The pipeline's frames by ``reference`` (other call arguments than the case's own)."""
    import torch

    vae = copy.deepcopy(case.vae).to(torch_dtype(dtype))
    with torch.no_grad():
        return postprocess(reference(vae, torch.from_numpy(case.latent if latent is None else latent),
                                     case.family.video))


# --------------------------------------------------------------------------- parity


def test_cli_decode_matches_the_pipeline(case: Case, tmp_path: Path):
    frames, summary = cli_frames(case, tmp_path)
    assert frames.shape == case.reference().shape
    assert psnr(frames, case.reference()) >= PARITY_DB
    assert summary["model"]["vae_class"] == case.family.vae_class
    assert summary["model"]["family"] == case.family.family


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["ltx2-tc", "sana-video-ltx2", "sana-video-wan"])
def test_low_precision_decode_is_the_pipelines_own(name: str, dtype: str, models_dir: Path):
    """Both pipelines cast to the VAE dtype first and de-normalise (and mix noise) in it."""
    case = build_case(name, models_dir)
    frames = in_memory(case, dtype=dtype)
    assert psnr(frames, np.round(case.reference(dtype))) >= LOW_PRECISION_DB
    assert psnr(frames, case.reference("float32")) < LOW_PRECISION_DB + 40  # the dtype did change something


# --------------------------------------------------------------------------- negative controls


def _sana_formula(z: Any, ctx: Any) -> Any:
    """Sana-Video's rule on the LTX-2 VAE's buffers: no scaling factor."""
    shape = (1, -1, 1, 1, 1)
    return z * ctx.vae.latents_std.view(shape) + ctx.vae.latents_mean.view(shape)






WRONG = {
    "ltx2": {"Sana-Video's formula": _sana_formula, "scaling factor only": scaling_factor_only},
    "ltx2-tc": {"Sana-Video's formula": _sana_formula, "scaling factor only": scaling_factor_only},
    "ltx2-patch2": {"Sana-Video's formula": _sana_formula},
    "ltx2-conditioned": {"Sana-Video's formula": _sana_formula},
    "sana-video-ltx2": {"LTX-2's formula": buffer_denormalize},
    "sana-video-wan": {"divide by std": divide_by_std},
}


def test_negative_control_wrong_denormalization_is_caught(case: Case, monkeypatch: pytest.MonkeyPatch):
    name = next(n for n, c in CASES.items() if c is case.family)
    assert_wrong_rules_caught(case, WRONG[name], monkeypatch)


def test_negative_control_wrong_unpacking_is_caught(monkeypatch: pytest.MonkeyPatch, models_dir: Path):
    """Reading LTX-2's packed tokens as if channels came first still makes a video, a wrong one."""
    case = build_case("ltx2", models_dir)

    def channels_first(z: Any, ctx: Any) -> Any:
        return z.reshape(z.shape[0], z.shape[2], *_latent_grid(ctx.vae, ctx.video))

    assert_wrong_rules_caught(case, {"channels first": channels_first}, monkeypatch, field="to_grid")


# --------------------------------------------------------------------------- decode_timestep / decode_noise_scale


def _decode_experiment(case: Case, root: Path, *args: str, **config: dict[str, Any]) -> np.ndarray:
    """Decode the case's latent as an experiment whose config has these extra section keys."""
    exp = write_experiment(root, case.model_dir, case.family.video, case.latent)
    path = exp / "configs" / "generation_config.yaml"
    data = yaml.safe_load(path.read_text())
    for section, values in config.items():
        data[section].update(values)
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png", *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return png_frames(exp / "latents_videos" / "prompt_000" / "vid_001" / "step_000")


def test_decode_timestep_from_config_flags_and_library(models_dir: Path, tmp_path: Path):
    """``decode_timestep``/``decode_noise_scale`` reach the decode as the pipeline's call arguments,
    from ``video_settings`` or ``model_settings``, from the CLI flags (which win), and from the library."""
    case = build_case("ltx2-tc", models_dir)
    at_005 = _frames(case, _ref_ltx2(0.05, 0.0))
    assert psnr(at_005, case.reference()) < PARITY_DB  # the decode timestep matters to this VAE

    by_video_settings = _decode_experiment(case, tmp_path / "video",
                                           video_settings={"decode_timestep": 0.05, "decode_noise_scale": 0.0})
    assert psnr(by_video_settings, at_005) >= PARITY_DB
    by_flags = cli_frames(case, tmp_path / "flags", "--decode-timestep", "0.05", "--decode-noise-scale", "0")[0]
    assert psnr(by_flags, at_005) >= PARITY_DB
    assert psnr(in_memory(case, decode_timestep=0.05, decode_noise_scale=0.0), at_005) >= PARITY_DB
    flag_wins = _decode_experiment(case, tmp_path / "override", "--decode-timestep", "0",
                                   video_settings={"decode_timestep": 0.05, "decode_noise_scale": 0.0})
    assert psnr(flag_wins, case.reference()) >= PARITY_DB

    # model_settings, without a noise scale: the pipeline's default noise scale is the decode timestep
    noisy = _decode_experiment(case, tmp_path / "model", model_settings={"decode_timestep": 0.05})
    assert psnr(noisy, _frames(case, _ref_ltx2(0.05, None))) >= PARITY_DB
    assert psnr(noisy, at_005) < PARITY_DB


def test_decode_noise_is_mixed_before_denormalizing(monkeypatch: pytest.MonkeyPatch, models_dir: Path):
    """With ``decode_noise_scale > 0`` the result is the pipeline's lines at the tool's noise draw,
    the same on every run, not the noise-free one; LTX-Video's order (mix after de-normalising) fails."""
    case = build_case("ltx2-tc", models_dir)
    expected = _frames(case, _ref_ltx2(0.05, 0.3))
    first = in_memory(case, decode_timestep=0.05, decode_noise_scale=0.3)
    assert np.array_equal(first, in_memory(case, decode_timestep=0.05, decode_noise_scale=0.3))
    assert psnr(first, in_memory(case, decode_timestep=0.05, decode_noise_scale=0.0)) < PARITY_DB
    assert psnr(first, expected) >= PARITY_DB

    rule = families.FAMILIES["ltx2"]
    monkeypatch.setitem(families.FAMILIES, "ltx2", dataclasses.replace(
        rule, denormalize=buffer_denormalize, decode=decode_with_timestep))  # LTX-Video's lines
    wrong = in_memory(case, decode_timestep=0.05, decode_noise_scale=0.3)
    assert psnr(wrong, expected) < PARITY_DB


# --------------------------------------------------------------------------- detection


def test_model_index_decides_how_the_ltx2_vae_decodes(tmp_path: Path):
    """One LTX-2 VAE in two model folders: each pipeline's latent decodes to that pipeline's frames,
    not to the other's; a bare VAE folder takes LTX-2's rule unless ``--family`` says otherwise."""
    import torch

    from latent_decoder import decode_latent

    vae = _ltx2_vae(False)
    video = LTX2_VIDEO
    grid = np.random.default_rng(5).standard_normal((1, 4, 3, 8, 12)).astype(np.float16).astype(np.float32)
    packed = _packed()(grid)
    with torch.no_grad():
        ltx2_ref = postprocess(_ref_ltx2()(vae, torch.from_numpy(packed), video))
        sana_ref = postprocess(_ref_sana(vae, torch.from_numpy(grid), video))
    assert psnr(ltx2_ref, sana_ref) < PARITY_DB

    def decode(folder: Path, latent: np.ndarray, family: str | None = None) -> np.ndarray:
        return decode_latent(latent, str(folder), device="cpu", frames=video.frames, height=video.height,
                             width=video.width, family=family)

    ltx2 = decode(save_model(vae, tmp_path / "ltx2", pipeline="LTX2Pipeline"), packed)
    sana = decode(save_model(vae, tmp_path / "sana", pipeline="SanaVideoPipeline"), grid)
    assert psnr(ltx2, ltx2_ref) >= PARITY_DB and psnr(ltx2, sana_ref) < PARITY_DB
    assert psnr(sana, sana_ref) >= PARITY_DB and psnr(sana, ltx2_ref) < PARITY_DB

    bare = save_model(vae, tmp_path / "bare")
    assert psnr(decode(bare, packed), ltx2_ref) >= PARITY_DB
    assert psnr(decode(bare, grid, family="sana-video"), sana_ref) >= PARITY_DB


def test_detection_picks_the_pipelines_family():
    from latent_decoder.families import PipelineFacts, detect

    def picked(vae_class: str, pipeline: str | None, override: str | None = None) -> str:
        return detect(vae_class, PipelineFacts(class_name=pipeline), override).family.name

    assert picked(LTX2_VAE, "LTX2Pipeline") == "ltx2"
    assert picked(LTX2_VAE, "LTX2ImageToVideoPipeline") == "ltx2"
    assert picked(LTX2_VAE, "LTX2ConditionPipeline") == "ltx2-conditioned"
    assert picked(LTX2_VAE, "LTX2InContextPipeline") == "ltx2-conditioned"
    assert picked(LTX2_VAE, "SanaVideoPipeline") == "sana-video"
    assert picked(LTX2_VAE, None) == "ltx2"
    assert picked("AutoencoderKLWan", "SanaImageToVideoPipeline") == "sana-video"
    assert picked("AutoencoderKLWan", "WanPipeline") == "wan"
    assert picked("AutoencoderKLWan", "SanaVideoPipeline", override="wan") == "wan"
    assert picked(LTX2_VAE, "SanaVideoPipeline", override="ltx2") == "ltx2"


def test_inspect_names_the_family_and_the_rule(models_dir: Path, tmp_path: Path):
    for name, words in {
        "ltx2-tc": ["family      ltx2 (LTX-2), mirrors diffusers.LTX2Pipeline",
                    "rule        pipeline LTX2ImageToVideoPipeline in ", "[1, S, 4] stored latents",
                    "decode args decode_timestep pipeline default", "[1, 288, 4] float16 x1 -> 5 frames 24x16"],
        "ltx2-conditioned": ["family      ltx2-conditioned (LTX-2 (keyframe/IC-LoRA conditions))",
                             "rule        pipeline LTX2ConditionPipeline in ", "[1, 298, 4] float16 x1 -> 5 frames"],
        "sana-video-ltx2": ["family      sana-video (Sana-Video), mirrors diffusers.SanaVideoPipeline",
                            "rule        pipeline SanaVideoPipeline in ", "note: with use_resolution_binning",
                            "[1, 4, T, H, W] stored latents", "[1, 4, 3, 8, 12] float16 x1 -> 5 frames 24x16"],
        "sana-video-wan": ["family      sana-video (Sana-Video)", "rule        pipeline SanaImageToVideoPipeline in "],
    }.items():
        case = build_case(name, models_dir)
        assert_inspect_says(case, tmp_path / name, words + [f"{case.model_dir}/model_index.json"])


def test_appended_condition_tokens_are_only_accepted_for_the_condition_pipelines(models_dir: Path):
    """LTX2Pipeline never appends tokens: a latent longer than the video's grid is rejected there."""
    from latent_decoder import decode_latent

    conditioned = build_case("ltx2-conditioned", models_dir)
    plain = build_case("ltx2", models_dir)
    v = LTX2_VIDEO
    with pytest.raises(LatentShapeError, match="298 tokens"):
        decode_latent(conditioned.latent, str(plain.model_dir), device="cpu", frames=v.frames, height=v.height,
                      width=v.width)


# --------------------------------------------------------------------------- real pipeline runs


def test_tiny_ltx2_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """A tiny LTX2Pipeline (timestep-conditioned VAE, decode_timestep 0.05 with noise scale 0) runs on
    CPU; its packed per-step latents, stored as experiments do, decode back to its own frames."""
    import torch
    from diffusers import AutoencoderKLLTX2Audio, FlowMatchEulerDiscreteScheduler, LTX2Pipeline
    from diffusers import LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    caption = 32
    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1, qk_norm="rms_norm_across_heads",
        caption_channels=caption, rope_double_precision=False, rope_type="split",
    ).eval()
    connectors = LTX2TextConnectors(
        caption_channels=caption, text_proj_in_factor=2, video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_double_precision=False,
        rope_type="split",
    ).eval()
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    ).eval()
    vocoder = LTX2Vocoder(
        in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
        resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
        output_sampling_rate=16000,
    ).eval()
    vae = _ltx2_vae(True)
    pipe = LTX2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None,
                        tokenizer=None, connectors=connectors, transformer=transformer, vocoder=vocoder)
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    video = VideoSettings(width=32, height=32, fps=FPS, frames=5)
    embeds = torch.randn(1, 8, caption * 2, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = pipe(prompt_embeds=embeds, prompt_attention_mask=torch.ones(1, 8), height=video.height,
                   width=video.width, num_frames=video.frames, frame_rate=25.0, num_inference_steps=3,
                   guidance_scale=1.0, stg_scale=0.0, modality_scale=1.0, guidance_rescale=0.0,
                   audio_guidance_scale=1.0, audio_stg_scale=0.0, audio_modality_scale=1.0,
                   audio_guidance_rescale=0.0, spatio_temporal_guidance_blocks=None, use_cross_timestep=False,
                   decode_timestep=0.05, decode_noise_scale=0.0, callback_on_step_end=capture(captured),
                   output_type="np", generator=torch.Generator().manual_seed(0))
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    assert [c.shape for c in captured] == [(1, 768, 4)] * 3  # packed: 3 x 16 x 16 tokens of 4 channels

    model = save_model(vae, tmp_path / "model", pipeline="LTX2Pipeline")
    transformer.save_config(model / "transformer")
    first, last, summary = store_and_decode(tmp_path, model, captured, video, "--decode-timestep", "0.05",
                                            "--decode-noise-scale", "0")
    assert summary["model"]["family"] == "ltx2"
    assert last.shape == expected.shape == (5, 32, 32, 3)
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected) < psnr(last, expected)


@pytest.mark.parametrize("vae_kind", ["wan", "ltx2"])
def test_tiny_sana_video_pipeline_run_decodes_to_its_own_frames(vae_kind: str, tmp_path: Path):
    """A tiny SanaVideoPipeline with either of its video VAEs: ``[1, C, T, H, W]`` per-step latents
    decode back to its own frames (resolution binning off: the frames are the VAE's)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, SanaVideoPipeline, SanaVideoTransformer3DModel

    vae, frames = (_wan_vae(), 9) if vae_kind == "wan" else (_ltx2_vae(False), 5)
    channels = vae.config.z_dim if vae_kind == "wan" else vae.config.latent_channels
    torch.manual_seed(0)
    transformer = SanaVideoTransformer3DModel(
        in_channels=channels, out_channels=channels, num_attention_heads=2, attention_head_dim=12, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=8,
        sample_size=8, patch_size=(1, 2, 2), norm_elementwise_affine=False, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    ).eval()
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = SanaVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    video = VideoSettings(width=32, height=32, fps=FPS, frames=frames)
    embeds = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = pipe(prompt_embeds=embeds, prompt_attention_mask=torch.ones(1, 8), height=video.height,
                   width=video.width, frames=video.frames, num_inference_steps=3, guidance_scale=1.0,
                   use_resolution_binning=False, callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    grid = (3, 4, 4) if vae_kind == "wan" else (3, 16, 16)
    assert [c.shape for c in captured] == [(1, channels, *grid)] * 3

    model = save_model(vae, tmp_path / "model", pipeline="SanaVideoPipeline")
    first, last, summary = store_and_decode(tmp_path, model, captured, video)
    assert summary["model"]["family"] == "sana-video"
    assert last.shape == expected.shape == (frames, 32, 32, 3)
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected) < psnr(last, expected)
