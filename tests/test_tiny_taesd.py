"""``--decoder tiny`` on the image-VAE pipelines: the TAESD-family decoder (``tiny/taesd.py``) per frame.

The reference is diffusers' ``AutoencoderTiny``, an independent implementation of the same published
decoder, with random weights saved the ways the published decoders come: a diffusers folder
(``save_pretrained``) and the decoder file layout of madebyollin/taesd (``taesd_decoder.pth`` /
``.safetensors``: the decoder ``nn.Sequential``'s keys, index 0 its clamp). End to end, the expected
frames are the pipelines' own decode lines with ``AutoencoderTiny`` as their VAE, which is how
diffusers users swap TAESD in (``pipe.vae = AutoencoderTiny.from_pretrained("madebyollin/taesd")``):
its ``scaling_factor`` is 1.0, so the decoder takes the loop's latents as they are."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from latent_decoder.cli import cli
from latent_decoder.errors import TinyCheckpointError, TinyWeightsNotFoundError
from latent_decoder.experiment import VideoSettings
from latent_decoder.families import FAMILIES
from latent_decoder.tiny.checkpoint import load_checkpoint, save_checkpoint
from latent_decoder.tiny.model import frames_uint8
from latent_decoder.tiny.taesd import TaesdConfig

from family_harness import FPS, png_frames, postprocess, psnr, save_model, write_experiment
from taehv_reference import random_state_dict

SD_SCALING = 0.18215


pytestmark = pytest.mark.usefixtures("isolated_caches")  # conftest: the tiny decoder folder and HF cache start empty


# --------------------------------------------------------------------------- the reference and its files


def tiny_taesd(seed: int, widths: tuple[int, ...] = (8, 8, 8, 8), blocks: tuple[int, ...] = (3, 3, 3, 1)) -> Any:
    """A random ``AutoencoderTiny`` (the published taesd's layout at a small width). Its decoder's
    convolutions are drawn with variance 1 / fan-in and no bias (with the default initialisation the
    frames barely depend on the latent after some 30 layers), and the RGB head is scaled to give
    0.5 +- 0.2 on a probe latent: frames that spread over ``[0, 1]`` and change with the latent."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=widths,
                          num_decoder_blocks=blocks, latent_channels=4).eval()
    with torch.no_grad():
        convs = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
        for conv in convs:
            conv.weight.normal_(0, conv.weight[0].numel() ** -0.5)
            if conv.bias is not None:
                conv.bias.zero_()
        convs[-1].bias.fill_(0.5)
        probe = vae.decoder(torch.randn(2, 4, 6, 6))  # 2 * (head output) - 1
        convs[-1].weight.mul_(0.4 / probe.std())
    return vae


def decoder_file_state(vae: Any) -> dict[str, torch.Tensor]:
    """The decoder's tensors keyed as madebyollin/taesd's decoder file: its ``nn.Sequential`` starts with
    the clamp (index 0), diffusers' ``DecoderTiny.layers`` with the first convolution."""
    state = {}
    for key, value in vae.state_dict().items():
        if key.startswith("decoder.layers."):
            index, rest = key.removeprefix("decoder.layers.").split(".", 1)
            state[f"{int(index) + 1}.{rest}"] = value.clone()
    return state


def save_as(vae: Any, form: str, folder: Path) -> Path:
    """``vae``'s decoder as a published form: an AutoencoderTiny folder, its weights file, or the decoder file."""
    if form.startswith("folder"):
        vae.save_pretrained(folder / "taesd")
        return folder / "taesd" if form == "folder" else folder / "taesd" / "diffusion_pytorch_model.safetensors"
    path = folder / f"taesd_decoder{form}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if form == ".pth":
        torch.save(decoder_file_state(vae), path)
    else:
        save_checkpoint(decoder_file_state(vae), path)
    return path


def reference_uint8(vae: Any, latents: torch.Tensor) -> np.ndarray:
    """``[F, C, h, w]`` -> ``AutoencoderTiny.decode`` (frames in the batch) as the pipelines postprocess
    it, rounded to uint8: ``[F, H, W, 3]``."""
    with torch.no_grad():
        video = vae.decode(latents).sample  # [-1, 1]
    return np.round(postprocess(video.permute(1, 0, 2, 3)[None])).astype(np.uint8)


