"""Kandinsky 6, Sana-WM, ConsisID, Echo, LTX-2.5 (its VAE and its diffusion decoder), the modular LTX,
LTX-2 and HunyuanVideo 1.5 pipelines, and the bare KVAE / VidTok VAEs decode as their own lines do;
the video pipelines no rule decodes are refused with their reason.

References are the pipelines' own code where diffusers exposes it (the modular decode blocks, run
as a ``ModularPipeline``; ``SanaWMPipeline._decode_latents`` and ``ConsisIDPipeline.decode_latents``
called on a stand-in holding just the VAE), else their lines, copied (Kandinsky 6), and for the bare
VAEs their own ``decode``.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from latent_decoder.experiment import VideoSettings
from latent_decoder.families.ltx_video import NOISE_SEED

from family_harness import (FPS, LOW_PRECISION_DB, PARITY_DB, Case, FamilyCase, assert_inspect_says,
                            assert_wrong_rules_caught, build_case as _build_case, cli_frames, decoded_by_blocks,
                            in_memory, postprocess, psnr, save_model, scaling_factor_only, times_scaling_factor,
                            tiny_hunyuan_vae)
from test_families import _cogvideox, _ltx, _ltx_packed
from test_family_cosmos_hv15 import _hv15
from test_family_ltx2_sana import LTX2_VIDEO, _ltx2_vae, _packed

SMALL = VideoSettings(width=24, height=16, fps=FPS, frames=9)  # 3 x 2 x 3 latent frames at 4x / 8x


# --------------------------------------------------------------------------- the pipelines' decode lines


def ref_kandinsky6(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """Kandinsky6TI2VAPipeline after its loop, copied: the appended reference frame dropped (``tail_cond``:
    the stored latent has one latent frame more than the video), permute, cast, ``/ scaling_factor``."""
    latents = latent
    if latents.shape[1] == (video.frames - 1) // 4 + 2:
        latents = latents[:, :-1]
    latents = latents.permute(0, 4, 1, 2, 3)
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


def needs(name: str) -> None:
    """Skip a case whose pipeline the installed diffusers lacks (``make test-oldest``)."""
    import diffusers

    if not hasattr(diffusers, name):
        pytest.skip(f"diffusers {diffusers.__version__} has no {name}")


def ref_sana_wm(vae: Any, latent: Any, video: VideoSettings) -> Any:
    import torch

    needs("SanaWMPipeline")
    from diffusers import SanaWMPipeline

    return SanaWMPipeline._decode_latents(SimpleNamespace(vae=vae, _execution_device=torch.device("cpu")), latent)


def ref_consisid(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """ConsisIDPipeline's ``decode_latents``, copied (the pipeline imports OpenCV, absent here), on the loop
    latents in the VAE's dtype (the transformer's)."""
    latents = latent.to(vae.dtype)
    latents = latents.permute(0, 2, 1, 3, 4)  # [batch_size, num_channels, num_frames, height, width]
    latents = 1 / vae.config.scaling_factor * latents
    return vae.decode(latents).sample


def _unpacked_ltx2(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """LTX2Pipeline._unpack_latents at the video's latent grid (patch sizes 1), as the modular unpack steps."""
    from diffusers import LTX2Pipeline

    t = (video.frames - 1) // vae.temporal_compression_ratio + 1
    h, w = video.height // vae.spatial_compression_ratio, video.width // vae.spatial_compression_ratio
    return LTX2Pipeline._unpack_latents(latent, t, h, w, 1, 1)


