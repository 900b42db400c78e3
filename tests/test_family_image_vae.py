"""Image VAEs applied per frame (AnimateDiff, AnimateDiff-SDXL, PIA, Latte, Stable Video Diffusion,
ModelScope text-to-video, I2VGen-XL) decode exactly as their diffusers pipelines decode them.

The references are the pipelines' own ``decode_latents`` (bound to a namespace holding the tiny VAE)
at their ``__call__``'s default ``decode_chunk_size``, around the lines that come before it
(AnimateDiff-SDXL's ``upcast_vae``, I2VGen-XL's reshape of the scheduler's step output); tiny real
``AnimateDiffPipeline`` and ``StableVideoDiffusionPipeline`` runs on CPU decode back to their own
frames. SVD's temporal decoder mixes the frames of one ``vae.decode`` call, so the chunk size is a
setting of the run: from the config, ``--decode-chunk-size``, the library, and in the fingerprint.
"""
from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from latent_decoder import decode_latent
from latent_decoder.cli import cli
from latent_decoder.errors import ExperimentError, UnsupportedModelError
from latent_decoder.experiment import Experiment, VideoSettings
from latent_decoder.families import FAMILIES, PipelineFacts, detect
from latent_decoder.families.image_vae import chunked
from latent_decoder.previews.factors import published_map
from latent_decoder.settings import OutputSettings
from latent_decoder.synthetic import save_npy_gz, write_config

from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, Case, FamilyCase, assert_inspect_says,
                            assert_run_decodes_to_its_own_frames, assert_wrong_rules_caught,
                            build_case as _build_case, capture, cli_frames, in_memory, png_frames, postprocess, psnr,
                            save_model, store_and_decode, times_scaling_factor, torch_dtype, write_experiment)

SD_SCALING, SDXL_SCALING = 0.18215, 0.13025  # the released VAEs' scaling factors


# --------------------------------------------------------------------------- tiny VAEs


def tiny_image_vae(seed: int, scaling_factor: float = SD_SCALING, force_upcast: bool = True) -> Any:
    """A tiny ``AutoencoderKL`` (2x spatial, mid-block attention as in SD's VAE)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=32, scaling_factor=scaling_factor, force_upcast=force_upcast,
    ).eval()


def tiny_temporal_vae(seed: int) -> Any:
    """A tiny ``AutoencoderKLTemporalDecoder`` (its group norms take multiples of 32 channels)."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    return AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                        latent_channels=4, layers_per_block=1).eval()


# --------------------------------------------------------------------------- the pipelines' decode lines


def _pipe(vae: Any) -> SimpleNamespace:
    return SimpleNamespace(vae=vae)