def assert_same_frames(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape and ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert ((expected > 0) & (expected < 255)).mean() > 0.5  # real pictures, not saturated


# --------------------------------------------------------------------------- the decoder


SHAPES = {"taesd (3, 3, 3, 1 blocks, 8x)": ((8, 8, 8, 8), (3, 3, 3, 1)), "2 stages (1, 2 blocks, 2x)": ((8, 8), (1, 2))}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("form", ["folder", "folder weights file", ".pth", ".safetensors"])
def test_frames_equal_autoencoder_tinys(shape: str, form: str, tmp_path: Path) -> None:
    widths, blocks = SHAPES[shape]
    vae = tiny_taesd(len(shape) + len(form), widths, blocks)
    checkpoint = load_checkpoint(save_as(vae, form, tmp_path))
    assert checkpoint.config == TaesdConfig(4, widths, blocks)  # read from the tensors, not the name
    assert (checkpoint.config.t_upscale, checkpoint.config.spatial) == (1, 2 ** (len(widths) - 1))
    latents = torch.randn(5, 4, 6, 7, generator=torch.Generator().manual_seed(1))
    expected = reference_uint8(vae, latents)
    model = checkpoint.decoder()
    assert_same_frames(frames_uint8(model, latents[None]), expected)
    assert_same_frames(frames_uint8(model, latents[None], chunk=2), expected)  # in pieces: frames are independent


def test_the_family_rules_name_taesd_and_taesdxl() -> None:
    for name in ("animatediff", "latte", "svd", "text-to-video-sd", "i2vgen-xl"):
        space = FAMILIES[name].tiny_space(4, "some/model")
        assert space.files == ("taesd_decoder",) and space.diffusers_repos == ("madebyollin/taesd",), name
    sdxl = FAMILIES["animatediff-sdxl"].tiny_space(4, "guoyww/animatediff-motion-adapter-sdxl-beta")
    assert sdxl.files == ("taesdxl_decoder",) and sdxl.diffusers_repos == ("madebyollin/taesdxl",)


# --------------------------------------------------------------------------- end to end


def image_vae_8x(seed: int, temporal: bool = False) -> Any:
    """A tiny SD-shaped VAE with the released VAEs' 8x (four levels): only its config is read by the tiny tier."""
    from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    if temporal:
        return AutoencoderKLTemporalDecoder(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                                            latent_channels=4, layers_per_block=1)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8,) * 4, layers_per_block=1, latent_channels=4, norm_num_groups=4,
                         scaling_factor=SD_SCALING)


def _animatediff(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    from diffusers import AnimateDiffPipeline

    return AnimateDiffPipeline.decode_latents(SimpleNamespace(vae=vae), latent, 16)


def _svd(vae: Any, latent: torch.Tensor) -> torch.Tensor:
    from diffusers import StableVideoDiffusionPipeline

    frames = latent.shape[1]
    return StableVideoDiffusionPipeline.decode_latents(SimpleNamespace(vae=vae), latent, frames, frames)


# the pipeline, its VAE, its layout (frames first for SVD) and its decode lines; 18 frames: more than
# AnimateDiff's 16 a call
PIPELINES = {
    "animatediff": ("AnimateDiffPipeline", False, (1, 4, 18, 4, 5), _animatediff),
    "svd": ("StableVideoDiffusionPipeline", True, (1, 6, 4, 4, 5), _svd),
}


def experiment(root: Path, pipeline: str, temporal: bool, shape: tuple[int, ...], seed: int = 0) -> tuple[Path, np.ndarray]:
    model = save_model(image_vae_8x(seed, temporal), root / "model", pipeline)
    latent = np.random.default_rng(seed).standard_normal(shape).astype(np.float16)
    frames = shape[2] if pipeline != "StableVideoDiffusionPipeline" else shape[1]
    exp = write_experiment(root / "exp", model, VideoSettings(width=40, height=32, fps=FPS, frames=frames), latent)
    return exp, latent


def decode(exp: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--decoder", "tiny", "--format", "png",
                                    *args], catch_exceptions=False)


def last_line(result: Any) -> str:
    return result.output.strip().splitlines()[-1]


@pytest.mark.parametrize("name", PIPELINES)
def test_decode_gives_the_pipelines_frames_with_autoencoder_tiny_as_its_vae(name: str, tmp_path: Path) -> None:
    pipeline, temporal, shape, reference = PIPELINES[name]
    exp, latent = experiment(tmp_path, pipeline, temporal, shape)
    taesd = tiny_taesd(3)
    folder = save_as(taesd, "folder", tmp_path)
    result = decode(exp, "--tiny-weights", str(folder))
    assert result.exit_code == 0, result.output
    frames = png_frames(exp / "latents_tiny" / "prompt_000" / "vid_001" / "step_000")
    frames_count = shape[1] if temporal else shape[2]
    assert frames.shape == (frames_count, 32, 40, 3)  # the full VAE's frames and size
    loop = torch.from_numpy(latent).float()
    with torch.no_grad():
        expected = np.round(postprocess(reference(taesd, loop)))
    assert np.abs(frames.astype(int) - expected).max() <= 1
    with torch.no_grad():  # negative control: the full VAE's 1 / scaling_factor in front of TAESD
        scaled = postprocess(reference(taesd, loop / SD_SCALING))
    assert psnr(frames, scaled) < 25
    model = json.loads((exp / "latents_tiny" / "decode_summary.json").read_text())["model"]
    assert model["decoder"] == "tiny" and model["family"] == name and model["tiny_from"] == "--tiny-weights"
    inspected = CliRunner().invoke(cli, ["inspect", str(exp), "--tiny-weights", str(folder)]).output
    assert "tiny        diffusion_pytorch_model.safetensors (4 latent channels, TAESD per frame" in inspected


