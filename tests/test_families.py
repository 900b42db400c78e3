"""Every supported VAE family decodes a stored latent exactly as its diffusers pipeline would.

For each family a tiny random VAE (with non-default normalisation: random per-channel mean/std,
scaling factors far from 1) is saved with ``save_pretrained`` into ``model/vae``; a latent in the
layout that family's pipeline hands to ``callback_on_step_end`` is stored the way experiments do
(float16, gzip'd ``np.save``); the CLI decodes it to PNG frames; the reference is the pipeline's
own decode path (its static helpers where it has them, else its lines copied from the pipeline
source) run on the same latent. Negative controls show that the same comparison catches a wrong
de-normalisation or a wrong unpacking. Tiny LTX-Video and CogVideoX pipelines also run end to end
on CPU, and their stored per-step latents decode back to their own output frames.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner

from latent_decoder import decode_latent, families
from latent_decoder.cli import cli
from latent_decoder.synthetic import build_tiny_wan_vae
from latent_decoder.errors import LatentFileError, LatentShapeError
from latent_decoder.experiment import VideoSettings
from latent_decoder.settings import OutputSettings
from latent_decoder.worker import DecodeWorker

from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, Case, FamilyCase, assert_inspect_says,
                            assert_wrong_rules_caught, build_case as _build_case, capture, cli_frames, divide_by_std,
                            in_memory, postprocess, psnr, random_stats, save_model, scaling_factor_only,
                            store_and_decode, times_scaling_factor, tiny_hunyuan_vae, tiny_mochi_vae, write_experiment)


# --------------------------------------------------------------------------- tiny VAEs


def _wan22() -> Any:
    mean, std = random_stats(22, 48)
    return build_tiny_wan_vae(seed=22, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                              scale_factor_spatial=16, latents_mean=mean, latents_std=std)




def _cogvideox() -> Any:
    import torch
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(2)
    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=2, temporal_compression_ratio=4, scaling_factor=0.7,
    ).eval()




def _ltx(timestep_conditioning: bool) -> Callable[[], Any]:
    def build() -> Any:
        import torch
        from diffusers import AutoencoderKLLTXVideo

        torch.manual_seed(5)
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1), timestep_conditioning=timestep_conditioning, patch_size=1, patch_size_t=1,
            encoder_causal=True, decoder_causal=False, scaling_factor=0.9,
        ).eval()
        mean, std = random_stats(5, 8)
        with torch.no_grad():  # buffers of the model, saved with its weights (not in config.json)
            vae.latents_mean.copy_(torch.tensor(mean))
            vae.latents_std.copy_(torch.tensor(std))
        return vae

    return build


# --------------------------------------------------------------------------- pipeline decode paths


def _ref_wan(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """pipeline_wan.py, the lines before ``vae.decode``."""
    import torch

    latents = latent.to(vae.dtype)
    latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                               latents.dtype)
    latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device,
                                                                                                   latents.dtype)
    latents = latents / latents_std + latents_mean
    return vae.decode(latents, return_dict=False)[0]


def _ref_hunyuan(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """pipeline_hunyuan_video.py: ``latents.to(vae.dtype) / vae.config.scaling_factor``."""
    latents = latent.to(vae.dtype) / vae.config.scaling_factor
    return vae.decode(latents, return_dict=False)[0]


def _ref_cogvideox(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """CogVideoXPipeline.decode_latents itself (permute, ``1 / scaling_factor``, decode); first the
    pipeline's ``latents[:, additional_frames:]`` for CogVideoX 1.5's padded frames. The loop's
    latents are in ``prompt_embeds.dtype``, the VAE's when the pipeline is loaded in one dtype."""
    from diffusers import CogVideoXPipeline

    additional_frames = latent.shape[1] - ((video.frames - 1) // vae.config.temporal_compression_ratio + 1)
    pipe = SimpleNamespace(vae=vae, vae_scaling_factor_image=vae.config.scaling_factor)
    return CogVideoXPipeline.decode_latents(pipe, latent[:, additional_frames:].to(vae.dtype))


def _ref_mochi(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """pipeline_mochi.py, the lines before ``vae.decode``; its loop runs in ``prompt_embeds.dtype``
    (the VAE's, when the pipeline is loaded in one dtype)."""
    import torch

    latents = latent.to(vae.dtype)
    has_latents_mean = hasattr(vae.config, "latents_mean") and vae.config.latents_mean is not None
    has_latents_std = hasattr(vae.config, "latents_std") and vae.config.latents_std is not None
    assert has_latents_mean and has_latents_std
    latents_mean = torch.tensor(vae.config.latents_mean).view(1, 12, 1, 1, 1).to(latents.device, latents.dtype)
    latents_std = torch.tensor(vae.config.latents_std).view(1, 12, 1, 1, 1).to(latents.device, latents.dtype)
    latents = latents * latents_std / vae.config.scaling_factor + latents_mean
    return vae.decode(latents, return_dict=False)[0]


def _ref_ltx(vae: Any, latent: Any, video: VideoSettings, decode_timestep: float = 0.0,
             decode_noise_scale: float | None = None) -> Any:
    """LTXPipeline's own static helpers, then its cast to the prompt dtype (the VAE's) and its
    timestep-conditioning lines (``__call__`` defaults: decode_timestep=0.0, decode_noise_scale=None)."""
    import torch
    from diffusers import LTXPipeline
    from diffusers.utils.torch_utils import randn_tensor

    t, h, w = _ltx_grid(vae, video)
    latents = LTXPipeline._unpack_latents(latent, t, h, w, 1, 1)
    latents = LTXPipeline._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    latents = latents.to(vae.dtype)
    batch_size = latents.shape[0]
    if not vae.config.timestep_conditioning:
        timestep = None
    else:
        noise = randn_tensor(latents.shape, generator=torch.Generator().manual_seed(0), dtype=latents.dtype)
        decode_timestep = [decode_timestep] * batch_size
        if decode_noise_scale is None:
            decode_noise_scale = decode_timestep
        elif not isinstance(decode_noise_scale, list):
            decode_noise_scale = [decode_noise_scale] * batch_size
        timestep = torch.tensor(decode_timestep, dtype=latents.dtype)
        decode_noise_scale = torch.tensor(decode_noise_scale, dtype=latents.dtype)[:, None, None, None, None]
        latents = (1 - decode_noise_scale) * latents + decode_noise_scale * noise
    return vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]


def _ltx_grid(vae: Any, video: VideoSettings) -> tuple[int, int, int]:
    """LTXPipeline.__call__'s latent_num_frames / latent_height / latent_width."""
    return ((video.frames - 1) // vae.temporal_compression_ratio + 1, video.height // vae.spatial_compression_ratio,
            video.width // vae.spatial_compression_ratio)


def _ltx_packed(grid: np.ndarray) -> np.ndarray:
    """What LTXPipeline.prepare_latents hands the loop (and so ``callback_on_step_end``): packed tokens."""
    import torch
    from diffusers import LTXPipeline

    return LTXPipeline._pack_latents(torch.from_numpy(grid), 1, 1).numpy()


FAMILY_CASES = {
    "wan2.2": FamilyCase("wan", "AutoencoderKLWan", _wan22, (48, 2, 2, 3), VideoSettings(48, 32, FPS, 5), _ref_wan),
    "hunyuanvideo": FamilyCase("hunyuanvideo", "AutoencoderKLHunyuanVideo", lambda: tiny_hunyuan_vae(1), (4, 3, 4, 6),
                               VideoSettings(48, 32, FPS, 9), _ref_hunyuan),
    "cogvideox": FamilyCase("cogvideox", "AutoencoderKLCogVideoX", _cogvideox, (4, 3, 4, 6),
                            VideoSettings(48, 32, FPS, 9), _ref_cogvideox, store=lambda g: g.transpose(0, 2, 1, 3, 4)),
    "cogvideox1.5": FamilyCase("cogvideox", "AutoencoderKLCogVideoX", _cogvideox, (4, 3, 4, 6),
                               VideoSettings(48, 32, FPS, 9), _ref_cogvideox,
                               store=lambda g: g.transpose(0, 2, 1, 3, 4), extra_frames=1),
    "cogvideox-even": FamilyCase("cogvideox", "AutoencoderKLCogVideoX", _cogvideox, (4, 2, 4, 6),
                                 VideoSettings(48, 32, FPS, 8), _ref_cogvideox,
                                 store=lambda g: g.transpose(0, 2, 1, 3, 4)),
    "mochi": FamilyCase("mochi", "AutoencoderKLMochi", lambda: tiny_mochi_vae(4), (12, 2, 4, 6),
                        VideoSettings(48, 32, FPS, 7),
                        _ref_mochi),
    "ltx-video": FamilyCase("ltx-video", "AutoencoderKLLTXVideo", _ltx(False), (8, 3, 4, 6),
                            VideoSettings(24, 16, FPS, 9), _ref_ltx, store=_ltx_packed),
    "ltx-video-0.9.1": FamilyCase("ltx-video", "AutoencoderKLLTXVideo", _ltx(True), (8, 3, 4, 6),
                                  VideoSettings(24, 16, FPS, 9), _ref_ltx, store=_ltx_packed),
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("family_models")


def build_case(name: str, models_dir: Path) -> Case:
    return _build_case(name, FAMILY_CASES, models_dir)


@pytest.fixture(params=sorted(FAMILY_CASES))
def case(request: pytest.FixtureRequest, models_dir: Path) -> Case:
    return build_case(request.param, models_dir)


# --------------------------------------------------------------------------- parity


def test_cli_decode_matches_the_family_pipeline(case: Case, tmp_path: Path):
    frames, summary = cli_frames(case, tmp_path)
    assert frames.shape == case.reference().shape
    assert psnr(frames, case.reference()) >= PARITY_DB
    assert summary["model"]["vae_class"] == case.family.vae_class
    assert summary["model"]["family"] == case.family.family
    assert summary["model"]["mirrors"].startswith("diffusers.")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["wan2.2", "hunyuanvideo", "cogvideox", "mochi", "ltx-video-0.9.1"])
def test_low_precision_decode_is_the_pipelines_own(name: str, dtype: str, models_dir: Path):
    """``--dtype bfloat16/float16`` casts and de-normalises in the order the pipeline does, so the
    frames are the pipeline's own at that dtype, not the float32 ones rounded differently."""
    case = build_case(name, models_dir)
    frames = in_memory(case, dtype=dtype)
    assert psnr(frames, np.round(case.reference(dtype))) >= LOW_PRECISION_DB  # the pipeline's uint8 frames
    assert psnr(frames, case.reference("float32")) < LOW_PRECISION_DB + 40  # the dtype did change something


def test_output_frames_math_matches_the_decode(case: Case):
    """``Family.output_frames`` (used by ``inspect``) predicts the decoded shape."""
    import torch

    from latent_decoder.families import DecodeContext
    from latent_decoder.models import load_vae, resolve_model

    frames = in_memory(case)
    vae = load_vae(resolve_model(str(case.model_dir)), torch.device("cpu"), torch.float32)
    rule = families.FAMILIES[case.family.family]
    assert rule.output_frames(case.latent.shape, DecodeContext(vae, case.family.video)) == frames.shape[:3]
    v = case.family.video
    assert frames.shape[:3] == (v.frames, v.height, v.width)  # the video the latent was made for








# Likely mistakes per family (besides leaving the latent as it is): each still makes a video.
WRONG = {
    "wan": {"divide by std": divide_by_std},
    "hunyuanvideo": {"multiply by scaling_factor": times_scaling_factor},
    "cogvideox": {"multiply by scaling_factor": times_scaling_factor},
    "mochi": {"scaling_factor without mean/std": scaling_factor_only},
    "ltx-video": {"scaling_factor without the mean/std buffers": scaling_factor_only},
}


def test_negative_control_wrong_denormalization_is_caught(case: Case, monkeypatch: pytest.MonkeyPatch):
    assert_wrong_rules_caught(case, WRONG[case.family.family], monkeypatch)


def test_negative_control_wrong_unpacking_is_caught(monkeypatch: pytest.MonkeyPatch, models_dir: Path):
    """Reading LTX's packed tokens as if channels came first still makes a video, a wrong one."""
    case = build_case("ltx-video", models_dir)

    def channels_first(z: Any, ctx: Any) -> Any:
        return z.reshape(z.shape[0], z.shape[2], *_ltx_grid(ctx.vae, ctx.video))

    assert_wrong_rules_caught(case, {"channels first": channels_first}, monkeypatch, field="to_grid")


@pytest.mark.parametrize("condition_type, dropped", [("latent_concat", 4), ("token_replace", 0)])
def test_hunyuanvideo_i2v_drops_frames_as_its_pipeline(condition_type: str, dropped: int, models_dir: Path,
                                                       tmp_path: Path):
    """HunyuanVideoImageToVideoPipeline decodes like HunyuanVideo, then drops the first 4 frames
    with the transformer's ``image_condition_type`` ``latent_concat`` (``video[:, :, 4:]``)."""
    case = build_case("hunyuanvideo", models_dir)
    model = save_model(case.vae, tmp_path / "i2v", "HunyuanVideoImageToVideoPipeline")
    (model / "transformer").mkdir()
    (model / "transformer" / "config.json").write_text(json.dumps({"image_condition_type": condition_type}))
    v = case.family.video
    frames = decode_latent(case.latent, str(model), device="cpu", frames=v.frames, height=v.height, width=v.width)
    expected = case.reference()[dropped:]
    assert frames.shape == expected.shape
    assert psnr(frames, expected) >= PARITY_DB
    exp = write_experiment(tmp_path / "exp", model, v, case.latent)
    inspected = CliRunner().invoke(cli, ["inspect", str(exp)])
    assert "family      hunyuanvideo-i2v (HunyuanVideo I2V)" in inspected.output
    assert f"-> {v.frames - dropped} frames {v.width}x{v.height}" in inspected.output, inspected.output


def test_ltx_decode_timestep_comes_from_the_config_or_the_flag(models_dir: Path, tmp_path: Path):
    """LTX 0.9.1+ runs pass decode_timestep 0.05: read from video_settings (or a flag), it changes the
    frames exactly as the pipeline's argument does, and it is part of the settings (a change re-decodes)."""
    import torch

    case = build_case("ltx-video-0.9.1", models_dir)
    with torch.no_grad():
        expected = postprocess(_ref_ltx(case.vae, torch.from_numpy(case.latent), case.family.video,
                                        decode_timestep=0.05, decode_noise_scale=0.0))
    assert psnr(expected, case.reference()) < PARITY_DB  # the argument matters for this VAE
    frames, summary = cli_frames(case, tmp_path / "config", extra_config="  decode_timestep: 0.05\n"
                                 "  decode_noise_scale: 0.0\n")
    assert psnr(frames, expected) >= PARITY_DB
    flagged, _ = cli_frames(case, tmp_path / "flag", "--decode-timestep", "0.05", "--decode-noise-scale", "0")
    assert psnr(flagged, expected) >= PARITY_DB
    exp = tmp_path / "flag" / "exp"
    plan = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png", "--dry-run"])
    assert "settings changed" in plan.output, plan.output  # without the flag: the pipeline's default again
    noisy = [in_memory(case, decode_timestep=0.05, decode_noise_scale=0.5) for _ in range(2)]
    assert np.array_equal(noisy[0], noisy[1])  # a fixed noise seed: reproducible
    assert psnr(noisy[0], expected) < PARITY_DB  # and the noise is mixed in


# --------------------------------------------------------------------------- latents that do not fit


def _worker(case: Case, **video: int | None) -> DecodeWorker:
    v = {"frames": case.family.video.frames, "height": case.family.video.height, "width": case.family.video.width,
         **video}
    return DecodeWorker(OutputSettings(model=str(case.model_dir), **v), device="cpu")


def _rejected(case: Case, latent: np.ndarray, error: type[Exception] = LatentShapeError, **video: int | None) -> str:
    worker = _worker(case, **video)
    try:
        with pytest.raises(error) as info:
            worker.decode(latent, source="x.npy.gz")
    finally:
        worker.close()
    message = str(info.value)
    assert message.startswith("x.npy.gz: ") and "\n" not in message
    return message


def test_frames_first_latent_stored_channels_first_is_rejected(models_dir: Path):
    case = build_case("cogvideox", models_dir)
    wrong = np.ascontiguousarray(case.latent.transpose(0, 2, 1, 3, 4))  # [1, C, T, H, W] = [1, 4, 3, 4, 6]
    message = _rejected(case, wrong)
    assert "(1, 4, 3, 4, 6)" in message and "[1, T, 4, H, W]" in message  # both shapes
    assert "layout" in message and "[1, T, C, H, W]" in message  # the likely cause


def test_packed_latent_without_video_settings_is_rejected(models_dir: Path):
    case = build_case("ltx-video", models_dir)
    message = _rejected(case, case.latent, frames=None)
    assert "(1, 72, 8)" in message and "missing: frames" in message and "video_settings" in message


def test_packed_latent_with_other_video_settings_is_rejected(models_dir: Path):
    case = build_case("ltx-video", models_dir)
    message = _rejected(case, case.latent, frames=17)  # 5 latent frames: 120 tokens, not 72
    assert "(1, 72, 8)" in message and "[1, 120, 8]" in message and "does the config match" in message


def test_packed_latent_with_wrong_channels_is_rejected(models_dir: Path):
    case = build_case("ltx-video", models_dir)
    message = _rejected(case, np.zeros((1, 72, 16), np.float32))
    assert "16 channels" in message and "[1, S, 8]" in message


def test_unpacked_latent_for_a_packed_family_is_rejected(models_dir: Path):
    case = build_case("ltx-video", models_dir)
    message = _rejected(case, np.zeros((1, 8, 3, 4, 6), np.float32), error=LatentFileError)
    assert "5 dims" in message and "[1, S, C]" in message


def test_packed_latent_without_frames_fails_its_item_in_the_cli(models_dir: Path, tmp_path: Path):
    case = build_case("ltx-video", models_dir)
    exp = write_experiment(tmp_path / "exp", case.model_dir, case.family.video, case.latent)
    (exp / "configs" / "generation_config.yaml").write_text(f"model_settings: {{model_id: '{case.model_dir}'}}\n")
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png"])
    assert result.exit_code == 1, result.output
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    [failure] = summary["failures"]
    assert "missing: frames, height, width" in failure["error"]
    assert "step_000.npy.gz" in failure["error"]


def test_inspect_reads_packed_and_frames_first_latents(models_dir: Path, tmp_path: Path):
    """``inspect`` unpacks shapes by the family's layout and the config's video settings."""
    for name, words in {
        "ltx-video": ["family      ltx-video (LTX-Video), mirrors diffusers.LTXPipeline", "[1, S, 8] stored latents",
                      "[1, 72, 8] float16 x1 -> 9 frames 24x16"],
        "cogvideox1.5": ["family      cogvideox (CogVideoX), mirrors diffusers.CogVideoXPipeline", "[1, T, 4, H, W]",
                         "[1, 4, 4, 4, 6] float16 x1 -> 9 frames 48x32"],
    }.items():
        assert_inspect_says(build_case(name, models_dir), tmp_path / name, words)


# --------------------------------------------------------------------------- a real pipeline run


def test_tiny_ltx_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """A tiny LTXPipeline (random transformer, timestep-conditioned VAE) runs on CPU; its packed
    per-step latents, stored as experiments do, decode back to the pipeline's own output frames."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    vae = _ltx(True)()
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    ).eval()
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                       transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    video = VideoSettings(width=32, height=32, fps=FPS, frames=9)
    embeds = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = pipe(prompt_embeds=embeds, prompt_attention_mask=torch.ones(1, 8), height=video.height,
                   width=video.width, num_frames=video.frames, num_inference_steps=3, guidance_scale=1.0,
                   callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    assert [c.shape for c in captured] == [(1, 192, 8)] * 3  # packed: 3 x 8 x 8 tokens of 8 channels

    first, last, _ = store_and_decode(tmp_path, save_model(vae, tmp_path / "model"), captured, video)
    assert last.shape == expected.shape == (9, 32, 32, 3)
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected) < psnr(last, expected)


def test_tiny_cogvideox_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """The same with a tiny CogVideoXPipeline: frames-first ``[1, F, C, H, W]`` latents."""
    import torch
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    vae = _cogvideox()
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=6, sample_height=4, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16,
    ).eval()
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    video = VideoSettings(width=48, height=32, fps=FPS, frames=9)
    embeds = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = pipe(prompt_embeds=embeds, height=video.height, width=video.width, num_frames=video.frames,
                   num_inference_steps=3, guidance_scale=1.0, callback_on_step_end=capture(captured),
                   output_type="np", generator=torch.Generator().manual_seed(0))
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    assert [c.shape for c in captured] == [(1, 3, 4, 4, 6)] * 3  # frames first
    first, last, _ = store_and_decode(tmp_path, save_model(vae, tmp_path / "model"), captured, video)
    assert last.shape == expected.shape == (9, 32, 48, 3)
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected) < psnr(last, expected)
