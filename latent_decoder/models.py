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

from .errors import LatentShapeError, ModelNotFoundError, UnsupportedModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VAE_SUBFOLDER = "vae"


# --------------------------------------------------------------------------- family rules


def _wan_denormalize(z: "torch.Tensor", config: Any) -> "torch.Tensor":
    """WanPipeline: ``latents / (1 / latents_std) + latents_mean`` right before ``vae.decode``."""
    import torch

    shape = (1, config.z_dim, 1, 1, 1)
    mean = torch.tensor(config.latents_mean, dtype=z.dtype, device=z.device).view(shape)
    std = torch.tensor(config.latents_std, dtype=z.dtype, device=z.device).view(shape)
    return z * std + mean


@dataclass(frozen=True)
class FamilyRule:
    """How one VAE class's diffusers pipeline decodes its latents."""

    family: str
    mirrors: str  # the diffusers pipeline whose decode path this reproduces
    channels: Callable[[Any], int]
    denormalize: Callable[["torch.Tensor", Any], "torch.Tensor"]
    temporal_factor: Callable[[Any], int]
    spatial_factor: Callable[[Any], int]

    def check_shape(self, shape: tuple[int, ...], config: Any, source: str) -> None:
        """Reject a ``[1, C, T, H, W]`` latent that cannot fit this VAE, before decoding."""
        expected = self.channels(config)
        if shape[1] != expected:
            raise LatentShapeError(
                f"{source}: latent {tuple(shape)} has {shape[1]} channels but the {self.family} VAE "
                f"expects {expected} (does the config's model id match the experiment?)"
            )

    def output_frames(self, shape: tuple[int, ...], config: Any) -> tuple[int, int, int]:
        """(frames, height, width) that decoding a ``[1, C, T, H, W]`` latent yields."""
        t, h, w = shape[2:]
        return (t - 1) * self.temporal_factor(config) + 1, h * self.spatial_factor(config), w * self.spatial_factor(config)


FAMILIES: dict[str, FamilyRule] = {
    "AutoencoderKLWan": FamilyRule(
        family="wan",
        mirrors="diffusers.WanPipeline (pipelines/wan/pipeline_wan.py), also Wan2.2",
        channels=lambda c: c.z_dim,
        denormalize=_wan_denormalize,
        temporal_factor=lambda c: c.scale_factor_temporal or 4,
        spatial_factor=lambda c: c.scale_factor_spatial or 8,
    ),
}


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedModel:
    """Where a VAE's ``config.json`` and weights live on this machine."""

    source: str  # what the user or the config named
    folder: Path  # the folder holding the VAE's config.json
    class_name: str
    origin: str  # "local folder", "HF cache", "downloaded"


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


def _vae_folder_in(folder: Path) -> Path | None:
    """A pipeline folder's ``vae/`` subfolder, else the folder itself if it is a bare VAE."""
    if (folder / VAE_SUBFOLDER / "config.json").is_file():
        return folder / VAE_SUBFOLDER
    if (folder / "config.json").is_file():
        return folder
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


def _from_cache(repo_id: str, cache: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in (f"{VAE_SUBFOLDER}/config.json", "config.json"):
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache))
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def resolve_model(source: str) -> ResolvedModel:
    """Find a VAE: a local folder (with or without ``vae/``), else an HF repo id in the cache,
    else (only when the hub is not offline) a download of just the VAE files."""
    path = Path(source).expanduser()
    looked: list[str] = []
    if path.exists():
        folder = _vae_folder_in(path) if path.is_dir() else None
        if folder is None:
            raise ModelNotFoundError(
                f"model '{source}': local path has neither vae/config.json nor config.json"
            )
        return ResolvedModel(source, folder, _class_name(folder), "local folder")
    looked.append(f"no local folder {path.absolute()}")
    if "/" not in source or source.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model '{source}' not found: {'; '.join(looked)}; and it is not an ORG/NAME repo id")
    cache = hf_cache_dir()
    folder = _from_cache(source, cache)
    if folder is not None:
        return ResolvedModel(source, folder, _class_name(folder), "HF cache")
    looked.append(f"not in the HF cache {cache}")
    if hub_offline():
        raise ModelNotFoundError(f"model '{source}' not found: {'; '.join(looked)}; HF_HUB_OFFLINE is set, no download tried")
    return _download(source, cache, looked)


def _download(repo_id: str, cache: Path, looked: list[str]) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    log.info("downloading the VAE of %s (only its vae/ files)", repo_id)
    try:
        snapshot = Path(
            snapshot_download(
                repo_id,
                cache_dir=str(cache),
                allow_patterns=[f"{VAE_SUBFOLDER}/*", "config.json", "diffusion_pytorch_model*"],
            )
        )
    except Exception as exc:  # hub errors come in many classes; all mean "not found from here"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"model '{repo_id}' not found: {'; '.join(looked)}; download failed: {reason}") from exc
    folder = _vae_folder_in(snapshot)
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


def load_vae(resolved: ResolvedModel, device: "torch.device", dtype: "torch.dtype") -> tuple[Any, FamilyRule]:
    """Load the VAE from its local folder (never touches the network) onto ``device``."""
    import diffusers

    rule = family_rule(resolved.class_name)
    cls = getattr(diffusers, resolved.class_name, None)
    if cls is None:
        raise UnsupportedModelError(
            f"diffusers {diffusers.__version__} has no class {resolved.class_name} (needed by {resolved.folder})"
        )
    try:
        vae = cls.from_pretrained(str(resolved.folder), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"model '{resolved.source}': cannot load VAE from {resolved.folder}: {reason}") from exc
    vae.to(device).eval()
    vae.requires_grad_(False)
    return vae, rule
