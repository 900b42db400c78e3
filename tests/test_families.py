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

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from latent_decoder import decode_latent, models
from latent_decoder.cli import cli
from latent_decoder.demo import build_tiny_wan_vae, save_npy_gz, write_config
from latent_decoder.errors import LatentFileError, LatentShapeError
from latent_decoder.experiment import VideoSettings
from latent_decoder.settings import OutputSettings
from latent_decoder.worker import DecodeWorker

PARITY_DB = 40.0
FPS = 8.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _stats(seed: int, n: int) -> tuple[list[float], list[float]]:
    """Clearly non-trivial per-channel statistics, so a missing or wrong de-normalisation shows."""
    rng = np.random.default_rng(seed)
    return [float(x) for x in rng.normal(0.0, 1.0, n)], [float(x) for x in rng.uniform(1.5, 4.0, n)]


def _postprocess(video: Any) -> np.ndarray:
    """The pipelines' ``video_processor.postprocess_video(video, output_type="np")``, in 0..255."""
    from diffusers.video_processor import VideoProcessor

    return np.asarray(VideoProcessor().postprocess_video(video.float(), output_type="np")[0], np.float64) * 255.0


# --------------------------------------------------------------------------- tiny VAEs


def _wan22() -> Any:
    mean, std = _stats(22, 48)
    return build_tiny_wan_vae(seed=22, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                              scale_factor_spatial=16, latents_mean=mean, latents_std=std)


def _hunyuan() -> Any:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(1)
    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True,
    ).eval()


def _cogvideox() -> Any:
    import torch
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(2)
    return AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=2, temporal_compression_ratio=4, scaling_factor=0.7,
    ).eval()


