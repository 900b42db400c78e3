"""Finding a VAE, loading it through diffusers, and the per-family de-normalisation table.

``FAMILIES`` is the one place that says how each VAE class's pipeline turns the model-space
latent (what ``callback_on_step_end`` sees) into the input of ``vae.decode``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import LatentShapeError, ModelNotFoundError, UnsupportedModelError, first_line
from .experiment import VideoSettings
from .latents import BCTHW, BSC, BTCHW, Layout

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VAE_SUBFOLDER = "vae"


# --------------------------------------------------------------------------- family rules
#
# Each rule mirrors the lines of one diffusers pipeline between the end of its denoising loop and
# ``vae.decode``: the stored latent is what ``callback_on_step_end`` saw (model space, in the
# pipeline's own layout); ``to_grid`` brings it to ``[B, C, T, H, W]``, ``denormalize`` undoes the
# pipeline's normalisation, ``decode`` calls the VAE the way the pipeline does.


def _plain_decode(vae: Any, z: "torch.Tensor") -> "torch.Tensor":
    return vae.decode(z, return_dict=False)[0]


def _same_grid(z: "torch.Tensor", vae: Any, video: VideoSettings) -> "torch.Tensor":
    return z


def _wan_denormalize(z: "torch.Tensor", vae: Any) -> "torch.Tensor":
    """WanPipeline: ``latents / (1 / latents_std) + latents_mean`` (both from ``vae.config``)."""
    import torch

    config = vae.config
    shape = (1, config.z_dim, 1, 1, 1)
    mean = torch.tensor(config.latents_mean, dtype=z.dtype, device=z.device).view(shape)
    std = torch.tensor(config.latents_std, dtype=z.dtype, device=z.device).view(shape)
    return z * std + mean


def _divide_by_scaling_factor(z: "torch.Tensor", vae: Any) -> "torch.Tensor":
    """HunyuanVideoPipeline: ``latents / vae.config.scaling_factor``."""
    return z / vae.config.scaling_factor


def _cogvideox_to_grid(z: "torch.Tensor", vae: Any, video: VideoSettings) -> "torch.Tensor":
    """CogVideoXPipeline: CogVideoX 1.5 denoises ``additional_frames`` extra latent frames (up to a
    multiple of the transformer's ``patch_size_t``) and drops the leading ones
    (``latents[:, additional_frames:]``) before ``decode_latents`` permutes ``[B, F, C, H, W]`` to
    ``[B, C, F, H, W]``; the count follows from ``video_settings.frames``."""
    if video.frames is not None:
        expected = (video.frames - 1) // vae.config.temporal_compression_ratio + 1
        if z.shape[1] > expected:
            z = z[:, z.shape[1] - expected:]
    return z.permute(0, 2, 1, 3, 4)


def _cogvideox_denormalize(z: "torch.Tensor", vae: Any) -> "torch.Tensor":
    """CogVideoXPipeline.decode_latents: ``1 / vae_scaling_factor_image * latents``."""
    return 1 / vae.config.scaling_factor * z


def _mochi_denormalize(z: "torch.Tensor", vae: Any) -> "torch.Tensor":
    """MochiPipeline: ``latents * latents_std / scaling_factor + latents_mean`` when the VAE config
    has mean and std, else ``latents / scaling_factor``."""
    import torch

    config = vae.config
    if getattr(config, "latents_mean", None) is None or getattr(config, "latents_std", None) is None:
        return z / config.scaling_factor
    shape = (1, config.latent_channels, 1, 1, 1)
    mean = torch.tensor(config.latents_mean).view(shape).to(z.device, z.dtype)
    std = torch.tensor(config.latents_std).view(shape).to(z.device, z.dtype)
    return z * std / config.scaling_factor + mean


def _ltx_grid(vae: Any, video: VideoSettings) -> tuple[int, int, int]:
    """LTXPipeline's ``latent_num_frames, latent_height, latent_width`` from the requested video."""
    return ((video.frames - 1) // vae.temporal_compression_ratio + 1,
            video.height // vae.spatial_compression_ratio, video.width // vae.spatial_compression_ratio)


def _ltx_to_grid(z: "torch.Tensor", vae: Any, video: VideoSettings) -> "torch.Tensor":
    """LTXPipeline._unpack_latents with the LTX-Video transformer's patch sizes (1, 1):
    ``[B, T*H*W, C]`` -> ``[B, C, T, H, W]``."""
    t, h, w = _ltx_grid(vae, video)
    batch = z.size(0)
    z = z.reshape(batch, t, h, w, -1, 1, 1, 1)
    return z.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _ltx_denormalize(z: "torch.Tensor", vae: Any) -> "torch.Tensor":
    """LTXPipeline._denormalize_latents with the model's ``latents_mean``/``latents_std`` buffers."""
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
    return z * std / vae.config.scaling_factor + mean


LTX_DECODE_TIMESTEP = 0.0  # LTXPipeline.__call__ default; decode_noise_scale=None means the same value


def _ltx_decode(vae: Any, z: "torch.Tensor") -> "torch.Tensor":
    """LTXPipeline: with ``timestep_conditioning`` the VAE gets ``decode_timestep`` and the latent
    becomes ``(1 - s) * latents + s * noise`` with ``s = decode_noise_scale``; at the defaults
    (0.0, None -> 0.0) that mix is the latent itself, so no noise is drawn."""
    import torch

    if not vae.config.timestep_conditioning:
        return vae.decode(z, None, return_dict=False)[0]
    timestep = torch.tensor([LTX_DECODE_TIMESTEP] * z.shape[0], device=z.device, dtype=z.dtype)
    return vae.decode(z, timestep, return_dict=False)[0]


def _causal_frames(t: int, vae: Any, factor: int) -> int:
    """A causal video VAE: the first latent frame gives one frame, every other one ``factor``."""
    return (t - 1) * factor + 1


def _cogvideox_frames(t: int, vae: Any, factor: int) -> int:
    """AutoencoderKLCogVideoX decodes latent frames in batches of two (the first batch takes the odd
    one out) and keeps the first frame apart only in an odd batch: ``(t-1)*factor+1`` for odd ``t``,
    ``t*factor`` for even ``t``."""
    return _causal_frames(t, vae, factor) if t % 2 else t * factor


def _prod(values: Any) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


@dataclass(frozen=True)
class FamilyRule:
    """How one VAE class's diffusers pipeline decodes the latents it hands to ``callback_on_step_end``."""

    family: str
    mirrors: str  # the diffusers pipeline whose decode path this reproduces
    layout: Layout  # the stored latent's axes
    channels: Callable[[Any], int]  # vae -> size of the layout's C axis
    temporal_factor: Callable[[Any], int]  # vae -> video frames per latent frame
    spatial_factor: Callable[[Any], int]  # vae -> pixels per latent pixel
    denormalize: Callable[["torch.Tensor", Any], "torch.Tensor"]  # ([B,C,T,H,W], vae) -> VAE input
    to_grid: Callable[["torch.Tensor", Any, VideoSettings], "torch.Tensor"] = _same_grid  # layout -> [B,C,T,H,W]
    decode: Callable[[Any, "torch.Tensor"], "torch.Tensor"] = _plain_decode  # (vae, z) -> [B, 3, F, H, W]
    decoded_frames: Callable[[int, Any, int], int] = _causal_frames  # (latent frames, vae, factor) -> frames
    token_grid: Callable[[Any, VideoSettings], tuple[int, int, int]] | None = None  # packed: (T, H, W) of the tokens
    needs: tuple[str, ...] = ()  # video_settings fields ``token_grid`` reads

    def expected_layout(self, vae: Any) -> str:
        """The stored shape this VAE takes, e.g. ``[1, 16, T, H, W]``."""
        return self.layout.describe(C=self.channels(vae))

    def check_shape(self, shape: tuple[int, ...], vae: Any, video: VideoSettings, source: str) -> None:
        """Reject a (batched) latent that cannot fit this VAE, before decoding, naming both shapes."""
        shape = tuple(int(n) for n in shape)
        expected = self.channels(vae)
        axis = self.layout.axes.index("C")
        want = self.expected_layout(vae)
        if shape[axis] != expected:
            hint = "does the config's model id match the experiment?"
            others = [i for i, n in enumerate(shape) if n == expected and i != axis]
            if others:
                hint = (f"axis {others[0]} has {expected}: stored in another layout than the {self.family} pipeline's "
                        f"{self.layout.describe()}?")
            raise LatentShapeError(
                f"{source}: latent {shape} has {shape[axis]} channels but the {self.family} VAE expects "
                f"{expected}, as {want} ({hint})"
            )
        missing = [name for name in self.needs if getattr(video, name) is None]
        if missing:
            raise LatentShapeError(
                f"{source}: packed {self.family} latent {shape} (stored as {want}) needs video_settings "
                f"{', '.join(self.needs)} in the config to unpack into [1, {expected}, T, H, W]; "
                f"missing: {', '.join(missing)}"
            )
        if self.token_grid is not None:
            t, h, w = self.token_grid(vae, video)
            if shape[1] != t * h * w:
                raise LatentShapeError(
                    f"{source}: packed latent {shape} has {shape[1]} tokens but video_settings "
                    f"{video.frames} frames {video.width}x{video.height} give a {t}x{h}x{w} latent grid = "
                    f"{t * h * w} tokens, expected [1, {t * h * w}, {expected}] (does the config match the experiment?)"
                )

    def grid(self, shape: tuple[int, ...], vae: Any, video: VideoSettings) -> tuple[int, ...]:
        """The ``[B, C, T, H, W]`` shape ``to_grid`` makes of a stored ``shape`` (computed on the meta device)."""
        import torch

        return tuple(self.to_grid(torch.empty(shape, device="meta"), vae, video).shape)

    def output_frames(self, shape: tuple[int, ...], vae: Any, video: VideoSettings) -> tuple[int, int, int]:
        """(frames, height, width) that decoding a stored latent of ``shape`` yields."""
        t, h, w = self.grid(shape, vae, video)[2:]
        s = self.spatial_factor(vae)
        return self.decoded_frames(t, vae, self.temporal_factor(vae)), h * s, w * s

    def to_decoder_input(self, z: "torch.Tensor", vae: Any, video: VideoSettings) -> "torch.Tensor":
        """Stored latent -> what the pipeline passes to ``vae.decode``."""
        return self.denormalize(self.to_grid(z, vae, video), vae)


FAMILIES: dict[str, FamilyRule] = {
    "AutoencoderKLWan": FamilyRule(
        family="wan",
        mirrors="diffusers.WanPipeline (pipelines/wan/pipeline_wan.py); Wan2.1 (16 ch) and Wan2.2 (48 ch, patchified)",
        layout=BCTHW,
        channels=lambda vae: vae.config.z_dim,
        temporal_factor=lambda vae: vae.config.scale_factor_temporal or 4,
        spatial_factor=lambda vae: vae.config.scale_factor_spatial or 8,
        denormalize=_wan_denormalize,
    ),
    "AutoencoderKLHunyuanVideo": FamilyRule(
        family="hunyuanvideo",
        mirrors="diffusers.HunyuanVideoPipeline (pipelines/hunyuan_video/pipeline_hunyuan_video.py)",
        layout=BCTHW,
        channels=lambda vae: vae.config.latent_channels,
        temporal_factor=lambda vae: vae.config.temporal_compression_ratio,
        spatial_factor=lambda vae: vae.config.spatial_compression_ratio,
        denormalize=_divide_by_scaling_factor,
    ),
    "AutoencoderKLCogVideoX": FamilyRule(
        family="cogvideox",
        mirrors="diffusers.CogVideoXPipeline (pipelines/cogvideo/pipeline_cogvideox.py, decode_latents)",
        layout=BTCHW,
        channels=lambda vae: vae.config.latent_channels,
        temporal_factor=lambda vae: vae.config.temporal_compression_ratio,
        spatial_factor=lambda vae: 2 ** (len(vae.config.block_out_channels) - 1),
        denormalize=_cogvideox_denormalize,
        to_grid=_cogvideox_to_grid,
        decoded_frames=_cogvideox_frames,
    ),
    "AutoencoderKLMochi": FamilyRule(
        family="mochi",
        mirrors="diffusers.MochiPipeline (pipelines/mochi/pipeline_mochi.py)",
        layout=BCTHW,
        channels=lambda vae: vae.config.latent_channels,
        temporal_factor=lambda vae: _prod(vae.config.temporal_expansions),
        spatial_factor=lambda vae: _prod(vae.config.spatial_expansions),
        denormalize=_mochi_denormalize,
    ),
    "AutoencoderKLLTXVideo": FamilyRule(
        family="ltx-video",
        mirrors="diffusers.LTXPipeline (pipelines/ltx/pipeline_ltx.py: _unpack_latents, _denormalize_latents, "
                "decode_timestep)",
        layout=BSC,
        channels=lambda vae: vae.config.latent_channels,
        temporal_factor=lambda vae: vae.temporal_compression_ratio,
        spatial_factor=lambda vae: vae.spatial_compression_ratio,
        denormalize=_ltx_denormalize,
        to_grid=_ltx_to_grid,
        decode=_ltx_decode,
        token_grid=_ltx_grid,
        needs=("frames", "height", "width"),
    ),
}


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedModel:
    """Where a VAE's ``config.json`` and weights live on this machine."""

    source: str  # what the user or the config named
    folder: Path  # the folder holding the VAE's config.json
    class_name: str
    origin: str  # "local folder", "HF cache", "downloaded", "single file"
    weights_file: Path | None = None  # a single .safetensors file holding the weights (from_single_file)


def hf_cache_dir() -> Path:
    """The hub cache, read from the environment at call time (tests change it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _vae_folder_in(folder: Path, subfolder: str | None = None) -> Path | None:
    """The ``subfolder`` (default: a pipeline folder's ``vae/``, else the folder itself if it is a
    bare VAE) that holds the VAE's ``config.json``."""
    candidates = [folder / subfolder] if subfolder else [folder / VAE_SUBFOLDER, folder]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    return None


def _class_name(folder: Path) -> str:
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read VAE config {config_path}: {exc}") from exc
    name = config.get("_class_name") if isinstance(config, dict) else None
    if not name:
        raise ModelNotFoundError(f"{config_path} has no _class_name: not a diffusers VAE config")
    return str(name)


def _from_cache(repo_id: str, cache: Path, subfolder: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in ([f"{subfolder}/config.json"] if subfolder else [f"{VAE_SUBFOLDER}/config.json", "config.json"]):
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def _single_file(path: Path, source: str, subfolder: str | None, config: str | None) -> ResolvedModel:
    """A ``.safetensors`` file of VAE weights; its class and config come from ``config`` (a VAE or
    model folder, or a repo id), since the file does not name them."""
    if path.suffix != ".safetensors":
        raise ModelNotFoundError(f"model '{source}' is a file but not a .safetensors VAE checkpoint")
    if not config:
        raise ModelNotFoundError(f"model '{source}' is a single weights file: pass --vae-config, a VAE folder, "
                                 f"model folder or repo id holding the VAE's config.json")
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    configured = resolve_model(config, subfolder)
    if configured.class_name not in SINGLE_FILE_LOADABLE_CLASSES:
        loadable = sorted(set(SINGLE_FILE_LOADABLE_CLASSES) & set(FAMILIES))
        raise UnsupportedModelError(f"diffusers cannot load {configured.class_name} from a single file ({source}); "
                                    f"it can for {', '.join(loadable)}: use a model folder instead")
    return ResolvedModel(source, configured.folder, configured.class_name, "single file", path.absolute())


def resolve_model(source: str, subfolder: str | None = None, config: str | None = None,
                  download: bool = True) -> ResolvedModel:
    """Find a VAE: a single ``.safetensors`` file (config from ``config``), a local folder (with or
    without ``vae/``, or its ``subfolder``), else an HF repo id in the cache, else (only when the
    hub is not offline and ``download``) a download of just the VAE files."""
    try:
        return _resolve_model(source, subfolder, config, download)
    except OSError as exc:  # permission denied, I/O error... on the way to the model
        raise ModelNotFoundError(f"model '{source}': cannot read {exc.filename or source}: "
                                 f"{exc.strerror or exc}") from exc


def _resolve_model(source: str, subfolder: str | None, config: str | None, download: bool) -> ResolvedModel:
    path = Path(source).expanduser()
    wanted = f"{subfolder}/config.json" if subfolder else "neither vae/config.json nor config.json"
    looked: list[str] = []
    if path.is_file():
        return _single_file(path, source, subfolder, config)
    if path.exists():
        folder = _vae_folder_in(path, subfolder) if path.is_dir() else None
        if folder is None:
            has = f"no {wanted}" if subfolder else wanted
            raise ModelNotFoundError(f"model '{source}': local path {path.absolute()} has {has}")
        return ResolvedModel(source, folder, _class_name(folder), "local folder")
    looked.append(f"no local folder {path.absolute()}")
    if "/" not in source or source.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model '{source}' not found: {'; '.join(looked)}; and it is not an ORG/NAME repo id")
    cache = hf_cache_dir()
    folder = _from_cache(source, cache, subfolder)
    if folder is not None:
        return ResolvedModel(source, folder, _class_name(folder), "HF cache")
    looked.append(f"not in the HF cache {cache}" + (f" (looked for {subfolder}/config.json)" if subfolder else ""))
    if hub_offline() or not download:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "looking locally only"
        raise ModelNotFoundError(f"model '{source}' not found: {'; '.join(looked)}; {why}, no download tried")
    return _download(source, cache, looked, subfolder)


def _download(repo_id: str, cache: Path, looked: list[str], subfolder: str | None = None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    sub = subfolder or VAE_SUBFOLDER
    log.info("downloading the VAE of %s (only its %s/ files)", repo_id, sub)
    patterns = [f"{sub}/*"] if subfolder else [f"{VAE_SUBFOLDER}/*", "config.json", "diffusion_pytorch_model*"]
    try:
        snapshot = Path(snapshot_download(repo_id, cache_dir=str(cache), allow_patterns=patterns))
    except Exception as exc:  # hub errors come in many classes; all mean "not found from here"
        raise ModelNotFoundError(
            f"model '{repo_id}' not found: {'; '.join(looked)}; download failed: {first_line(exc)}"
        ) from exc
    folder = _vae_folder_in(snapshot, subfolder)
    if folder is None:
        raise ModelNotFoundError(f"model '{repo_id}': downloaded snapshot {snapshot} holds no VAE config")
    return ResolvedModel(repo_id, folder, _class_name(folder), "downloaded")


def family_rule(class_name: str) -> FamilyRule:
    try:
        return FAMILIES[class_name]
    except KeyError:
        raise UnsupportedModelError(
            f"VAE class {class_name} is not supported yet (supported: {', '.join(sorted(FAMILIES))})"
        ) from None


def _vae_class(resolved: ResolvedModel) -> Any:
    import diffusers

    cls = getattr(diffusers, resolved.class_name, None)
    if cls is None:
        raise UnsupportedModelError(
            f"diffusers {diffusers.__version__} has no class {resolved.class_name} (needed by {resolved.folder})"
        )
    return cls


def vae_skeleton(resolved: ResolvedModel) -> Any:
    """The VAE built from its config on the meta device: its config, ratios and parameter count,
    without reading weights."""
    import torch

    cls = _vae_class(resolved)
    with torch.device("meta"):
        return cls.from_config(cls.load_config(str(resolved.folder), local_files_only=True))


def load_vae(resolved: ResolvedModel, device: "torch.device", dtype: "torch.dtype") -> tuple[Any, FamilyRule]:
    """Load the VAE from its local folder (never touches the network) onto ``device``."""
    rule = family_rule(resolved.class_name)
    cls = _vae_class(resolved)
    try:
        if resolved.weights_file is not None:
            vae = cls.from_single_file(str(resolved.weights_file), config=str(resolved.folder), torch_dtype=dtype,
                                       local_files_only=True)
        else:
            vae = cls.from_pretrained(str(resolved.folder), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        where = resolved.weights_file or resolved.folder
        raise ModelNotFoundError(f"model '{resolved.source}': cannot load VAE from {where}: {first_line(exc)}") from exc
    vae.to(device).eval()
    vae.requires_grad_(False)
    return vae, rule
