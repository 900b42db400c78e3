"""Which rule decodes a model, and why: ``--family`` > the pipeline in ``model_index.json`` > the VAE class.

The pipeline facts are read wherever a user's model can be: a pipeline folder, its ``vae/`` folder
given directly, the HF cache under a real repo id, and the folder or repo a single ``.safetensors``
file takes its config from. The rule chosen changes the frames (SkyReels-V2 and Wan share a formula,
so the frames agree; a bare VAE, an unknown pipeline and a wrong override are each said in one line).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from latent_decoder import decode_latent
from latent_decoder.cli import cli
from latent_decoder.synthetic import build_tiny_wan_vae, save_npy_gz, write_config
from latent_decoder.errors import UnsupportedModelError
from latent_decoder.families import FAMILIES, PipelineFacts, detect
from latent_decoder.models import resolve_model

from conftest import save_to_hf_cache
from family_harness import png_frames, random_stats, save_model, tiny_hunyuan_vae

REPO_ID = "Skywork/SkyReels-V2-T2V-14B-540P-Diffusers"
FRAMES, HEIGHT, WIDTH = 5, 16, 32


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SkyReels-V2 pipeline folder: model_index.json, vae/, and a transformer/scheduler config."""
    mean, std = random_stats(11, 16)
    root = save_model(build_tiny_wan_vae(seed=11, latents_mean=mean, latents_std=std),
                      tmp_path_factory.mktemp("skyreels") / "model", "SkyReelsV2Pipeline")
    (root / "transformer").mkdir()
    (root / "transformer" / "config.json").write_text(json.dumps({"_class_name": "SkyReelsV2Transformer3DModel",
                                                                   "patch_size": [1, 2, 2]}))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "UniPCMultistepScheduler",
                                                                          "flow_shift": 8.0}))
    return root


def test_pipeline_folder_is_detected_by_its_model_index(pipeline_dir: Path):
    resolved = resolve_model(str(pipeline_dir))
    assert resolved.pipeline.class_name == "SkyReelsV2Pipeline"
    assert resolved.pipeline.transformer["patch_size"] == [1, 2, 2]
    assert resolved.pipeline.scheduler["flow_shift"] == 8.0
    found = detect(resolved.class_name, resolved.pipeline)
    assert found.family.name == "skyreels-v2"
    assert found.reason == f"pipeline SkyReelsV2Pipeline in {pipeline_dir / 'model_index.json'}"


def test_vae_folder_given_directly_belongs_to_its_pipeline(pipeline_dir: Path, tmp_path: Path):
    resolved = resolve_model(str(pipeline_dir / "vae"))
    assert resolved.pipeline.class_name == "SkyReelsV2Pipeline"
    # A bare VAE folder whose parent's index does not name it stays bare.
    bare = tmp_path / "loose"
    build_tiny_wan_vae().save_pretrained(bare / "weights")
    (bare / "model_index.json").write_text(json.dumps({"_class_name": "SkyReelsV2Pipeline", "vae": ["x", "y"]}))
    assert resolve_model(str(bare / "weights")).pipeline == PipelineFacts()