def _mochi() -> Any:
    import torch
    from diffusers import AutoencoderKLMochi

    mean, std = _stats(4, 12)
    torch.manual_seed(4)
    return AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
        latents_mean=mean, latents_std=std, scaling_factor=0.8,
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
        mean, std = _stats(5, 8)
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
    pipeline's ``latents[:, additional_frames:]`` for CogVideoX 1.5's padded frames."""
    from diffusers import CogVideoXPipeline

    additional_frames = latent.shape[1] - ((video.frames - 1) // vae.config.temporal_compression_ratio + 1)
    pipe = SimpleNamespace(vae=vae, vae_scaling_factor_image=vae.config.scaling_factor)
    return CogVideoXPipeline.decode_latents(pipe, latent[:, additional_frames:])


def _ref_mochi(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """pipeline_mochi.py, the lines before ``vae.decode``."""
    import torch

    latents = latent
    has_latents_mean = hasattr(vae.config, "latents_mean") and vae.config.latents_mean is not None
    has_latents_std = hasattr(vae.config, "latents_std") and vae.config.latents_std is not None
    assert has_latents_mean and has_latents_std
    latents_mean = torch.tensor(vae.config.latents_mean).view(1, 12, 1, 1, 1).to(latents.device, latents.dtype)
    latents_std = torch.tensor(vae.config.latents_std).view(1, 12, 1, 1, 1).to(latents.device, latents.dtype)
    latents = latents * latents_std / vae.config.scaling_factor + latents_mean
    return vae.decode(latents, return_dict=False)[0]


def _ref_ltx(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """LTXPipeline's own static helpers, then its timestep-conditioning lines at the ``__call__``
    defaults (decode_timestep=0.0, decode_noise_scale=None)."""
    import torch
    from diffusers import LTXPipeline
    from diffusers.utils.torch_utils import randn_tensor

    t, h, w = _ltx_grid(vae, video)
    latents = LTXPipeline._unpack_latents(latent, t, h, w, 1, 1)
    latents = LTXPipeline._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    decode_timestep, decode_noise_scale, batch_size = 0.0, None, latents.shape[0]
    if not vae.config.timestep_conditioning:
        timestep = None
    else:
        noise = randn_tensor(latents.shape, generator=torch.Generator().manual_seed(0), dtype=latents.dtype)
        decode_timestep = [decode_timestep] * batch_size
        decode_noise_scale = decode_timestep if decode_noise_scale is None else decode_noise_scale
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


@dataclasses.dataclass(frozen=True)
class Family:
    """One family's test case: its tiny VAE, a stored latent's shape and the video it stands for."""

    class_name: str
    build: Callable[[], Any]
    grid: tuple[int, int, int, int]  # C, T, H, W of the unpacked latent
    video: VideoSettings
    reference: Callable[[Any, Any, VideoSettings], Any]
    store: Callable[[np.ndarray], np.ndarray] = lambda g: g  # [1,C,T,H,W] -> the pipeline's layout
    extra_frames: int = 0  # CogVideoX 1.5: padded latent frames the pipeline drops before decoding


FAMILY_CASES = {
    "wan2.2": Family("AutoencoderKLWan", _wan22, (48, 2, 2, 3), VideoSettings(48, 32, FPS, 5), _ref_wan),
    "hunyuanvideo": Family("AutoencoderKLHunyuanVideo", _hunyuan, (4, 3, 4, 6), VideoSettings(48, 32, FPS, 9),
                           _ref_hunyuan),
    "cogvideox": Family("AutoencoderKLCogVideoX", _cogvideox, (4, 3, 4, 6), VideoSettings(48, 32, FPS, 9),
                        _ref_cogvideox, store=lambda g: g.transpose(0, 2, 1, 3, 4)),
    "cogvideox1.5": Family("AutoencoderKLCogVideoX", _cogvideox, (4, 3, 4, 6), VideoSettings(48, 32, FPS, 9),
                           _ref_cogvideox, store=lambda g: g.transpose(0, 2, 1, 3, 4), extra_frames=1),
    "cogvideox-even": Family("AutoencoderKLCogVideoX", _cogvideox, (4, 2, 4, 6), VideoSettings(48, 32, FPS, 8),
                             _ref_cogvideox, store=lambda g: g.transpose(0, 2, 1, 3, 4)),
    "mochi": Family("AutoencoderKLMochi", _mochi, (12, 2, 4, 6), VideoSettings(48, 32, FPS, 7), _ref_mochi),
    "ltx-video": Family("AutoencoderKLLTXVideo", _ltx(False), (8, 3, 4, 6), VideoSettings(24, 16, FPS, 9),
                        _ref_ltx, store=_ltx_packed),
    "ltx-video-0.9.1": Family("AutoencoderKLLTXVideo", _ltx(True), (8, 3, 4, 6), VideoSettings(24, 16, FPS, 9),
                              _ref_ltx, store=_ltx_packed),
}


@dataclasses.dataclass
class Case:
    family: Family
    model_dir: Path
    latent: np.ndarray  # as stored: the pipeline's layout, float16 values
    expected: np.ndarray  # the pipeline's frames, [F, H, W, 3] in 0..255


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("family_models")


_CASES: dict[str, Case] = {}


def build_case(name: str, models_dir: Path) -> Case:
    """The family's tiny VAE saved in ``model/vae``, a stored latent and the pipeline's frames (built once)."""
    import torch

    if name not in _CASES:
        family = FAMILY_CASES[name]
        vae = family.build()
        model_dir = models_dir / name
        vae.save_pretrained(model_dir / "vae")
        c, t, h, w = family.grid
        rng = np.random.default_rng(sorted(FAMILY_CASES).index(name))
        grid = rng.standard_normal((1, c, t + family.extra_frames, h, w)).astype(np.float16).astype(np.float32)
        stored = family.store(grid)
        with torch.no_grad():
            video = family.reference(vae, torch.from_numpy(stored), family.video)
        _CASES[name] = Case(family, model_dir, stored, _postprocess(video))
    return _CASES[name]


@pytest.fixture(params=sorted(FAMILY_CASES))
def case(request: pytest.FixtureRequest, models_dir: Path) -> Case:
    return build_case(request.param, models_dir)


def _experiment(root: Path, model: Path | str, video: VideoSettings, latent: np.ndarray) -> Path:
    write_config(root, str(model), video.width, video.height, video.frames, FPS)
    save_npy_gz(root / "latents" / "prompt_000" / "vid_001" / "step_000.npy.gz", latent.astype(np.float16))
    return root


def _png_frames(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("frame_*.png"))
    assert files, f"no frames in {folder}"
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _in_memory(case: Case, latent: np.ndarray | None = None) -> np.ndarray:
    v = case.family.video
    return decode_latent(case.latent if latent is None else latent, str(case.model_dir), device="cpu",
                         frames=v.frames, height=v.height, width=v.width)


# --------------------------------------------------------------------------- parity


def test_cli_decode_matches_the_family_pipeline(case: Case, tmp_path: Path):
    exp = _experiment(tmp_path / "exp", case.model_dir, case.family.video, case.latent)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    frames = _png_frames(exp / "latents_videos" / "prompt_000" / "vid_001" / "step_000")
    assert frames.shape == case.expected.shape
    assert psnr(frames, case.expected) >= PARITY_DB
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    assert summary["model"]["vae_class"] == case.family.class_name
    assert summary["model"]["family"] == models.FAMILIES[case.family.class_name].family
    assert summary["model"]["mirrors"].startswith("diffusers.")


def test_output_frames_math_matches_the_decode(case: Case):
    """``FamilyRule.output_frames`` (used by ``inspect``) predicts the decoded shape."""
    import torch

    frames = _in_memory(case)
    vae, rule = models.load_vae(models.resolve_model(str(case.model_dir)), torch.device("cpu"), torch.float32)
    assert rule.output_frames(case.latent.shape, vae, case.family.video) == frames.shape[:3]
    v = case.family.video
    assert frames.shape[:3] == (v.frames, v.height, v.width)  # the video the latent was made for


def _times_scaling_factor(z: Any, vae: Any) -> Any:
    return z * vae.config.scaling_factor


def _scaling_factor_only(z: Any, vae: Any) -> Any:
    return z / vae.config.scaling_factor


def _divide_by_std(z: Any, vae: Any) -> Any:
    import torch

    c = vae.config
    shape = (1, c.z_dim, 1, 1, 1)
    return z / torch.tensor(c.latents_std).view(shape) + torch.tensor(c.latents_mean).view(shape)


# Likely mistakes per VAE class (besides leaving the latent as it is): each still makes a video.
WRONG = {
    "AutoencoderKLWan": {"divide by std": _divide_by_std},
    "AutoencoderKLHunyuanVideo": {"multiply by scaling_factor": _times_scaling_factor},
    "AutoencoderKLCogVideoX": {"multiply by scaling_factor": _times_scaling_factor},
    "AutoencoderKLMochi": {"scaling_factor without mean/std": _scaling_factor_only},
    "AutoencoderKLLTXVideo": {"scaling_factor without the mean/std buffers": _scaling_factor_only},
}


def test_negative_control_wrong_denormalization_is_caught(case: Case, monkeypatch: pytest.MonkeyPatch):
    rule = models.FAMILIES[case.family.class_name]
    for name, wrong in {"none": lambda z, vae: z, **WRONG[case.family.class_name]}.items():
        monkeypatch.setitem(models.FAMILIES, case.family.class_name, dataclasses.replace(rule, denormalize=wrong))
        assert psnr(_in_memory(case), case.expected) < PARITY_DB, name


def test_negative_control_wrong_unpacking_is_caught(monkeypatch: pytest.MonkeyPatch, models_dir: Path):
    """Reading LTX's packed tokens as if channels came first still makes a video, a wrong one."""
    case = build_case("ltx-video", models_dir)
    rule = models.FAMILIES["AutoencoderKLLTXVideo"]

    def channels_first(z: Any, vae: Any, video: VideoSettings) -> Any:
        return z.reshape(z.shape[0], z.shape[2], *_ltx_grid(vae, video))

    monkeypatch.setitem(models.FAMILIES, "AutoencoderKLLTXVideo", dataclasses.replace(rule, to_grid=channels_first))
    assert psnr(_in_memory(case), case.expected) < PARITY_DB


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
    exp = _experiment(tmp_path / "exp", case.model_dir, case.family.video, case.latent)
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
        "ltx-video": ["family      ltx-video, mirrors diffusers.LTXPipeline", "[1, S, 8] stored latents",
                      "[1, 72, 8] float16 x1 -> 9 frames 24x16"],
        "cogvideox1.5": ["family      cogvideox, mirrors diffusers.CogVideoXPipeline", "[1, T, 4, H, W]",
                         "[1, 4, 4, 4, 6] float16 x1 -> 9 frames 48x32"],
    }.items():
        case = build_case(name, models_dir)
        exp = _experiment(tmp_path / name, case.model_dir, case.family.video, case.latent)
        result = CliRunner().invoke(cli, ["inspect", str(exp)])
        assert result.exit_code == 0, result.output
        for word in words:
            assert word in result.output, result.output


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
                   callback_on_step_end=_capture(captured), output_type="np",
                   generator=torch.Generator().manual_seed(0))
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    assert [c.shape for c in captured] == [(1, 192, 8)] * 3  # packed: 3 x 8 x 8 tokens of 8 channels

    first, last = _store_and_decode(tmp_path, vae, captured, video)
    assert last.shape == expected.shape == (9, 32, 32, 3)
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected) < psnr(last, expected)


