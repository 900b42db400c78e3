"""Kandinsky 5 (T2V, I2V), Allegro and EasyAnimate latents decode exactly as their diffusers pipelines do.

Kandinsky 5 shares HunyuanVideo's VAE class but hands its loop channels-last ``[B, T, H, W, C]``
latents (``2C + 1`` channels with ``visual_cond``), so the same saved VAE must decode Kandinsky 5
latents when ``model_index.json`` names a Kandinsky 5 pipeline and HunyuanVideo latents when it names
HunyuanVideo's (or names nothing). Allegro's VAE decodes only tiled, frames first, and the pipeline
crops to ``num_frames``; EasyAnimate's Magvit VAE takes ``1 / scaling_factor * latents`` uncast.

Tiny Kandinsky 5 (T2V and I2V), Allegro and EasyAnimate pipelines also run end to end on CPU, and
their stored per-step latents decode back to their own output frames.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from latent_decoder import families
from latent_decoder.errors import LatentShapeError
from latent_decoder.experiment import VideoSettings
from latent_decoder.settings import OutputSettings
from latent_decoder.worker import DecodeWorker

from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, Case, FamilyCase, assert_inspect_says,
                            assert_run_decodes_to_its_own_frames, assert_wrong_rules_caught, build_case as _build_case,
                            capture, cli_frames, in_memory, postprocess, psnr, save_model, times_scaling_factor,
                            tiny_hunyuan_vae)

C = 4  # latent channels of the tiny VAEs

# --------------------------------------------------------------------------- tiny VAEs




def _allegro() -> Any:
    """Tiles are 24 x sample_size^2 pixels overlapping by 8 x 120 x 80 (fixed in the VAE): sample_size
    128 with 8x spatial compression gives 6 x 16 x 16 latent tiles at a stride of 4 x 1 x 6, the
    smallest that tiles at all (a zero latent stride divides by zero); 4 channels keep one tile ~2 s."""
    import torch
    from diffusers import AutoencoderKLAllegro

    torch.manual_seed(12)
    return AutoencoderKLAllegro(block_out_channels=(4, 4, 4, 4), latent_channels=C, layers_per_block=1,
                                norm_num_groups=1, sample_size=128, scaling_factor=0.6).eval()


def _magvit() -> Any:
    import torch
    from diffusers import AutoencoderKLMagvit

    torch.manual_seed(13)
    return AutoencoderKLMagvit(latent_channels=C, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                               norm_num_groups=4, scaling_factor=0.6).eval()


# --------------------------------------------------------------------------- pipeline decode paths


def _ref_kandinsky(vae: Any, latent: Any, video: VideoSettings, first_frames: bool = False) -> Any:
    """pipeline_kandinsky.py (``first_frames``: pipeline_kandinsky_i2v.py, whose ``normalize_first_frame``
    runs in the loop's dtype, the VAE's as the pipeline is loaded), the lines after the loop."""
    from diffusers import Kandinsky5I2VPipeline

    num_channels_latents, batch_size, num_videos_per_prompt = C, 1, 1
    temporal, spatial = vae.config.temporal_compression_ratio, vae.config.spatial_compression_ratio
    num_frames, height, width = video.frames, video.height, video.width
    latents = latent[:, :, :, :, :num_channels_latents]
    if first_frames:
        pipe = SimpleNamespace(adaptive_mean_std_normalization=Kandinsky5I2VPipeline.adaptive_mean_std_normalization)
        latents = Kandinsky5I2VPipeline.normalize_first_frame(pipe, latents.to(vae.dtype))
    latents = latents.to(vae.dtype)
    video = latents.reshape(batch_size, num_videos_per_prompt, (num_frames - 1) // temporal + 1, height // spatial,
                            width // spatial, num_channels_latents)
    video = video.permute(0, 1, 5, 2, 3, 4)
    video = video.reshape(batch_size * num_videos_per_prompt, num_channels_latents, (num_frames - 1) // temporal + 1,
                          height // spatial, width // spatial)
    video = video / vae.config.scaling_factor
    return vae.decode(video).sample


def _ref_kandinsky_i2v(vae: Any, latent: Any, video: VideoSettings) -> Any:
    return _ref_kandinsky(vae, latent, video, first_frames=True)


def _ref_hunyuan(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """pipeline_hunyuan_video.py: ``latents.to(vae.dtype) / vae.config.scaling_factor``."""
    return vae.decode(latent.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


def _ref_allegro(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """AllegroPipeline: ``latents.to(vae.dtype)``, its own ``decode_latents``, the crop; tiling on, as
    the pipeline's example does (the VAE cannot decode without it)."""
    from diffusers import AllegroPipeline

    vae.enable_tiling()
    frames = AllegroPipeline.decode_latents(SimpleNamespace(vae=vae), latent.to(vae.dtype))
    return frames[:, :, :video.frames, :video.height, :video.width]