def test_hf_cache_entry_is_detected_by_its_model_index(pipeline_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "hf_home"
    save_to_hf_cache(pipeline_dir, home, REPO_ID)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    resolved = resolve_model(REPO_ID)
    assert resolved.origin == "HF cache"
    assert resolved.pipeline.class_name == "SkyReelsV2Pipeline"
    assert resolved.pipeline.transformer["patch_size"] == [1, 2, 2]
    assert detect(resolved.class_name, resolved.pipeline).family.name == "skyreels-v2"


def test_single_file_takes_the_pipeline_of_its_config_source(pipeline_dir: Path, tmp_path: Path):
    from safetensors.torch import save_file

    weights = tmp_path / "skyreels_vae.safetensors"
    save_file(build_tiny_wan_vae(seed=11).state_dict(), str(weights))
    resolved = resolve_model(str(weights), config=str(pipeline_dir))
    assert resolved.origin == "single file"
    assert resolved.pipeline.class_name == "SkyReelsV2Pipeline"


def test_bare_vae_and_unknown_pipeline_fall_back_to_the_vae_class(tmp_path: Path):
    bare = detect("AutoencoderKLWan", PipelineFacts())
    assert bare.family.name == "wan" and "no model_index.json" in bare.reason
    unknown = detect("AutoencoderKLWan", PipelineFacts("SomeFuturePipeline", {"_class_name": "SomeFuturePipeline"}))
    assert unknown.family.name == "wan"
    assert "SomeFuturePipeline is not in the family table" in unknown.reason and "--family" in unknown.reason


def test_wan22_ti2v_text_to_video_is_plain_wan_and_its_i2v_blends():
    """Wan2.2 TI2V-5B registers expand_timesteps on both pipelines; only image-to-video blends a
    condition into the first latent frame after its loop."""
    t2v = {"_class_name": "WanPipeline", "expand_timesteps": True}
    i2v = {"_class_name": "WanImageToVideoPipeline", "expand_timesteps": True}
    found = detect("AutoencoderKLWan", PipelineFacts("WanPipeline", t2v, source="model_index.json"))
    assert found.family.name == "wan" and found.reason == "pipeline WanPipeline in model_index.json"
    assert detect("AutoencoderKLWan", PipelineFacts("WanImageToVideoPipeline", i2v)).family.name == "wan2.2-i2v"
    plain_i2v = {"_class_name": "WanImageToVideoPipeline", "expand_timesteps": False}
    assert detect("AutoencoderKLWan", PipelineFacts("WanImageToVideoPipeline", plain_i2v)).family.name == "wan"


def test_override_wins_and_must_fit_the_vae_class():
    facts = PipelineFacts("WanPipeline", {"_class_name": "WanPipeline"})
    assert detect("AutoencoderKLWan", facts, "skyreels-v2").reason == "--family skyreels-v2"
    with pytest.raises(UnsupportedModelError, match="--family mochi decodes AutoencoderKLMochi latents, but the "
                                                    "model's VAE is AutoencoderKLWan"):
        detect("AutoencoderKLWan", facts, "mochi")
    with pytest.raises(UnsupportedModelError, match="--family nope: unknown family"):
        detect("AutoencoderKLWan", facts, "nope")
    with pytest.raises(UnsupportedModelError, match="VAE class AutoencoderKLFoo is not supported"):
        detect("AutoencoderKLFoo", PipelineFacts())


def test_every_family_names_a_pipeline_source_and_known_vae_classes():
    """Every class a rule names exists in diffusers (an older one than the README's table describes may
    lack the newer pipelines: ``make test-oldest``)."""
    import diffusers
    from packaging.version import Version

    from test_family_table import documented_diffusers

    older = Version(diffusers.__version__) < Version(documented_diffusers())
    for family in FAMILIES.values():
        assert family.mirrors.startswith("diffusers."), family.name
        assert family.pipelines or family.note.startswith("no pipeline"), family.name  # a bare VAE's rule says so
        for cls in family.vae_classes:
            assert hasattr(diffusers, cls), f"{family.name}: diffusers has no {cls}"
        for cls in family.pipelines:
            assert hasattr(diffusers, cls) or older, f"{family.name}: diffusers has no {cls}"


def _experiment(root: Path, model: Path) -> Path:
    write_config(root, str(model), WIDTH, HEIGHT, FRAMES, 8.0)
    latent = np.random.default_rng(3).standard_normal((1, 16, 2, 2, 4)).astype(np.float16)
    save_npy_gz(root / "latents" / "prompt_000" / "vid_001" / "step_000.npy.gz", latent)
    return root


def test_inspect_and_summary_say_which_rule_matched(pipeline_dir: Path, tmp_path: Path):
    exp = _experiment(tmp_path / "exp", pipeline_dir)
    inspected = CliRunner().invoke(cli, ["inspect", str(exp)])
    assert inspected.exit_code == 0, inspected.output
    assert "family      skyreels-v2 (SkyReels-V2), mirrors diffusers.SkyReelsV2Pipeline" in inspected.output
    assert f"rule        pipeline SkyReelsV2Pipeline in {pipeline_dir / 'model_index.json'}" in inspected.output
    overridden = CliRunner().invoke(cli, ["inspect", str(exp), "--family", "wan"])
    assert "rule        --family wan" in overridden.output
    wrong = CliRunner().invoke(cli, ["inspect", str(exp), "--family", "mochi"])
    assert wrong.exit_code == 2 and "--family mochi decodes AutoencoderKLMochi" in wrong.output

    decoded = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png"])
    assert decoded.exit_code == 0, decoded.output
    model = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())["model"]
    assert model["family"] == "skyreels-v2" and model["family_rule"].startswith("pipeline SkyReelsV2Pipeline")


def test_skyreels_and_wan_rules_give_the_same_frames(pipeline_dir: Path):
    """SkyReels-V2 mirrors Wan's lines (cast first, ``z / (1/std) + mean``): the same frames."""
    latent = np.random.default_rng(4).standard_normal((1, 16, 2, 2, 4)).astype(np.float16).astype(np.float32)
    geometry = dict(frames=FRAMES, height=HEIGHT, width=WIDTH, device="cpu")
    skyreels = decode_latent(latent, str(pipeline_dir), **geometry)
    wan = decode_latent(latent, str(pipeline_dir), family="wan", **geometry)
    assert np.array_equal(skyreels, wan)


def test_preview_reads_the_pipelines_layout(tmp_path: Path):
    """The preview takes its geometry from the pipeline's rule too: Kandinsky 5's channels-last
    latents on HunyuanVideo's VAE preview exactly as the same values channels-first under
    HunyuanVideoPipeline (same latent space, same published factors)."""
    vae = tiny_hunyuan_vae(5, latent_channels=16)
    grid = np.random.default_rng(6).standard_normal((1, 16, 3, 2, 4)).astype(np.float16)
    frames = {}
    for pipeline, latent in (("HunyuanVideoPipeline", grid),
                             ("Kandinsky5T2VPipeline", np.ascontiguousarray(grid.transpose(0, 2, 3, 4, 1)))):
        model = save_model(vae, tmp_path / pipeline, pipeline)
        exp = tmp_path / f"exp-{pipeline}"
        write_config(exp, str(model), 32, 16, 9, 8.0)
        save_npy_gz(exp / "latents" / "prompt_000" / "vid_001" / "step_000.npy.gz", latent)
        result = CliRunner().invoke(cli, ["decode", str(exp), "--decoder", "preview", "--format", "png"])
        assert result.exit_code == 0, result.output
        frames[pipeline] = png_frames(exp / "latents_previews" / "prompt_000" / "vid_001" / "step_000")
    assert frames["HunyuanVideoPipeline"].shape == (9, 16, 32, 3)
    assert np.array_equal(frames["HunyuanVideoPipeline"], frames["Kandinsky5T2VPipeline"])