def _capture(store: list[np.ndarray]) -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` keeping every step's latent, as the experiments' generation scripts do."""
    def on_step_end(_pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        store.append(kwargs["latents"].detach().float().numpy())
        return {}

    return on_step_end


def _store_and_decode(tmp_path: Path, vae: Any, captured: list[np.ndarray],
                      video: VideoSettings) -> tuple[np.ndarray, np.ndarray]:
    """Save the VAE and the per-step latents as an experiment, decode it with the CLI to PNG; returns
    the first and last steps' frames."""
    model_dir = tmp_path / "model"
    vae.save_pretrained(model_dir / "vae")
    exp = tmp_path / "exp"
    write_config(exp, str(model_dir), video.width, video.height, video.frames, FPS)
    for i, latent in enumerate(captured):
        save_npy_gz(exp / "latents" / "prompt_000" / "vid_001" / f"step_{i:03d}.npy.gz", latent)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    out_dir = exp / "latents_videos" / "prompt_000" / "vid_001"
    return _png_frames(out_dir / "step_000"), _png_frames(out_dir / f"step_{len(captured) - 1:03d}")


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
                   num_inference_steps=3, guidance_scale=1.0, callback_on_step_end=_capture(captured),
                   output_type="np", generator=torch.Generator().manual_seed(0))
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    assert [c.shape for c in captured] == [(1, 3, 4, 4, 6)] * 3  # frames first
    first, last = _store_and_decode(tmp_path, vae, captured, video)
    assert last.shape == expected.shape == (9, 32, 48, 3)
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected) < psnr(last, expected)