def _ref_easyanimate(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """pipeline_easyanimate.py: ``1 / scaling_factor * latents``, no cast (the loop runs in the VAE's
    dtype as the pipeline is loaded)."""
    latents = latent.to(vae.dtype)
    latents = 1 / vae.config.scaling_factor * latents
    return vae.decode(latents, return_dict=False)[0]


def _channels_last(condition: bool, i2v: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """``[1, C, T, H, W]`` -> what the Kandinsky 5 loop hands ``callback_on_step_end``: channels last,
    with ``visual_cond`` the condition channels (random here: the rule must ignore them) and the mask.
    ``i2v``: the first 4 latent frames drift from the rest, as ``normalize_first_frame`` corrects."""
    def store(grid: np.ndarray) -> np.ndarray:
        if i2v:
            grid = grid.copy()
            grid[:, :, :4] = grid[:, :, :4] * 1.6 + 0.4
        z = grid.transpose(0, 2, 3, 4, 1)
        if not condition:
            return z
        rng = np.random.default_rng(7)
        mask = np.zeros(z.shape[:-1] + (1,), np.float32)
        mask[:, :1] = float(i2v)
        cond = rng.standard_normal(z.shape).astype(np.float16).astype(np.float32)
        return np.concatenate([z, cond, mask], axis=-1)

    return store


def _hunyuan() -> Any:
    """HunyuanVideo's VAE with C latent channels: Kandinsky 5's (and HunyuanVideo's, for comparison)."""
    return tiny_hunyuan_vae(11, C)


CASES = {
    "kandinsky5": FamilyCase("kandinsky5", "AutoencoderKLHunyuanVideo", _hunyuan, (C, 3, 2, 6),
                             VideoSettings(48, 16, FPS, 9), _ref_kandinsky, store=_channels_last(True),
                             pipeline="Kandinsky5T2VPipeline"),
    "kandinsky5-no-cond": FamilyCase("kandinsky5", "AutoencoderKLHunyuanVideo", _hunyuan, (C, 3, 2, 6),
                                     VideoSettings(48, 16, FPS, 9), _ref_kandinsky, store=_channels_last(False),
                                     pipeline="Kandinsky5T2VPipeline"),
    "kandinsky5-i2v": FamilyCase("kandinsky5-i2v", "AutoencoderKLHunyuanVideo", _hunyuan, (C, 6, 2, 6),
                                 VideoSettings(48, 16, FPS, 21), _ref_kandinsky_i2v,
                                 store=_channels_last(True, i2v=True), pipeline="Kandinsky5I2VPipeline"),
    "allegro": FamilyCase("allegro", "AutoencoderKLAllegro", _allegro, (C, 6, 16, 16),
                          VideoSettings(128, 128, FPS, 21), _ref_allegro, pipeline="AllegroPipeline"),
    "easyanimate": FamilyCase("easyanimate", "AutoencoderKLMagvit", _magvit, (C, 3, 4, 6),
                              VideoSettings(48, 32, FPS, 9), _ref_easyanimate, pipeline="EasyAnimatePipeline"),
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("family_models")


def build_case(name: str, models_dir: Path) -> Case:
    return _build_case(name, CASES, models_dir)


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, models_dir: Path) -> Case:
    return build_case(request.param, models_dir)


# --------------------------------------------------------------------------- parity


def test_cli_decode_matches_the_family_pipeline(case: Case, tmp_path: Path):
    frames, summary = cli_frames(case, tmp_path)
    assert frames.shape == case.reference().shape
    v = case.family.video
    assert frames.shape[:3] == (v.frames, v.height, v.width)  # Allegro: 24 decoded frames cropped to 21
    assert psnr(frames, case.reference()) >= PARITY_DB
    assert summary["model"]["vae_class"] == case.family.vae_class
    assert summary["model"]["family"] == case.family.family
    assert summary["model"]["mirrors"].startswith("diffusers.")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["kandinsky5", "kandinsky5-i2v", "allegro", "easyanimate"])
def test_low_precision_decode_is_the_pipelines_own(name: str, dtype: str, models_dir: Path):
    case = build_case(name, models_dir)
    frames = in_memory(case, dtype=dtype)
    assert psnr(frames, np.round(case.reference(dtype))) >= LOW_PRECISION_DB
    assert psnr(frames, case.reference("float32")) < LOW_PRECISION_DB + 40  # the dtype did change something


def test_output_frames_math_matches_the_decode(models_dir: Path):
    """``Family.output_frames`` (``inspect``) predicts the decoded shape; the VAEs' own output sizes."""
    import torch

    from latent_decoder.families import DecodeContext

    for name in ("kandinsky5-i2v", "allegro", "easyanimate"):
        case = build_case(name, models_dir)
        rule = families.FAMILIES[case.family.family]
        v = case.family.video
        assert rule.output_frames(case.latent.shape, DecodeContext(case.vae, v)) == (v.frames, v.height, v.width)
        assert case.reference().shape[:3] == (v.frames, v.height, v.width)
    allegro = build_case("allegro", models_dir)
    with torch.no_grad():  # uncropped (the reference turned tiling on), 4 frames per latent frame
        assert allegro.vae.decode(torch.zeros(1, C, 6, 16, 16)).sample.shape == (1, 24, 3, 128, 128)


@pytest.mark.parametrize("num_frames", [21, 22, 24, 40, 88, 89])
def test_allegro_frame_math_follows_prepare_latents(num_frames: int, models_dir: Path):
    """The latent frame count ``prepare_latents`` makes (even vs odd ``num_frames``) decodes, cropped,
    to exactly ``num_frames``; without video settings to every decoded frame."""
    import torch
    from diffusers import AllegroPipeline

    from latent_decoder.families import DecodeContext

    vae = build_case("allegro", models_dir).vae
    pipe = SimpleNamespace(vae_scale_factor_temporal=4, vae_scale_factor_spatial=8,
                           scheduler=SimpleNamespace(init_noise_sigma=1.0))
    latents = AllegroPipeline.prepare_latents(pipe, 1, C, num_frames, 128, 128, torch.float32, "cpu", None)
    t = latents.shape[2]
    rule = families.FAMILIES["allegro"]
    assert rule.output_frames(latents.shape, DecodeContext(vae, VideoSettings(128, 128, FPS, num_frames))) == (
        num_frames, 128, 128)
    assert rule.output_frames(latents.shape, DecodeContext(vae, VideoSettings())) == (4 * t, 128, 128)




def _reshaped_not_permuted(z: Any, ctx: Any) -> Any:
    """Reading the channels-last memory as if it were channels first."""
    b, t, h, w, _ = z.shape
    return z[..., :C].reshape(b, C, t, h, w)


def _condition_channels(z: Any, ctx: Any) -> Any:
    return z[..., C:2 * C].permute(0, 4, 1, 2, 3)


def _without_first_frame_normalization(z: Any, ctx: Any) -> Any:
    return z[..., :C].permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize("name", ["kandinsky5", "kandinsky5-i2v", "allegro", "easyanimate"])
def test_negative_control_wrong_denormalization_is_caught(name: str, models_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    assert_wrong_rules_caught(build_case(name, models_dir), {"multiply by scaling_factor": times_scaling_factor},
                              monkeypatch)


def test_negative_control_wrong_layout_is_caught(models_dir: Path, monkeypatch: pytest.MonkeyPatch):
    assert_wrong_rules_caught(build_case("kandinsky5", models_dir),
                              {"reshape instead of permute": _reshaped_not_permuted,
                               "the condition channels": _condition_channels}, monkeypatch, field="to_grid")


def test_negative_control_i2v_without_first_frame_normalization_is_caught(models_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """Kandinsky 5 I2V latents decoded with the T2V rule miss ``normalize_first_frame``."""
    assert_wrong_rules_caught(build_case("kandinsky5-i2v", models_dir),
                              {"T2V rule": _without_first_frame_normalization}, monkeypatch, field="to_grid")


def test_i2v_without_reference_frames_decodes_unnormalised(models_dir: Path):
    """With 2-4 latent frames the I2V pipeline's ``normalize_first_frame`` has no reference frames and
    makes NaN (with one it returns a tuple): such latents are decoded without it, as T2V ones."""
    import torch
    from diffusers import Kandinsky5I2VPipeline

    from latent_decoder.families.kandinsky5 import normalize_first_frames

    z = torch.randn(1, 3, 2, 6, C)
    pipe = SimpleNamespace(adaptive_mean_std_normalization=Kandinsky5I2VPipeline.adaptive_mean_std_normalization)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: std() of the empty reference
        assert torch.isnan(Kandinsky5I2VPipeline.normalize_first_frame(pipe, z)).all()
    assert torch.equal(normalize_first_frames(z), z)
    case = build_case("kandinsky5", models_dir)
    i2v_dir = save_model(case.vae, models_dir / "i2v-short", "Kandinsky5I2VPipeline")
    frames = in_memory(dataclasses.replace(case, model_dir=i2v_dir))
    assert psnr(frames, case.reference()) >= PARITY_DB


# --------------------------------------------------------------------------- one VAE, two layouts


def _channels_first(latent: np.ndarray) -> np.ndarray:
    """A Kandinsky 5 latent's first C channels as HunyuanVideo's ``[1, C, T, H, W]``."""
    return np.ascontiguousarray(latent[..., :C].transpose(0, 4, 1, 2, 3))


def _rejected(model_dir: Path, video: VideoSettings, latent: np.ndarray) -> str:
    worker = DecodeWorker(OutputSettings(model=str(model_dir), frames=video.frames, height=video.height,
                                         width=video.width), device="cpu")
    try:
        with pytest.raises(LatentShapeError) as info:
            worker.decode(latent, source="x.npy.gz")
    finally:
        worker.close()
    message = str(info.value)
    assert message.startswith("x.npy.gz: ") and "\n" not in message
    return message


def test_the_pipeline_decides_the_layout_of_the_shared_vae(models_dir: Path, tmp_path: Path):
    """The same saved HunyuanVideo VAE: Kandinsky 5 latents under Kandinsky5T2VPipeline, the same
    values channels first under HunyuanVideoPipeline or a bare VAE, give the same frames."""
    import torch

    case = build_case("kandinsky5", models_dir)
    hunyuan = dataclasses.replace(case, model_dir=save_model(case.vae, tmp_path / "hunyuan", "HunyuanVideoPipeline"),
                                  latent=_channels_first(case.latent))
    bare = dataclasses.replace(hunyuan, model_dir=save_model(case.vae, tmp_path / "bare"))
    with torch.no_grad():
        expected = postprocess(_ref_hunyuan(case.vae, torch.from_numpy(hunyuan.latent), case.family.video))
    assert psnr(expected, case.reference()) >= PARITY_DB  # both pipelines: the latent / scaling_factor
    for other, reason in ((hunyuan, "pipeline HunyuanVideoPipeline in "), (bare, "VAE class AutoencoderKLHunyuanVideo")):
        frames, summary = cli_frames(other, tmp_path / other.model_dir.name)
        assert summary["model"]["family"] == "hunyuanvideo"
        assert summary["model"]["family_rule"].startswith(reason)
        assert psnr(frames, expected) >= PARITY_DB


def test_a_latent_in_the_other_pipelines_layout_is_rejected(models_dir: Path, tmp_path: Path):
    case = build_case("kandinsky5-no-cond", models_dir)
    video = case.family.video
    bare = save_model(case.vae, tmp_path / "bare")
    hunyuan = save_model(case.vae, tmp_path / "hunyuan", "HunyuanVideoPipeline")
    for model_dir in (bare, hunyuan):
        message = _rejected(model_dir, video, case.latent)  # [1, T, H, W, C] = [1, 3, 2, 6, 4]
        assert "(1, 3, 2, 6, 4)" in message and "[1, 4, T, H, W]" in message  # both shapes
        assert "axis 4 has 4" in message and "another layout" in message  # the likely cause
    with_cond = build_case("kandinsky5", models_dir).latent  # 2C + 1 channels
    message = _rejected(bare, video, with_cond)
    assert "(1, 3, 2, 6, 9)" in message and "[1, 4, T, H, W]" in message
    message = _rejected(case.model_dir, video, _channels_first(case.latent))  # HunyuanVideo's layout
    assert "(1, 4, 3, 2, 6)" in message and "[1, T, H, W, 4]" in message


def test_family_flag_overrides_the_pipeline(models_dir: Path, tmp_path: Path):
    case = build_case("kandinsky5", models_dir)
    bare = dataclasses.replace(case, model_dir=save_model(case.vae, tmp_path / "bare"))
    frames, summary = cli_frames(bare, tmp_path / "decode", "--family", "kandinsky5")
    assert summary["model"]["family"] == "kandinsky5" and summary["model"]["family_rule"] == "--family kandinsky5"
    assert psnr(frames, case.reference()) >= PARITY_DB


@pytest.mark.parametrize("name, words", [
    ("kandinsky5", ["family      kandinsky5 (Kandinsky 5), mirrors diffusers.Kandinsky5T2VPipeline",
                    "rule        pipeline Kandinsky5T2VPipeline in ", "[1, T, H, W, 4] stored latents",
                    "[1, 3, 2, 6, 9] float16 x1 -> 9 frames 48x16"]),
    ("kandinsky5-i2v", ["family      kandinsky5-i2v (Kandinsky 5 I2V), mirrors diffusers.Kandinsky5I2VPipeline",
                        "rule        pipeline Kandinsky5I2VPipeline in ", "note: the first 4 latent frames",
                        "[1, 6, 2, 6, 9] float16 x1 -> 21 frames 48x16"]),
    ("allegro", ["family      allegro (Allegro), mirrors diffusers.AllegroPipeline",
                 "rule        pipeline AllegroPipeline in ", "[1, 4, 6, 16, 16] float16 x1 -> 21 frames 128x128"]),
    ("easyanimate", ["family      easyanimate (EasyAnimate), mirrors diffusers.EasyAnimatePipeline",
                     "rule        pipeline EasyAnimatePipeline in ", "[1, 4, 3, 4, 6] float16 x1 -> 9 frames 48x32"]),
])
def test_inspect_names_the_family_and_why(name: str, words: list[str], models_dir: Path, tmp_path: Path):
    assert_inspect_says(build_case(name, models_dir), tmp_path / name, words + ["model_index.json"])


# --------------------------------------------------------------------------- real pipeline runs




@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_tiny_kandinsky5_pipeline_run_decodes_to_its_own_frames(i2v: bool, tmp_path: Path):
    """Tiny Kandinsky5T2VPipeline / Kandinsky5I2VPipeline (random transformer with ``visual_cond``,
    text encoders replaced by embeddings); I2V with 5 latent frames, so ``normalize_first_frame`` has
    a reference frame."""
    import torch
    from diffusers import (FlowMatchEulerDiscreteScheduler, Kandinsky5I2VPipeline, Kandinsky5T2VPipeline,
                           Kandinsky5Transformer3DModel)

    vae = tiny_hunyuan_vae(11, C)
    torch.manual_seed(0)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=C, out_visual_dim=C, in_text_dim=16, in_text_dim2=8, time_dim=16, model_dim=16, ff_dim=32,
        num_text_blocks=1, num_visual_blocks=1, axes_dims=(2, 2, 4), visual_cond=True, patch_size=(1, 2, 2),
    ).eval()
    cls = Kandinsky5I2VPipeline if i2v else Kandinsky5T2VPipeline
    pipe = cls(transformer=transformer, vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
               tokenizer_2=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0))
    pipe.set_progress_bar_config(disable=True)
    video = VideoSettings(width=48, height=32, fps=FPS, frames=17 if i2v else 9)
    g = torch.Generator().manual_seed(1)
    image = {"image": torch.rand(1, 3, 32, 48, generator=g)} if i2v else {}
    captured: list[np.ndarray] = []
    with torch.inference_mode():
        out = pipe(prompt_embeds_qwen=torch.randn(1, 8, 16, generator=g), prompt_embeds_clip=torch.randn(1, 8, generator=g),
                   prompt_cu_seqlens=torch.tensor([0, 8], dtype=torch.int32), height=video.height, width=video.width,
                   num_frames=video.frames, num_inference_steps=3, guidance_scale=1.0,
                   callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0), **image)
    t = 5 if i2v else 3
    assert [c.shape for c in captured] == [(1, t, 4, 6, 2 * C + 1)] * 3  # channels last, with the condition
    assert_run_decodes_to_its_own_frames(tmp_path, vae, cls.__name__, captured, video, out,
                                      "kandinsky5-i2v" if i2v else "kandinsky5")