def _ref_animatediff(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """AnimateDiffPipeline: ``decode_latents(latents, decode_chunk_size=16)`` on the loop's latents."""
    from diffusers import AnimateDiffPipeline

    return AnimateDiffPipeline.decode_latents(_pipe(vae), latent.to(vae.dtype), 16)


def _ref_pia(vae: Any, latent: Any, video: VideoSettings) -> Any:
    from diffusers import PIAPipeline

    return PIAPipeline.decode_latents(_pipe(vae), latent.to(vae.dtype))


def _sdxl_decode_lines(vae: Any, latent: Any, upcast_vae: Any, decode: Any) -> Any:
    """What the SDXL pipelines write around their decode: ``needs_upcasting``, ``upcast_vae(pipe)``,
    the cast to ``post_quant_conv``'s dtype, ``decode(pipe, latents)``, the VAE back to float16."""
    import torch

    pipe, latents = _pipe(vae), latent.to(vae.dtype)
    needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
    if needs_upcasting:
        with pytest.warns(FutureWarning, match="upcast_vae"):
            upcast_vae(pipe)
        latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
    decoded = decode(pipe, latents)
    if needs_upcasting:
        vae.to(dtype=torch.float16)
    return decoded


def _ref_animatediff_sdxl(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """AnimateDiffSDXLPipeline's lines after its loop (``needs_upcasting``, the cast to
    ``post_quant_conv``'s dtype, ``decode_latents``, the VAE back to float16) with
    StableDiffusionXLPipeline's ``upcast_vae``: the pipeline's own fails in diffusers 0.42.1
    (``test_animatediff_sdxls_own_upcast_fails_in_this_diffusers``)."""
    from diffusers import AnimateDiffSDXLPipeline, StableDiffusionXLPipeline

    return _sdxl_decode_lines(vae, latent, StableDiffusionXLPipeline.upcast_vae, AnimateDiffSDXLPipeline.decode_latents)


def _ref_latte(vae: Any, latent: Any, video: VideoSettings) -> Any:
    from diffusers import LattePipeline

    return LattePipeline.decode_latents(_pipe(vae), latent.to(vae.dtype), video.frames, decode_chunk_size=14)


def _ref_svd(chunk: int | None = None) -> Any:
    """StableVideoDiffusionPipeline: ``decode_chunk_size`` defaults to ``num_frames``."""
    def reference(vae: Any, latent: Any, video: VideoSettings) -> Any:
        from diffusers import StableVideoDiffusionPipeline

        frames = latent.shape[1]
        return StableVideoDiffusionPipeline.decode_latents(_pipe(vae), latent.to(vae.dtype), frames, chunk or frames)

    return reference


def _ref_text_to_video_sd(vae: Any, latent: Any, video: VideoSettings) -> Any:
    from diffusers import TextToVideoSDPipeline

    return TextToVideoSDPipeline.decode_latents(_pipe(vae), latent.to(vae.dtype))


def _ref_i2vgen_xl(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """I2VGenXLPipeline: the loop's reshape of the scheduler's step output ``[B*F, C, H, W]``
    (batch 1), then ``decode_latents(latents, decode_chunk_size=1)``."""
    from diffusers import I2VGenXLPipeline

    frames, channel, height, width = latent.shape
    latents = latent[None, :].reshape(1, frames, channel, height, width).permute(0, 2, 1, 3, 4)
    return I2VGenXLPipeline.decode_latents(_pipe(vae), latents.to(vae.dtype), decode_chunk_size=1)


def _ref_text_to_video_zero(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """TextToVideoZeroPipeline: ``decode_latents`` on the legacy callback's ``[F, C, H, W]`` (its frames
    come back as numpy ``[F, H, W, 3]`` in [0, 1]; here as the ``[1, 3, F, H, W]`` in [-1, 1] that
    ``postprocess`` takes)."""
    import torch
    from diffusers import TextToVideoZeroPipeline

    image = TextToVideoZeroPipeline.decode_latents(_pipe(vae), latent.to(vae.dtype))
    return torch.from_numpy(image).permute(3, 0, 1, 2)[None] * 2 - 1


def _ref_text_to_video_zero_sdxl(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """TextToVideoZeroSDXLPipeline.__call__'s lines after its loop (they are not a method of their own):
    ``needs_upcasting``, its ``upcast_vae``, the cast to ``post_quant_conv``'s dtype, ``vae.decode(latents /
    scaling_factor)`` on every frame, the VAE back to float16."""
    from diffusers import TextToVideoZeroSDXLPipeline

    def decode(pipe: Any, latents: Any) -> Any:
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]

    image = _sdxl_decode_lines(vae, latent, TextToVideoZeroSDXLPipeline.upcast_vae, decode)
    return image.permute(1, 0, 2, 3)[None]


def _frames_first(grid: np.ndarray) -> np.ndarray:
    return grid.transpose(0, 2, 1, 3, 4)


def _step_output(grid: np.ndarray) -> np.ndarray:
    """What I2VGen-XL's scheduler step returns for one video: ``[F, C, H, W]``."""
    return grid[0].transpose(1, 0, 2, 3)


def _video(frames: int) -> VideoSettings:
    return VideoSettings(width=16, height=16, fps=FPS, frames=frames)


SD_VAE, SVD_VAE = "AutoencoderKL", "AutoencoderKLTemporalDecoder"
CASES = {
    # 18 frames: more than AnimateDiff's 16 a call, Latte's 14
    "animatediff": FamilyCase("animatediff", SD_VAE, partial(tiny_image_vae, 1), (4, 18, 8, 8), _video(18),
                              _ref_animatediff, pipeline="AnimateDiffPipeline"),
    "pia": FamilyCase("animatediff", SD_VAE, partial(tiny_image_vae, 2), (4, 3, 8, 8), _video(3), _ref_pia,
                      pipeline="PIAPipeline"),
    "animatediff-sdxl": FamilyCase("animatediff-sdxl", SD_VAE, partial(tiny_image_vae, 3, SDXL_SCALING),
                                   (4, 4, 8, 8), _video(4), _ref_animatediff_sdxl, pipeline="AnimateDiffSDXLPipeline"),
    "latte": FamilyCase("latte", SD_VAE, partial(tiny_image_vae, 4), (4, 16, 8, 8), _video(16), _ref_latte,
                        pipeline="LattePipeline"),
    "svd": FamilyCase("svd", SVD_VAE, partial(tiny_temporal_vae, 5), (4, 10, 8, 8), _video(10), _ref_svd(),
                      store=_frames_first, pipeline="StableVideoDiffusionPipeline"),
    "text-to-video-sd": FamilyCase("text-to-video-sd", SD_VAE, partial(tiny_image_vae, 6), (4, 4, 8, 8), _video(4),
                                   _ref_text_to_video_sd, pipeline="TextToVideoSDPipeline"),
    "i2vgen-xl": FamilyCase("i2vgen-xl", SD_VAE, partial(tiny_image_vae, 7), (4, 3, 8, 8), _video(3), _ref_i2vgen_xl,
                            store=_step_output, pipeline="I2VGenXLPipeline"),
    "text-to-video-zero": FamilyCase("text-to-video-zero", SD_VAE, partial(tiny_image_vae, 8), (4, 3, 8, 8), _video(3),
                                     _ref_text_to_video_zero, store=_step_output, pipeline="TextToVideoZeroPipeline"),
    "text-to-video-zero-sdxl": FamilyCase("text-to-video-zero-sdxl", SD_VAE, partial(tiny_image_vae, 9, SDXL_SCALING),
                                          (4, 3, 8, 8), _video(3), _ref_text_to_video_zero_sdxl, store=_step_output,
                                          pipeline="TextToVideoZeroSDXLPipeline"),
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image_vae_models")


def build_case(name: str, models_dir: Path) -> Case:
    return _build_case(name, CASES, models_dir)


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, models_dir: Path) -> Case:
    return build_case(request.param, models_dir)


def _frames(case: Case, reference: Any, dtype: str = "float32") -> np.ndarray:
    """The pipeline's frames by ``reference`` (other call arguments than the case's own)."""
    import torch

    vae = copy.deepcopy(case.vae).to(torch_dtype(dtype))
    with torch.no_grad():
        return postprocess(reference(vae, torch.from_numpy(case.latent), case.family.video))


# --------------------------------------------------------------------------- parity


def test_cli_decode_matches_the_pipeline(case: Case, tmp_path: Path):
    frames, summary = cli_frames(case, tmp_path)
    assert frames.shape == case.reference().shape == (case.family.video.frames, 16, 16, 3)
    assert psnr(frames, case.reference()) >= PARITY_DB
    assert summary["model"]["vae_class"] == case.family.vae_class
    assert summary["model"]["family"] == case.family.family
    assert summary["model"]["family_rule"].startswith(f"pipeline {case.family.pipeline} in ")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["animatediff", "animatediff-sdxl", "latte", "svd", "i2vgen-xl",
                                  "text-to-video-zero-sdxl"])
def test_low_precision_decode_is_the_pipelines_own(name: str, dtype: str, models_dir: Path):
    """The loop's latents are in the VAE's dtype: cast, ``1 / scaling_factor *`` in it, decode (the SDXL
    VAE upcast at float16)."""
    case = build_case(name, models_dir)
    frames = in_memory(case, dtype=dtype)
    assert psnr(frames, np.round(case.reference(dtype))) >= LOW_PRECISION_DB
    assert psnr(frames, case.reference("float32")) < LOW_PRECISION_DB + 40  # the dtype did change something


def test_sdxl_force_upcast_decodes_in_float32_and_only_at_float16(models_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """At float16 a ``force_upcast`` VAE scales and decodes in float32, as the pipeline: a VAE whose
    activations overflow float16 (what the flag is for: the SDXL VAE's) gives the pipeline's finite
    frames, where the same decode in float16 (AnimateDiff's rule) is NaN; the worker's VAE is float16
    again after each decode. ``force_upcast: false`` (the fp16-fix VAE's) decodes in float16."""
    import torch

    from latent_decoder import families
    from latent_decoder.errors import DecodeError
    from latent_decoder.worker import DecodeWorker

    case = build_case("animatediff-sdxl", models_dir)
    vae = tiny_image_vae(3, SDXL_SCALING)
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)  # activations far beyond float16's 65504
    overflowing = save_model(vae, models_dir / "sdxl-overflowing", "AnimateDiffSDXLPipeline")
    with torch.no_grad():
        expected = postprocess(_ref_animatediff_sdxl(copy.deepcopy(vae).half(), torch.from_numpy(case.latent), None))
    assert np.isfinite(expected).all()

    worker = DecodeWorker(OutputSettings(model=str(overflowing), dtype="float16"), device="cpu")
    assert psnr(worker.decode(case.latent), np.round(expected)) >= LOW_PRECISION_DB
    assert {p.dtype for p in worker.vae.parameters()} == {torch.float16}
    monkeypatch.setitem(families.FAMILIES, "animatediff-sdxl", FAMILIES["animatediff"])  # no upcast
    with pytest.raises(DecodeError, match="NaN/Inf values in float16"):
        decode_latent(case.latent, str(overflowing), device="cpu", dtype="float16")
    all_half = in_memory(case, dtype="float16")
    monkeypatch.undo()

    fixed = save_model(tiny_image_vae(3, SDXL_SCALING, force_upcast=False), models_dir / "sdxl-fp16-fix",
                       "AnimateDiffSDXLPipeline")
    assert np.array_equal(decode_latent(case.latent, str(fixed), device="cpu", dtype="float16"), all_half)
    assert not np.array_equal(in_memory(case, dtype="float16"), all_half)


def test_animatediff_sdxls_own_upcast_fails_in_this_diffusers(models_dir: Path):
    """Why the rule upcasts the whole VAE: AnimateDiffSDXLPipeline.upcast_vae leaves the mid-block in
    float16 and the decoder hands its output to the float32 up-blocks as it is. When a diffusers
    release fixes this, the rule should follow the pipeline's own upcast again."""
    import torch
    from diffusers import AnimateDiffSDXLPipeline

    case = build_case("animatediff-sdxl", models_dir)
    pipe = _pipe(copy.deepcopy(case.vae).to(torch.float16))
    AnimateDiffSDXLPipeline.upcast_vae(pipe)
    with pytest.raises(RuntimeError, match="should be the same"), torch.no_grad():
        AnimateDiffSDXLPipeline.decode_latents(pipe, torch.from_numpy(case.latent).half())


# --------------------------------------------------------------------------- negative controls


def _reshape_without_permute(z: Any, ctx: Any) -> Any:
    """The frames taken into the batch without moving the channel axis out of the way first."""
    b, c, f, h, w = z.shape
    extra = {"num_frames": f} if ctx.vae.__class__.__name__ == SVD_VAE else {}
    video = ctx.vae.decode(z.reshape(b * f, c, h, w), **extra, return_dict=False)[0]
    return video.reshape(b, f, *video.shape[1:]).permute(0, 2, 1, 3, 4)


def test_negative_control_forgetting_the_scaling_factor_is_caught(case: Case, monkeypatch: pytest.MonkeyPatch):
    assert_wrong_rules_caught(case, {"times scaling factor": times_scaling_factor}, monkeypatch)


@pytest.mark.parametrize("name", ["animatediff", "svd"])
def test_negative_control_wrong_frame_order_is_caught(name: str, monkeypatch: pytest.MonkeyPatch, models_dir: Path):
    assert_wrong_rules_caught(build_case(name, models_dir), {"reshape without permute": _reshape_without_permute},
                              monkeypatch, field="decode")


def test_negative_control_svd_chunk_sizes_other_than_the_pipelines_are_caught(monkeypatch: pytest.MonkeyPatch,
                                                                            models_dir: Path):
    """The temporal decoder mixes the frames of one call: one frame a call (an image VAE's rule) or the
    diffusers example's 8 give other frames than the pipeline's default, all 10 in one call."""
    case = build_case("svd", models_dir)
    assert_wrong_rules_caught(case, {"one frame a call": chunked(1, num_frames=True),
                                     "8 frames a call": chunked(8, num_frames=True)}, monkeypatch, field="decode")


# --------------------------------------------------------------------------- decode_chunk_size


def test_svd_decode_chunk_size_from_config_flag_and_library(models_dir: Path, tmp_path: Path):
    """A run made with ``decode_chunk_size=4`` decodes to its own frames when the config, the flag or the
    library says 4; the flag wins over the config."""
    case = build_case("svd", models_dir)
    by_four = _frames(case, _ref_svd(4))
    assert psnr(by_four, case.reference()) < PARITY_DB

    by_config = cli_frames(case, tmp_path / "config", extra_config="  decode_chunk_size: 4\n")[0]
    assert psnr(by_config, by_four) >= PARITY_DB
    by_flag = cli_frames(case, tmp_path / "flag", "--decode-chunk-size", "4")[0]
    assert psnr(by_flag, by_four) >= PARITY_DB
    assert psnr(in_memory(case, decode_chunk_size=4), by_four) >= PARITY_DB
    flag_wins = cli_frames(case, tmp_path / "both", "--decode-chunk-size", "10",
                           extra_config="  decode_chunk_size: 4\n")[0]
    assert psnr(flag_wins, case.reference()) >= PARITY_DB


def test_decode_chunk_size_is_in_the_fingerprint_and_a_change_decodes_again(models_dir: Path, tmp_path: Path):
    case = build_case("svd", models_dir)
    assert "decode_chunk_size" not in OutputSettings(model="m").fingerprint()  # earlier runs' steps stay done
    assert OutputSettings(model="m", decode_chunk_size=4).fingerprint()["decode_chunk_size"] == 4

    exp = write_experiment(tmp_path / "exp", case.model_dir, case.family.video, case.latent)
    args = ["decode", str(exp), "--device", "cpu", "--format", "png"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    out = exp / "latents_videos" / "prompt_000" / "vid_001" / "step_000"
    default = png_frames(out)
    again = CliRunner().invoke(cli, [*args, "--decode-chunk-size", "4"])
    assert again.exit_code == 0, again.output
    assert "1 already done" not in again.output
    assert psnr(png_frames(out), _frames(case, _ref_svd(4))) >= PARITY_DB
    assert psnr(png_frames(out), default) < PARITY_DB


def _chunk_config(root: Path, value: str) -> Path:
    exp = root / "exp"
    write_config(exp, "m", 16, 16, 4, FPS)
    config = exp / "configs" / "generation_config.yaml"
    config.write_text(config.read_text() + f"  decode_chunk_size: {value}\n")
    save_npy_gz(exp / "latents" / "prompt_000" / "vid_001" / "step_000.npy.gz", np.zeros((1, 4, 4, 8, 8), np.float16))
    return exp


@pytest.mark.parametrize("value", ["2.5", "true", "eight"])
def test_a_config_decode_chunk_size_must_be_a_whole_number(value: str, tmp_path: Path):
    with pytest.raises(ExperimentError, match="video_settings.decode_chunk_size must be a whole number"):
        Experiment.load(_chunk_config(tmp_path, value))


def test_a_decode_chunk_size_below_one_is_refused(tmp_path: Path):
    exp = _chunk_config(tmp_path, "8")
    assert Experiment.load(exp).decode_arguments == {"decode_chunk_size": 8}
    flag = CliRunner().invoke(cli, ["decode", str(exp), "--decode-chunk-size", "0"])
    assert flag.exit_code == 2 and "--decode-chunk-size" in flag.output
    config = exp / "configs" / "generation_config.yaml"
    config.write_text(config.read_text().replace("decode_chunk_size: 8", "decode_chunk_size: 0"))
    result = CliRunner().invoke(cli, ["decode", str(exp)])
    assert result.exit_code == 2 and "decode_chunk_size must be at least 1, got 0" in result.output


# --------------------------------------------------------------------------- detection


def test_detection_picks_the_pipelines_family():
    def picked(vae_class: str, pipeline: str | None, override: str | None = None) -> str:
        return detect(vae_class, PipelineFacts(class_name=pipeline), override).family.name

    for pipeline in ("AnimateDiffPipeline", "AnimateDiffControlNetPipeline", "AnimateDiffSparseControlNetPipeline",
                     "AnimateDiffVideoToVideoPipeline", "AnimateDiffVideoToVideoControlNetPipeline", "PIAPipeline",
                     "StableDiffusionPipeline"):
        assert picked(SD_VAE, pipeline) == "animatediff", pipeline
    assert picked(SD_VAE, "AnimateDiffSDXLPipeline") == "animatediff-sdxl"
    assert picked(SD_VAE, "StableDiffusionXLPipeline") == "animatediff-sdxl"
    assert picked(SD_VAE, "LattePipeline") == "latte"
    assert picked(SD_VAE, "TextToVideoSDPipeline") == "text-to-video-sd"
    assert picked(SD_VAE, "VideoToVideoSDPipeline") == "text-to-video-sd"
    assert picked(SD_VAE, "I2VGenXLPipeline") == "i2vgen-xl"
    assert picked(SD_VAE, "TextToVideoZeroPipeline") == "text-to-video-zero"
    assert picked(SD_VAE, "TextToVideoZeroSDXLPipeline") == "text-to-video-zero-sdxl"
    assert picked(SD_VAE, "StableDiffusionPipeline", override="text-to-video-zero") == "text-to-video-zero"
    assert picked(SVD_VAE, "StableVideoDiffusionPipeline") == "svd"
    # a bare VAE folder: the VAE class's rule (no longer "VAE class ... is not supported yet")
    bare = detect(SD_VAE, PipelineFacts())
    assert bare.family.name == "animatediff" and "no model_index.json" in bare.reason
    assert detect(SVD_VAE, PipelineFacts()).family.name == "svd"
    assert picked(SD_VAE, "AnimateDiffPipeline", override="latte") == "latte"
    with pytest.raises(UnsupportedModelError, match="--family svd decodes AutoencoderKLTemporalDecoder latents"):
        picked(SD_VAE, "AnimateDiffPipeline", override="svd")


@pytest.mark.parametrize("name", ["text-to-video-zero", "text-to-video-zero-sdxl"])
def test_text_to_video_zeros_first_frame_steps_decode_to_one_frame(name: str, models_dir: Path):
    """Text2Video-Zero's first two backward passes denoise the first frame alone: their callback latents
    are ``[1, C, H, W]``, one frame, decoded as the pipeline's decode lines decode it; a plain Stable
    Diffusion folder decodes the same with ``--family``."""
    import torch

    case = build_case(name, models_dir)
    first = case.latent[:1]
    with torch.no_grad():
        expected = postprocess(case.family.reference(copy.deepcopy(case.vae), torch.from_numpy(first), case.family.video))
    frames = decode_latent(first, str(case.model_dir), device="cpu")
    assert frames.shape == (1, 16, 16, 3)
    assert psnr(frames, expected) >= PARITY_DB
    sd_folder = save_model(case.vae, models_dir / f"{name}-as-sd", "StableDiffusionPipeline")
    assert psnr(decode_latent(case.latent, str(sd_folder), device="cpu", family=name), case.reference()) >= PARITY_DB


def test_bare_vae_folders_and_family_override_decode(models_dir: Path):
    """A bare ``AutoencoderKL`` folder takes AnimateDiff's rule, a bare temporal decoder SVD's; ``--family``
    chooses another rule on the same folder (Latte's chunks give AnimateDiff's frames: per frame)."""
    for name in ("animatediff", "svd"):
        case = build_case(name, models_dir)
        bare = save_model(case.vae, models_dir / f"bare-{name}")
        assert psnr(decode_latent(case.latent, str(bare), device="cpu"), case.reference()) >= PARITY_DB
    case = build_case("animatediff", models_dir)
    bare = models_dir / "bare-animatediff"
    assert psnr(decode_latent(case.latent, str(bare), device="cpu", family="latte"), case.reference()) >= PARITY_DB
    i2v = build_case("i2vgen-xl", models_dir)  # frames-first: only I2VGen-XL's rule reads it
    assert psnr(decode_latent(i2v.latent, str(save_model(i2v.vae, models_dir / "bare-i2v")), device="cpu",
                              family="i2vgen-xl"), i2v.reference()) >= PARITY_DB


def test_inspect_names_the_family_the_rule_and_the_chunk_size(models_dir: Path, tmp_path: Path):
    for name, words in {
        "animatediff": ["family      animatediff (AnimateDiff), mirrors diffusers.AnimateDiffPipeline",
                        "decode args decode_chunk_size pipeline default", "[1, 4, T, H, W] stored latents",
                        "[1, 4, 18, 8, 8] float16 x1 -> 18 frames 16x16"],
        "animatediff-sdxl": ["family      animatediff-sdxl (AnimateDiff-SDXL)", "note: with --dtype float16"],
        "svd": ["family      svd (Stable Video Diffusion), mirrors diffusers.StableVideoDiffusionPipeline",
                "note: the temporal decoder's frames depend on decode_chunk_size", "[1, T, 4, H, W] stored latents",
                "[1, 10, 4, 8, 8] float16 x1 -> 10 frames 16x16"],
        "i2vgen-xl": ["family      i2vgen-xl (I2VGen-XL)", "note: the pipeline has no step callback",
                      "[3, 4, 8, 8] float16 x1 -> 3 frames 16x16"],
        "text-to-video-zero-sdxl": ["family      text-to-video-zero-sdxl (Text2Video-Zero SDXL), mirrors "
                                    "diffusers.TextToVideoZeroSDXLPipeline",
                                    "note: the legacy callback's latents are the video's frames in the batch",
                                    "[3, 4, 8, 8] float16 x1 -> 3 frames 16x16"],
    }.items():
        case = build_case(name, models_dir)
        output = assert_inspect_says(case, tmp_path / name, words + [f"rule        pipeline {case.family.pipeline} in "])
        assert "not in the family table" not in output


# --------------------------------------------------------------------------- previews


def _preview_experiment(model: Path | str, latent: np.ndarray, frames: int, root: Path) -> Path:
    exp = root / "exp"
    write_config(exp, str(model), 16, 16, frames, FPS)
    save_npy_gz(exp / "latents" / "prompt_000" / "vid_001" / "step_000.npy.gz", latent.astype(np.float16))
    return exp


def _preview(model: Path | str, latent: np.ndarray, frames: int, root: Path, *args: str) -> tuple[np.ndarray, dict]:
    exp = _preview_experiment(model, latent, frames, root)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--format", "png", *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    summary = json.loads((exp / "latents_previews" / "decode_summary.json").read_text())
    return png_frames(exp / "latents_previews" / "prompt_000" / "vid_001" / "step_000"), summary["model"]


def _projected(grid: np.ndarray, space: str, spatial: int) -> np.ndarray:
    """``[1, C, T, H, W]`` through the published factors, written out here, ``spatial`` pixels a latent pixel."""
    preview = published_map(space)
    x = grid[0].astype(np.float64).transpose(1, 2, 3, 0)
    rgb = np.round(np.clip((x @ preview.factors.astype(np.float64) + preview.bias + 1) / 2, 0, 1) * 255)
    return rgb.repeat(spatial, axis=1).repeat(spatial, axis=2)


FRAMES_FIRST = ("svd", "i2vgen-xl", "text-to-video-zero", "text-to-video-zero-sdxl")


@pytest.mark.parametrize("name, space", [("animatediff", "sd1.5"), ("animatediff-sdxl", "sdxl"), ("svd", "sd1.5"),
                                         ("i2vgen-xl", "sd1.5"), ("latte", "sd1.5"), ("text-to-video-zero", "sd1.5"),
                                         ("text-to-video-zero-sdxl", "sdxl")])
def test_preview_uses_the_sd_latent_factors_in_the_pipelines_layout(name: str, space: str, models_dir: Path,
                                                                    tmp_path: Path):
    """The published SD 1.5 / SDXL factors (ComfyUI's ``SD15``/``SDXL``; SVD's latents are SD 1.5's), one
    video frame per latent frame, on the pipeline's layout (SVD, I2VGen-XL and Text2Video-Zero frames first); the pipeline
    named by ``model_index.json`` picks SD 1.5 or SDXL for the same VAE class."""
    case = build_case(name, models_dir)
    frames, model = _preview(case.model_dir, case.latent, case.family.video.frames, tmp_path)
    grid = case.latent
    if name in FRAMES_FIRST:
        grid = (grid[None] if grid.ndim == 4 else grid).transpose(0, 2, 1, 3, 4)
    assert frames.shape == case.reference().shape
    assert np.abs(frames.astype(int) - _projected(grid, space, 2)).max() <= 1
    assert model["factors"] == "published"


def test_preview_without_a_local_config_goes_by_the_model_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No config.json on this machine: the model id names the space and its published 8x geometry; an
    SD 1.5 checkpoint's id names nothing, and 4 channels fit SD 1.5 and SDXL: ``--family`` says which."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    grid = np.random.default_rng(8).standard_normal((1, 4, 3, 2, 2)).astype(np.float16)
    for model_id, args, space, latent in (
            ("guoyww/animatediff-motion-adapter-sdxl-beta", (), "sdxl", grid),
            ("emilianJR/epiCRealism", ("--family", "sd1.5"), "sd1.5", grid),
            ("stabilityai/stable-video-diffusion-img2vid-xt", (), "svd", grid.transpose(0, 2, 1, 3, 4))):
        frames, model = _preview(model_id, latent, 3, tmp_path / model_id.replace("/", "_"), *args)
        assert model["family"] == space
        assert np.abs(frames.astype(int) - _projected(grid, space if space != "svd" else "sd1.5", 8)).max() <= 1
    exp = _preview_experiment("emilianJR/epiCRealism", grid, 3, tmp_path / "ambiguous")
    result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview"])
    assert result.exit_code == 2 and "sd1.5 or sdxl" in result.output and "--family" in result.output


# --------------------------------------------------------------------------- real pipeline runs


def test_tiny_animatediff_pipeline_run_decodes_to_its_own_frames(tmp_path: Path):
    """A tiny AnimateDiffPipeline (random UNet and motion adapter, ``prompt_embeds`` instead of a text
    encoder) runs 18 frames on CPU; its per-step latents decode back to its own frames."""
    import torch
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=2,
    )
    adapter = MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_norm_num_groups=2,
                            motion_num_attention_heads=2)
    vae = tiny_image_vae(9)
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, motion_adapter=adapter,
                               scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    video = _video(18)
    embeds = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = pipe(prompt_embeds=embeds, num_frames=video.frames, height=video.height, width=video.width,
                   num_inference_steps=3, guidance_scale=1.0, output_type="np", callback_on_step_end=capture(captured),
                   generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in captured] == [(1, 4, 18, 8, 8)] * 3
    assert_run_decodes_to_its_own_frames(tmp_path, vae, "AnimateDiffPipeline", captured, video, out, "animatediff")


def test_tiny_text_to_video_zero_run_decodes_to_its_own_frames(tmp_path: Path):
    """A tiny TextToVideoZeroPipeline (random UNet; its ``encode_prompt`` hands fixed embeddings, there
    being no tokenizer to load here) runs 4 frames on CPU with its legacy ``callback``: the steps of its
    first backward passes hold the first frame alone, the last ones every frame, frames first; each
    decodes to one frame or to the video, the last step to the pipeline's own frames."""
    import torch
    from diffusers import DDIMScheduler, TextToVideoZeroPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, norm_num_groups=2,
    )
    vae = tiny_image_vae(10)
    pipe = TextToVideoZeroPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                   scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.randn(2, 1, 4, 8, generator=torch.Generator().manual_seed(1))
    pipe.encode_prompt = lambda *args, **kwargs: (embeds[0], embeds[1])
    captured: list[np.ndarray] = []
    video = _video(4)
    with torch.inference_mode():
        out = pipe(prompt="a prompt", video_length=video.frames, height=video.height, width=video.width,
                   num_inference_steps=5, guidance_scale=2.0, t0=1, t1=2, output_type="np",
                   callback=lambda i, t, latents: captured.append(latents.float().cpu().numpy().copy()),
                   generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in captured] == [(1, 4, 8, 8)] * 3 + [(4, 4, 8, 8)] * 3
    expected = np.asarray(out.images, np.float64) * 255.0
    model = save_model(vae, tmp_path / "model", "TextToVideoZeroPipeline")
    first, last, summary = store_and_decode(tmp_path, model, captured, video)
    assert summary["model"]["family"] == "text-to-video-zero"
    assert first.shape == (1, 16, 16, 3) and last.shape == expected.shape == (4, 16, 16, 3)
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected[:1]) < psnr(last[:1], expected[:1])