def test_found_by_the_rule_in_the_hf_cache_and_the_folder_taesdxl_for_sdxl(tmp_path: Path,
                                                                           isolated_caches: Path) -> None:
    exp, latent = experiment(tmp_path, "AnimateDiffSDXLPipeline", False, (1, 4, 3, 4, 5))
    missing = decode(exp)
    assert missing.exit_code == 2
    for what in ("taesdxl_decoder.pth", "madebyollin/taesdxl", "github.com/madebyollin/taesd", str(isolated_caches),
                 "HF cache", "--tiny-weights"):
        assert what in last_line(missing), what
    assert "taesd_decoder" not in last_line(missing)
    assert not (exp / "latents_tiny").exists()

    vae = tiny_taesd(4)
    vae.save_pretrained(tmp_path / "hf" / "hub" / "models--madebyollin--taesdxl" / "snapshots" / ("0" * 40))
    cached = decode(exp)
    assert cached.exit_code == 0, cached.output
    model = json.loads((exp / "latents_tiny" / "decode_summary.json").read_text())["model"]
    assert model["tiny_from"] == "the HF cache (madebyollin/taesdxl)" and model["family"] == "animatediff-sdxl"
    expected = reference_uint8(vae, torch.from_numpy(latent).float()[0].permute(1, 0, 2, 3))
    assert_same_frames(png_frames(exp / "latents_tiny" / "prompt_000" / "vid_001" / "step_000"), expected)

    isolated_caches.mkdir(parents=True)
    save_as(tiny_taesd(5), ".pth", tmp_path / "elsewhere").rename(isolated_caches / "taesdxl_decoder.pth")
    inspected = CliRunner().invoke(cli, ["inspect", str(exp)]).output
    assert f"from the tiny decoder folder {isolated_caches}" in inspected and "taesdxl_decoder.pth" in inspected


# --------------------------------------------------------------------------- bad input: one line each


def test_a_decoder_for_other_latents_is_one_line(tmp_path: Path) -> None:
    exp, _ = experiment(tmp_path, "AnimateDiffPipeline", False, (1, 4, 2, 4, 5))
    video = tmp_path / "taew2_1.safetensors"
    save_checkpoint(random_state_dict(latent_channels=16), video)  # a TAEHV video decoder for Wan's 16 channels
    result = decode(exp, "--tiny-weights", str(video))
    assert result.exit_code == 2
    line = last_line(result)
    assert "16-channel" in line and "4 channels" in line and str(video) in line and "taesd_decoder" in line
    two_x = save_as(tiny_taesd(6, (8, 8), (1, 1)), ".safetensors", tmp_path / "2x")
    result = decode(exp, "--tiny-weights", str(two_x))
    assert result.exit_code == 2 and "at 2x" in last_line(result) and "at 8x" in last_line(result)
    assert not (exp / "latents_tiny").exists()


class RunsCode:
    """What a malicious pickle carries: unpickling it calls ``Path.touch(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bad_files_are_one_line_each(tmp_path: Path) -> None:
    vae = tiny_taesd(7)
    truncated = save_as(vae, ".pth", tmp_path)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(TinyCheckpointError, match="truncated") as exc:
        load_checkpoint(truncated)
    assert "\n" not in str(exc.value) and str(truncated) in str(exc.value)

    marker, code = tmp_path / "code_ran", tmp_path / "code" / "taesd_decoder.pth"
    code.parent.mkdir()
    torch.save({**decoder_file_state(vae), "payload": RunsCode(marker)}, code)
    with pytest.raises(TinyCheckpointError, match="refused") as exc:
        load_checkpoint(code)
    assert "\n" not in str(exc.value) and not marker.exists()

    with pytest.raises(TinyWeightsNotFoundError, match="without diffusion_pytorch_model.safetensors") as exc:
        load_checkpoint(tmp_path)  # a folder that is no AutoencoderTiny folder
    assert "\n" not in str(exc.value)

    broken = save_as(vae, "folder weights file", tmp_path / "broken")  # a tensor missing, named as the file names it
    from safetensors.torch import load_file, save_file

    tensors = load_file(broken)
    del tensors["decoder.layers.6.weight"]
    save_file(tensors, broken)
    with pytest.raises(TinyCheckpointError) as exc:
        load_checkpoint(broken)
    assert "not a TAESD-family decoder" in str(exc.value) and "decoder.layers.6.weight" in str(exc.value)
    assert "\n" not in str(exc.value)