def ref_echo(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """EchoVaeDecoderStep on the unpacked latents (EchoUnpackLatentsStep's ``_unpack_latents``, copied from LTX-2)."""
    from diffusers.modular_pipelines.echo.decoders import EchoVaeDecoderStep

    return decoded_by_blocks({"decode": EchoVaeDecoderStep()}, vae, latents=_unpacked_ltx2(vae, latent, video),
                             decode_timestep=0.05, decode_noise_scale=0.0)


def ref_ltx2_modular(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """LTX2VaeDecoderStep on the loop's packed latents, the pipeline's dtype being the VAE's."""
    from diffusers.modular_pipelines.ltx2.decoders import LTX2VaeDecoderStep

    return decoded_by_blocks({"decode": LTX2VaeDecoderStep()}, vae, latents=latent, height=video.height,
                             width=video.width, num_frames=video.frames, dtype=vae.dtype, batch_size=1,
                             decode_timestep=0.05, decode_noise_scale=0.0)


def ref_ltx_modular(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """LTXVaeDecoderStep on the loop's packed latents (it unpacks them itself; diffusers 0.42 moved the
    unpacking into a step of its own, with the same lines)."""
    from diffusers.modular_pipelines.ltx.decoders import LTXVaeDecoderStep

    return decoded_by_blocks({"decode": LTXVaeDecoderStep()}, vae, latents=latent, height=video.height,
                             width=video.width, num_frames=video.frames, dtype=vae.dtype, batch_size=1,
                             decode_timestep=0.05, decode_noise_scale=0.0)


def ref_hv15_modular(vae: Any, latent: Any, video: VideoSettings) -> Any:
    from diffusers.modular_pipelines.hunyuan_video1_5.decoders import HunyuanVideo15VaeDecoderStep

    return decoded_by_blocks({"decode": HunyuanVideo15VaeDecoderStep()}, vae, latents=latent)


def ref_own_decode(vae: Any, latent: Any, video: VideoSettings) -> Any:
    """A bare VAE's own ``decode`` on the latent as it is (KVAE returns ``DecoderOutput``, VidTok the tensor)."""
    out = vae.decode(latent.to(vae.dtype))
    return getattr(out, "sample", out)


def channels_last(grid: np.ndarray) -> np.ndarray:
    return grid.transpose(0, 2, 3, 4, 1)


def tiny_kvae() -> Any:
    import torch
    from diffusers import AutoencoderKLKVAEVideo

    torch.manual_seed(41)
    return AutoencoderKLKVAEVideo(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4,
                                  temporal_compress_times=2).eval()


def tiny_vidtok() -> Any:
    import torch
    from diffusers import AutoencoderVidTok

    torch.manual_seed(42)
    return AutoencoderVidTok(ch=8, ch_mult=[1, 1, 1], z_channels=4, num_res_blocks=1).eval()


def _ltx2_tc() -> Any:
    return _ltx2_vae(True)


CASES = {
    "kandinsky6": FamilyCase("kandinsky6", "AutoencoderKLHunyuanVideo", partial(tiny_hunyuan_vae, 61, 16),
                             (16, 3, 2, 3), SMALL, ref_kandinsky6, store=channels_last,
                             pipeline="Kandinsky6TI2VAPipeline"),
    "kandinsky6-image": FamilyCase("kandinsky6", "AutoencoderKLHunyuanVideo", partial(tiny_hunyuan_vae, 61, 16),
                                   (16, 4, 2, 3), SMALL, ref_kandinsky6, store=channels_last,
                                   pipeline="Kandinsky6TI2VAPipeline"),
    "sana-wm": FamilyCase("sana-wm", "AutoencoderKLLTX2Video", partial(_ltx2_vae, False), (4, 3, 8, 12), LTX2_VIDEO,
                          ref_sana_wm, pipeline="SanaWMPipeline"),
    "consisid": FamilyCase("cogvideox", "AutoencoderKLCogVideoX", _cogvideox, (4, 3, 2, 3), SMALL, ref_consisid,
                           store=lambda g: g.transpose(0, 2, 1, 3, 4), pipeline="ConsisIDPipeline"),
    "echo": FamilyCase("echo", "AutoencoderKLLTX2Video", _ltx2_tc, (4, 3, 8, 12), LTX2_VIDEO, ref_echo,
                       store=_packed(), pipeline="EchoModularPipeline", modular=True),
    "ltx2-modular": FamilyCase("ltx2-conditioned", "AutoencoderKLLTX2Video", _ltx2_tc, (4, 3, 8, 12), LTX2_VIDEO,
                               ref_ltx2_modular, store=_packed(), pipeline="LTX2ModularPipeline", modular=True),
    "ltx2.5": FamilyCase("ltx2.5", "AutoencoderKLLTX2Video", _ltx2_tc, (4, 3, 8, 12), LTX2_VIDEO, ref_ltx2_modular,
                         store=_packed(), pipeline="LTX25ModularPipeline", modular=True),
    "ltx-modular": FamilyCase("ltx-video", "AutoencoderKLLTXVideo", _ltx(True), (8, 3, 4, 6), SMALL, ref_ltx_modular,
                              store=_ltx_packed, pipeline="LTXModularPipeline", modular=True),
    "hv15-modular": FamilyCase("hunyuanvideo1.5", "AutoencoderKLHunyuanVideo15", _hv15, (4, 2, 1, 2),
                               VideoSettings(32, 16, FPS, 5), ref_hv15_modular, pipeline="HunyuanVideo15ModularPipeline",
                               modular=True),
    "kvae": FamilyCase("kvae-video", "AutoencoderKLKVAEVideo", tiny_kvae, (4, 3, 4, 6), VideoSettings(12, 8, FPS, 5),
                       ref_own_decode),
    "vidtok": FamilyCase("vidtok", "AutoencoderVidTok", tiny_vidtok, (4, 3, 4, 6), VideoSettings(24, 16, FPS, 9),
                         ref_own_decode),
}
DECODE_ARGS = ("--decode-timestep", "0.05", "--decode-noise-scale", "0")  # what the references pass
EXTRA_ARGS = {"echo": DECODE_ARGS, "ltx2-modular": DECODE_ARGS, "ltx2.5": DECODE_ARGS, "ltx-modular": DECODE_ARGS}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("k6_ltx25_sana_wm")


def build_case(name: str, models_dir: Path) -> Case:
    return _build_case(name, CASES, models_dir)


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, models_dir: Path) -> Case:
    return build_case(request.param, models_dir)


def _name(case: Case) -> str:
    return next(n for n, c in CASES.items() if c is case.family)


# --------------------------------------------------------------------------- parity


def test_cli_decode_matches_the_pipeline(case: Case, tmp_path: Path):
    frames, summary = cli_frames(case, tmp_path, *EXTRA_ARGS.get(_name(case), ()))
    assert frames.shape == case.reference().shape
    assert psnr(frames, case.reference()) >= PARITY_DB
    model = summary["model"]
    assert model["family"] == case.family.family
    if case.family.pipeline:
        index = "modular_model_index.json" if case.family.modular else "model_index.json"
        assert model["family_rule"] == f"pipeline {case.family.pipeline} in {case.model_dir / index}"
    else:
        assert model["family_rule"].startswith(f"VAE class {case.family.vae_class}")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["kandinsky6-image", "sana-wm", "consisid", "echo"])
def test_low_precision_decode_is_the_pipelines_own(name: str, dtype: str, models_dir: Path):
    case = build_case(name, models_dir)
    extra = {"decode_timestep": 0.05, "decode_noise_scale": 0.0} if name == "echo" else {}
    frames = in_memory(case, dtype=dtype, **extra)
    assert psnr(frames, np.round(case.reference(dtype))) >= LOW_PRECISION_DB
    assert psnr(frames, case.reference("float32")) < LOW_PRECISION_DB + 40  # the dtype did change something


# --------------------------------------------------------------------------- negative controls


def _sana_video_formula(z: Any, ctx: Any) -> Any:
    """Sana-Video's rule on the same VAE's buffers: no scaling factor."""
    shape = (1, -1, 1, 1, 1)
    return z * ctx.vae.latents_std.view(shape).to(z) + ctx.vae.latents_mean.view(shape).to(z)


def _sd_scaling(z: Any, ctx: Any) -> Any:
    """An image VAE's habit, assumed for a VAE that has no scaling factor: ``vae.decode(z / 0.18215)``
    (as the decode call: the rule's identity de-normalisation is itself the plain latent)."""
    out = ctx.vae.decode(z / 0.18215)
    return getattr(out, "sample", out)


def _drop_first_frame(z: Any, ctx: Any) -> Any:
    """The reference frame taken from the front, as Wan Animate's slot is."""
    return z[:, 1:].permute(0, 4, 1, 2, 3)


WRONG = {
    "kandinsky6": {"times scaling factor": times_scaling_factor},
    "sana-wm": {"Sana-Video's formula": _sana_video_formula},
    "consisid": {"times scaling factor": times_scaling_factor},
    "echo": {"scaling factor only": scaling_factor_only},
    "kvae": {"SD scaling": _sd_scaling},
    "vidtok": {"SD scaling": _sd_scaling},
}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_negative_controls_are_caught(name: str, models_dir: Path, monkeypatch: pytest.MonkeyPatch):
    case = build_case(name, models_dir)
    bare = case.family.pipeline is None  # no de-normalisation is the rule: the wrong one is in the decode call
    assert_wrong_rules_caught(case, WRONG[name], monkeypatch, field="decode" if bare else "denormalize")


def test_kandinsky6_reference_frame_from_the_front_is_caught(models_dir: Path, monkeypatch: pytest.MonkeyPatch):
    case = build_case("kandinsky6-image", models_dir)
    assert_wrong_rules_caught(case, {"front frame": _drop_first_frame}, monkeypatch, field="to_grid")


def test_sana_wm_is_not_sana_video_and_says_so(models_dir: Path, tmp_path: Path):
    """Sana-Video's rule on the same unpacked latent (forced with --family) misses the scaling factor;
    ``inspect`` names Sana-WM's own."""
    case = build_case("sana-wm", models_dir)
    frames = in_memory(case, family="sana-video")
    assert psnr(frames, case.reference()) < PARITY_DB
    assert_inspect_says(case, tmp_path / "exp", ["family      sana-wm (Sana-WM)",
                                                 f"rule        pipeline SanaWMPipeline in {case.model_dir}",
                                                 "[1, 4, 3, 8, 12] float16 x1 -> 5 frames 24x16"])


def test_echo_casts_after_ltx2_casts_first(models_dir: Path):
    """Echo de-normalises in float32 and casts after: LTX-2's rule (cast first) misses its bfloat16 frames."""
    case = build_case("echo", models_dir)
    frames = in_memory(case, dtype="bfloat16", family="ltx2", decode_timestep=0.05, decode_noise_scale=0.0)
    assert psnr(frames, np.round(case.reference("bfloat16"))) < LOW_PRECISION_DB


def test_kandinsky6_without_frames_decodes_the_reference_frame(models_dir: Path):
    """Without ``video_settings.frames`` the appended frame cannot be told: decoded as one (as the note says)."""
    from latent_decoder import decode_latent

    case = build_case("kandinsky6-image", models_dir)
    frames = decode_latent(case.latent, str(case.model_dir), device="cpu")
    assert frames.shape[0] == case.reference().shape[0] + 4


# --------------------------------------------------------------------------- LTX-2.5's diffusion decoder


def tiny_diffusion_decoder(seed: int = 11) -> Any:
    """A tiny LTX-2.5 diffusion decoder: 2x spatial and temporal, the tiny LTX-2 VAE's statistics and scaling
    factor (the release's decoder carries LTX-2's statistics, the VAE's)."""
    import torch
    from diffusers import LTX2VideoDiffusionDecoderModel

    torch.manual_seed(seed)
    decoder = LTX2VideoDiffusionDecoderModel(
        latent_channels=4, patch_size=1, scaling_factor=0.6, decoder_head_dim=8, decoder_stage_channels=(8,) * 5,
        decoder_stage_depths=(1,) * 5, decoder_stage_kernels=((3, 3, 3),) * 4,
        decoder_upsample_strides=((1, 2, 2), (2, 1, 1), (1, 1, 1), (1, 1, 1)),
        decoder_upsample_channel_reductions=(1, 1, 1, 1), decoder_stage5_kernel=(3, 3, 3), decoder_t_emb_dim=8,
        spatial_compression_ratio=2, temporal_compression_ratio=2,
    ).eval()
    vae = _ltx2_vae(True, seed)
    with torch.no_grad():
        decoder.latents_mean.copy_(vae.latents_mean)
        decoder.latents_std.copy_(vae.latents_std)
    return decoder


def ref_diffusion_decoder(decoder: Any, latent: Any, video: VideoSettings, seed: int = NOISE_SEED) -> Any:
    """LTX2DiffusionVaeDecoderStep on the loop's packed latents, its generator seeded as the tool's; with the
    folder's VAE loaded too, as the pipeline loads it (its compression ratios and statistics are read)."""
    import torch
    from diffusers.modular_pipelines.ltx2.decoders import LTX2DiffusionVaeDecoderStep

    return decoded_by_blocks({"decode": LTX2DiffusionVaeDecoderStep()}, decoder, component="diffusion_decoder",
                             others={"vae": _ltx2_vae(True).to(decoder.dtype)}, latents=latent, height=video.height,
                             width=video.width, num_frames=video.frames, dtype=decoder.dtype,
                             generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ltx25(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """An LTX-2.5 model folder as the release lays it out: ``vae/`` (the LTX-2 VAE) and ``diffusion_decoder/``
    beside a ``modular_model_index.json``; the loop's packed latent; the pipeline's diffusion-decoder frames."""
    import torch

    root = tmp_path_factory.mktemp("ltx25") / "model"
    save_model(_ltx2_vae(True), root, "LTX25ModularPipeline", modular=True)
    decoder = tiny_diffusion_decoder()
    decoder.save_pretrained(root / "diffusion_decoder")
    grid = np.random.default_rng(8).standard_normal((1, 4, 3, 8, 12)).astype(np.float16).astype(np.float32)
    packed = _packed()(grid)
    with torch.no_grad():
        expected = {"float32": postprocess(ref_diffusion_decoder(decoder, torch.from_numpy(packed), LTX2_VIDEO))}
    family = FamilyCase("ltx2.5-diffusion-decoder", "LTX2VideoDiffusionDecoderModel", tiny_diffusion_decoder,
                        (4, 3, 8, 12), LTX2_VIDEO, ref_diffusion_decoder, pipeline="LTX25ModularPipeline",
                        modular=True)
    return Case(family, root, packed, decoder, expected)


def test_diffusion_decoder_matches_the_pipelines_decode_step(ltx25: Case, tmp_path: Path):
    """``--vae-subfolder diffusion_decoder`` picks LTX-2.5's own decoder; its frames are the decode step's at
    the same seed, and another seed's noise shows (the decoder is a diffusion model)."""
    import torch

    frames, summary = cli_frames(ltx25, tmp_path, "--vae-subfolder", "diffusion_decoder")
    assert frames.shape == ltx25.reference().shape == (5, 16, 24, 3)
    assert psnr(frames, ltx25.reference()) >= PARITY_DB
    assert summary["model"]["family"] == "ltx2.5-diffusion-decoder"
    with torch.no_grad():
        other_seed = postprocess(ref_diffusion_decoder(ltx25.vae, torch.from_numpy(ltx25.latent), LTX2_VIDEO, seed=1))
    assert psnr(frames, other_seed) < PARITY_DB


def test_diffusion_decoder_low_precision_and_negative_control(ltx25: Case, monkeypatch: pytest.MonkeyPatch):
    import copy

    import torch

    decoder = copy.deepcopy(ltx25.vae).to(torch.bfloat16)
    with torch.no_grad():
        expected = postprocess(ref_diffusion_decoder(decoder, torch.from_numpy(ltx25.latent), LTX2_VIDEO))
    frames = in_memory(ltx25, dtype="bfloat16", vae_subfolder="diffusion_decoder")
    assert psnr(frames, np.round(expected)) >= LOW_PRECISION_DB
    from latent_decoder import families

    rule = families.FAMILIES["ltx2.5-diffusion-decoder"]
    import dataclasses

    monkeypatch.setitem(families.FAMILIES, rule.name, dataclasses.replace(rule, denormalize=_sana_video_formula))
    wrong = in_memory(ltx25, vae_subfolder="diffusion_decoder")
    assert psnr(wrong, ltx25.reference()) < PARITY_DB


def test_ltx25_folder_decodes_with_its_vae_by_default_and_says_so(ltx25: Case, tmp_path: Path):
    """Without ``--vae-subfolder`` the folder's ``vae/`` decodes the same latent space (rule ``ltx2.5``);
    ``inspect`` says which decoder and what the diffusion decoder costs."""
    vae_rule = assert_inspect_says(ltx25, tmp_path / "vae", [
        "family      ltx2.5 (LTX-2.5 on the LTX-2 VAE)",
        f"rule        pipeline LTX25ModularPipeline in {ltx25.model_dir / 'modular_model_index.json'}",
        "note: LTX-2.5 decodes with its diffusion decoder (--vae-subfolder diffusion_decoder"])
    assert "not in the family table" not in vae_rule
    from click.testing import CliRunner

    from latent_decoder.cli import cli

    exp = tmp_path / "vae" 
    result = CliRunner().invoke(cli, ["inspect", str(exp), "--vae-subfolder", "diffusion_decoder"])
    assert result.exit_code == 0, result.output
    assert "family      ltx2.5-diffusion-decoder (LTX-2.5 diffusion decoder)" in result.output
    assert "cost        a diffusion model, not a VAE: each decode runs 1 denoising pass(es)" in result.output
    assert "note: its noise comes from a fixed seed" in result.output
    assert "[1, 288, 4] float16 x1 -> 5 frames 24x16" in result.output


# --------------------------------------------------------------------------- detection


def test_detection_through_each_kind_of_folder(models_dir: Path, tmp_path: Path):
    """model_index.json (Kandinsky 6, Sana-WM), modular_model_index.json (Echo, LTX-2.5), a bare VAE folder
    (KVAE, VidTok, the diffusion decoder: their own rules; HunyuanVideo's VAE: HunyuanVideo's) and
    ``--family`` (Kandinsky 6's frames from the bare HunyuanVideo VAE folder)."""
    from latent_decoder.families import detect
    from latent_decoder.models import resolve_model

    def rule(folder: Path, subfolder: str | None = None) -> str:
        resolved = resolve_model(str(folder), subfolder)
        return detect(resolved.class_name, resolved.pipeline).family.name

    for name in ("kandinsky6", "echo", "ltx2.5", "kvae", "vidtok"):
        assert rule(build_case(name, models_dir).model_dir) == CASES[name].family, name
    decoder = tmp_path / "decoder"
    tiny_diffusion_decoder().save_pretrained(decoder)
    assert rule(decoder) == "ltx2.5-diffusion-decoder"

    k6 = build_case("kandinsky6-image", models_dir)
    bare = tmp_path / "hunyuan"
    k6.vae.save_pretrained(bare)
    assert rule(bare) == "hunyuanvideo"
    import dataclasses

    on_bare = dataclasses.replace(k6, model_dir=bare)
    assert psnr(in_memory(on_bare, family="kandinsky6"), k6.reference()) >= PARITY_DB


def test_inspect_names_each_rule(models_dir: Path, tmp_path: Path):
    for name, words in {
        "kandinsky6-image": ["family      kandinsky6 (Kandinsky 6)", "note: an image-conditioned run's appended",
                             "[1, T, H, W, 16] stored latents", "[1, 4, 2, 3, 16] float16 x1 -> 9 frames 24x16"],
        "consisid": ["family      cogvideox (CogVideoX)", "rule        pipeline ConsisIDPipeline in "],
        "echo": ["family      echo (Echo)", "[1, 288, 4] float16 x1 -> 5 frames 24x16"],
        "kvae": ["family      kvae-video (KVAE video VAE)", "rule        VAE class AutoencoderKLKVAEVideo",
                 "note: no pipeline: decoded with the VAE's own config", "-> 5 frames 12x8"],
        "vidtok": ["family      vidtok (VidTok)", "note: no pipeline", "-> 9 frames 24x16"],
    }.items():
        out = assert_inspect_says(build_case(name, models_dir), tmp_path / name, words)
        assert "not in the family table" not in out, out


@pytest.mark.parametrize("pipeline, vae, reason", [
    ("LTX2HDRPipeline", "ltx2", "HDR"),
    ("LTXLatentUpsamplePipeline", "ltx2", "no denoising loop"),
    ("LTX2DFRPipeline", "ltx2", "padded canvas"),
    ("Kandinsky6SRPipeline", "hunyuan", "tile by tile"),
])
def test_video_pipelines_without_a_rule_are_refused_with_their_reason(pipeline: str, vae: str, reason: str,
                                                                      tmp_path: Path):
    """One line naming the pipeline, its model_index.json and why (exit 2), never a guess from the VAE class."""
    from click.testing import CliRunner

    from latent_decoder.cli import cli
    from family_harness import write_experiment

    model = save_model(_ltx2_vae(False) if vae == "ltx2" else tiny_hunyuan_vae(1), tmp_path / "model", pipeline)
    exp = write_experiment(tmp_path / "exp", model, SMALL, np.zeros((1, 4, 3, 2, 3), np.float32))
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert f"pipeline {pipeline} ({model / 'model_index.json'}) is not supported: " in result.output
    assert reason in result.output
    assert not (exp / "latents_videos").exists()


# --------------------------------------------------------------------------- preview


def test_kandinsky6_preview_uses_hunyuanvideo_factors_in_its_layout(models_dir: Path, tmp_path: Path):
    """HunyuanVideo's published factors serve Kandinsky 6's channels-last latents (its appended reference
    frame dropped, as in the full decode): the preview has the full decode's frames and size."""
    from click.testing import CliRunner

    from latent_decoder.cli import cli
    from family_harness import png_frames, write_experiment

    case = build_case("kandinsky6-image", models_dir)
    exp = write_experiment(tmp_path / "exp", case.model_dir, SMALL, case.latent)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--format", "png"])
    assert result.exit_code == 0, result.output
    frames = png_frames(exp / "latents_previews" / "prompt_000" / "vid_001" / "step_000")
    assert frames.shape == case.reference().shape
    model = json.loads((exp / "latents_previews" / "decode_summary.json").read_text())["model"]
    assert model["family"] == "hunyuanvideo" and model["factors"] == "published"