def test_tiny_stable_video_diffusion_run_decodes_to_its_own_frames(tmp_path: Path):
    """A tiny StableVideoDiffusionPipeline (random UNet and image encoder, a random image) at its default
    ``decode_chunk_size``: its frames-first per-step latents decode back to its own frames."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32,
    )
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=1, num_attention_heads=4, image_size=32,
        intermediate_size=37, patch_size=1)).eval()
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                                       steps_offset=1, timestep_spacing="leading", timestep_type="continuous",
                                       interpolation_type="linear", use_karras_sigmas=True)
    vae = tiny_temporal_vae(10)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessor(crop_size=32, size=32))
    pipe.set_progress_bar_config(disable=True)
    captured: list[np.ndarray] = []
    video = VideoSettings(width=32, height=32, fps=FPS, frames=6)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = pipe(image, num_frames=video.frames, height=video.height, width=video.width, num_inference_steps=2,
                   min_guidance_scale=1.0, max_guidance_scale=1.0, output_type="np",
                   callback_on_step_end=capture(captured), generator=torch.Generator().manual_seed(0))
    assert [c.shape for c in captured] == [(1, 6, 4, 16, 16)] * 2
    assert_run_decodes_to_its_own_frames(tmp_path, vae, "StableVideoDiffusionPipeline", captured, video, out, "svd")


def test_out_of_memory_on_a_vae_without_tiling_says_out_of_memory(models_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """SVD's temporal decoder has no tiling to retry with (diffusers raises NotImplementedError for it):
    the step fails with the out-of-memory error, not with that."""
    import torch

    from latent_decoder.worker import DecodeWorker

    def decode(self: Any, latent: Any, source: str = "<array>", condition: Any = None) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(DecodeWorker, "decode", decode)
    case = build_case("svd", models_dir)
    exp = write_experiment(tmp_path / "exp", case.model_dir, case.family.video, case.latent)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    [error] = [failure["error"] for failure in summary["failures"]]
    assert "out of memory" in error.lower() and "Tiling" not in error, error
