"""Shared parts of the family tests: a family's test case, the pipeline reference, decoding it with
the real CLI or the library, and a real tiny pipeline run stored as experiments store it.

A case is a tiny random VAE (with non-default normalisation, so a wrong de-normalisation shows)
saved with ``save_pretrained`` into ``model/vae`` (plus ``model/model_index.json`` naming the
pipeline when the case has one), a latent in the layout the pipeline's loop hands to
``callback_on_step_end``, and the frames the pipeline's own decode lines make of it at a dtype.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
from click.testing import CliRunner
from PIL import Image

from latent_decoder import decode_latent
from latent_decoder.cli import cli
from latent_decoder.synthetic import save_npy_gz, write_config
from latent_decoder.experiment import VideoSettings

FPS = 8.0
PARITY_DB = 55.0  # float32: rounding to 8 bits alone gives ~59 dB; a small normalisation error fails
LOW_PRECISION_DB = 60.0  # bfloat16/float16: the same operations in the same order give the same frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def random_stats(seed: int, n: int) -> tuple[list[float], list[float]]:
    """Clearly non-trivial per-channel statistics, so a missing or wrong de-normalisation shows."""
    rng = np.random.default_rng(seed)
    return [float(x) for x in rng.normal(0.0, 1.0, n)], [float(x) for x in rng.uniform(1.5, 4.0, n)]


def tiny_hunyuan_vae(seed: int, latent_channels: int = 4) -> Any:
    """A tiny ``AutoencoderKLHunyuanVideo`` (HunyuanVideo and Kandinsky 5), HunyuanVideo's scaling factor."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, scaling_factor=0.476986,
        spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
    ).eval()


def tiny_mochi_vae(seed: int) -> Any:
    """A tiny ``AutoencoderKLMochi``: 12 latent channels, 8x spatial and 6x temporal expansion (what
    MochiPipeline hard-codes), random per-channel statistics."""
    import torch
    from diffusers import AutoencoderKLMochi

    mean, std = random_stats(seed, 12)
    torch.manual_seed(seed)
    return AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
        latents_mean=mean, latents_std=std, scaling_factor=0.8,
    ).eval()


# Plausible wrong de-normalisations (``(z, ctx) -> z``) for the negative controls: each still makes a video.
def times_scaling_factor(z: Any, ctx: Any) -> Any:
    return z * ctx.config.scaling_factor


def scaling_factor_only(z: Any, ctx: Any) -> Any:
    return z / ctx.config.scaling_factor


def divide_by_std(z: Any, ctx: Any) -> Any:
    """Wan's statistics applied the wrong way round: ``z / std + mean``."""
    import torch

    c = ctx.config
    shape = (1, c.z_dim, 1, 1, 1)
    return (z / torch.tensor(c.latents_std).view(shape).to(z) + torch.tensor(c.latents_mean).view(shape).to(z))


def postprocess(video: Any) -> np.ndarray:
    """The pipelines' ``video_processor.postprocess_video(video, output_type="np")``, in 0..255."""
    from diffusers.video_processor import VideoProcessor

    return np.asarray(VideoProcessor().postprocess_video(video.float(), output_type="np")[0], np.float64) * 255.0


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclasses.dataclass(frozen=True)
class FamilyCase:
    """One family's test case: its tiny VAE, a stored latent's shape and the video it stands for."""

    family: str  # the rule's name (what the summary records)
    vae_class: str
    build: Callable[[], Any]
    grid: tuple[int, int, int, int]  # C, T, H, W of the unpacked latent
    video: VideoSettings
    reference: Callable[[Any, Any, VideoSettings], Any]  # (vae, stored latent, video) -> pipeline's [B,3,F,H,W]
    store: Callable[[np.ndarray], np.ndarray] = lambda g: g  # [1,C,T,H,W] -> the pipeline's layout
    extra_frames: int = 0  # CogVideoX 1.5: padded latent frames the pipeline drops before decoding
    pipeline: str | None = None  # model_index.json _class_name, when the case is a pipeline folder
    index: dict[str, Any] = dataclasses.field(default_factory=dict)  # more model_index.json fields
    modular: bool = False  # a modular pipeline: its folder has modular_model_index.json instead