def test_tiny_allegro_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """A tiny AllegroPipeline (tiling on, as it must be): 21 frames, 6 latent frames, 24 decoded."""
    import torch
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, DDIMScheduler

    vae = _allegro()
    vae.enable_tiling()
    torch.manual_seed(0)
    transformer = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=C, out_channels=C, num_layers=1,
        cross_attention_dim=24, sample_width=8, sample_height=8, sample_frames=8, caption_channels=24,
    ).eval()
    pipe = AllegroPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                           scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    video = VideoSettings(width=128, height=128, fps=FPS, frames=21)
    captured: list[np.ndarray] = []
    with torch.inference_mode():
        out = pipe(prompt_embeds=torch.randn(1, 8, 24, generator=torch.Generator().manual_seed(1)),
                   prompt_attention_mask=torch.ones(1, 8), height=video.height, width=video.width,
                   num_frames=video.frames, num_inference_steps=2, guidance_scale=1.0,
                   callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in captured] == [(1, C, 6, 16, 16)] * 2
    assert_run_decodes_to_its_own_frames(tmp_path, vae, "AllegroPipeline", captured, video, out, "allegro")


def test_tiny_easyanimate_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    import torch
    from diffusers import EasyAnimatePipeline, EasyAnimateTransformer3DModel, FlowMatchEulerDiscreteScheduler

    vae = _magvit()
    torch.manual_seed(0)
    transformer = EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=C, out_channels=C, time_embed_dim=2,
        text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, patch_size=2,
    ).eval()
    pipe = EasyAnimatePipeline(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer,
                               scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    video = VideoSettings(width=48, height=32, fps=FPS, frames=9)
    captured: list[np.ndarray] = []
    with torch.inference_mode():
        out = pipe(prompt_embeds=torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1)),
                   prompt_attention_mask=torch.ones(1, 8), height=video.height, width=video.width,
                   num_frames=video.frames, num_inference_steps=3, guidance_scale=1.0,
                   callback_on_step_end=capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in captured] == [(1, C, 3, 4, 6)] * 3
    assert_run_decodes_to_its_own_frames(tmp_path, vae, "EasyAnimatePipeline", captured, video, out, "easyanimate")