@dataclasses.dataclass
class Case:
    family: FamilyCase
    model_dir: Path
    latent: np.ndarray  # as stored: the pipeline's layout, float16 values
    vae: Any  # the float32 VAE the model folder holds
    expected: dict[str, np.ndarray]  # dtype -> the pipeline's frames, [F, H, W, 3] in 0..255

    def reference(self, dtype: str = "float32") -> np.ndarray:
        """The pipeline's frames with the VAE at ``dtype`` (the pipeline's loop latents stay float32)."""
        import torch

        if dtype not in self.expected:
            vae = copy.deepcopy(self.vae).to(torch_dtype(dtype))
            with torch.no_grad():
                video = self.family.reference(vae, torch.from_numpy(self.latent), self.family.video)
            self.expected[dtype] = postprocess(video)
        return self.expected[dtype]


def save_model(vae: Any, model_dir: Path, pipeline: str | None = None, index: dict[str, Any] | None = None,
               modular: bool = False) -> Path:
    """``vae`` in ``model_dir/vae``; with ``pipeline``, a ``model_index.json`` naming it, as
    ``DiffusionPipeline.save_pretrained`` writes one, or (``modular``) a ``modular_model_index.json``, as
    ``ModularPipeline.save_pretrained`` does (each component a ``[library, class, loading spec]`` triple)."""
    vae.save_pretrained(model_dir / "vae")
    if pipeline:
        component = ["diffusers", type(vae).__name__]
        if modular:
            component.append({"pretrained_model_name_or_path": None, "subfolder": "vae", "type_hint": list(component)})
        data = {"_class_name": pipeline, "_diffusers_version": "0.42.1", "vae": component, **(index or {})}
        (model_dir / ("modular_model_index.json" if modular else "model_index.json")).write_text(json.dumps(data))
    return model_dir


_BUILT: dict[tuple[str, Path], Case] = {}


def build_case(name: str, cases: dict[str, FamilyCase], models_dir: Path) -> Case:
    """The family's tiny VAE saved as a model folder, a stored latent and the pipeline's frames (once)."""
    import torch

    key = (name, models_dir)
    if key not in _BUILT:
        family = cases[name]
        vae = family.build()
        model_dir = save_model(vae, models_dir / name, family.pipeline, family.index, family.modular)
        c, t, h, w = family.grid
        rng = np.random.default_rng(sorted(cases).index(name))
        grid = rng.standard_normal((1, c, t + family.extra_frames, h, w)).astype(np.float16).astype(np.float32)
        stored = np.ascontiguousarray(family.store(grid))
        with torch.no_grad():
            video = family.reference(vae, torch.from_numpy(stored), family.video)
        _BUILT[key] = Case(family, model_dir, stored, vae, {"float32": postprocess(video)})
    return _BUILT[key]


def write_experiment(root: Path, model: Path | str, video: VideoSettings, latent: np.ndarray,
                     extra_config: str = "") -> Path:
    write_config(root, str(model), video.width, video.height, video.frames, FPS)
    if extra_config:
        config = root / "configs" / "generation_config.yaml"
        config.write_text(config.read_text() + extra_config)
    save_npy_gz(root / "latents" / "prompt_000" / "vid_001" / "step_000.npy.gz", latent.astype(np.float16))
    return root


def png_frames(folder: Path) -> np.ndarray:
    files = sorted(folder.glob("frame_*.png"))
    assert files, f"no frames in {folder}"
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def cli_frames(case: Case, tmp_path: Path, *args: str, extra_config: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the case's latent with the real CLI to PNG frames; returns the frames and the summary."""
    exp = write_experiment(tmp_path / "exp", case.model_dir, case.family.video, case.latent, extra_config)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png", *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    return png_frames(exp / "latents_videos" / "prompt_000" / "vid_001" / "step_000"), summary


def assert_inspect_says(case: Case, root: Path, words: list[str]) -> str:
    """``latent-decoder inspect`` on an experiment of the case's latent exits 0 and prints every line
    part in ``words``; returns its output."""
    exp = write_experiment(root, case.model_dir, case.family.video, case.latent)
    result = CliRunner().invoke(cli, ["inspect", str(exp)])
    assert result.exit_code == 0, result.output
    for word in words:
        assert word in result.output, result.output
    return result.output


def in_memory(case: Case, latent: np.ndarray | None = None, dtype: str = "float32", **kwargs: Any) -> np.ndarray:
    v = case.family.video
    return decode_latent(case.latent if latent is None else latent, str(case.model_dir), device="cpu", dtype=dtype,
                         frames=v.frames, height=v.height, width=v.width, **kwargs)


def assert_wrong_rules_caught(case: Case, wrongs: dict[str, Callable[..., Any]], monkeypatch: Any,
                              field: str = "denormalize") -> None:
    """Each plausible wrong rule still makes a video, and the parity check rejects it."""
    from latent_decoder import families

    rule = families.FAMILIES[case.family.family]
    for name, wrong in {"none": lambda z, ctx: z, **wrongs}.items() if field == "denormalize" else wrongs.items():
        monkeypatch.setitem(families.FAMILIES, rule.name, dataclasses.replace(rule, **{field: wrong}))
        frames = in_memory(case)
        assert frames.shape == case.reference().shape, name
        assert psnr(frames, case.reference()) < PARITY_DB, name
    monkeypatch.setitem(families.FAMILIES, rule.name, rule)


def capture(store: list[np.ndarray], key: str = "latents") -> Callable[..., dict[str, Any]]:
    """A ``callback_on_step_end`` keeping a copy of every step's latent, as the experiments' generation
    scripts do (a copy: some pipelines update the latent in place, e.g. Kandinsky 5)."""
    def on_step_end(_pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        store.append(kwargs[key].detach().float().cpu().numpy().copy())
        return {}

    return on_step_end


def store_and_decode(tmp_path: Path, model_dir: Path, captured: list[np.ndarray], video: VideoSettings,
                     *args: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Store the per-step latents as an experiment of the saved model, decode it with the CLI to PNG;
    returns the first and last steps' frames and the summary."""
    exp = tmp_path / "exp"
    write_config(exp, str(model_dir), video.width, video.height, video.frames, FPS)
    for i, latent in enumerate(captured):
        save_npy_gz(exp / "latents" / "prompt_000" / "vid_001" / f"step_{i:03d}.npy.gz", latent)
    result = CliRunner().invoke(cli, ["decode", str(exp), "--device", "cpu", "--format", "png", *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    out_dir = exp / "latents_videos" / "prompt_000" / "vid_001"
    summary = json.loads((exp / "latents_videos" / "decode_summary.json").read_text())
    return png_frames(out_dir / "step_000"), png_frames(out_dir / f"step_{len(captured) - 1:03d}"), summary


def assert_run_decodes_to_its_own_frames(tmp_path: Path, vae: Any, pipeline: str, captured: list[np.ndarray],
                                         video: VideoSettings, out: Any, family: str) -> None:
    """A tiny pipeline run's captured steps, stored under a model folder naming ``pipeline``: the
    last step decodes to the pipeline's own output frames with ``family``'s rule, chosen by the
    pipeline, and the first step is further from them."""
    expected = np.asarray(out.frames[0], np.float64) * 255.0
    first, last, summary = store_and_decode(tmp_path, save_model(vae, tmp_path / "model", pipeline), captured, video)
    assert summary["model"]["family"] == family
    assert summary["model"]["family_rule"].startswith(f"pipeline {pipeline} in ")
    assert last.shape == expected.shape == (video.frames, video.height, video.width, 3)
    assert psnr(last, expected) >= PARITY_DB
    assert psnr(first, expected) < psnr(last, expected)


def decoded_by_blocks(blocks: dict[str, Any], vae: Any, component: str = "vae", others: dict[str, Any] | None = None,
                      **inputs: Any) -> Any:
    """A modular pipeline's own decode blocks, run around ``vae`` (its ``component``, beside ``others``) as
    the pipeline assembles them; what their ``vae.decode`` returned, joined on the frame axis (the video
    before postprocessing, which the harness does as for every rule)."""
    import torch
    from diffusers.modular_pipelines import SequentialPipelineBlocks

    decoded: list[Any] = []
    decode = vae.decode

    def recording(*args: Any, **kwargs: Any) -> Any:
        out = decode(*args, **kwargs)
        decoded.append(out[0])
        return out

    pipe = SequentialPipelineBlocks.from_blocks_dict(blocks).init_pipeline()
    pipe.update_components(**{component: vae})
    for name, module in (others or {}).items():  # components the full pipeline loads, which these blocks only read
        setattr(pipe, name, module)
    vae.decode = recording
    try:
        pipe(**inputs, output_type="np", output="videos")
    finally:
        del vae.decode
    return torch.cat(decoded, dim=2)
