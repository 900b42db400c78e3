"""Finding a VAE (local folder, single file, HF cache, download) and loading it through diffusers.

Besides the VAE's own ``config.json``, resolution reads what the model folder says about the
pipeline around it (``model_index.json``, or ``modular_model_index.json`` for a modular pipeline,
and the transformer's and scheduler's configs): the family rules in ``families/`` are chosen by the
pipeline first.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import ModelNotFoundError, UnsupportedModelError, describe_error, first_line
from .families import PipelineFacts, supported_vae_classes

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VAE_SUBFOLDER = "vae"
MODEL_INDEX = "model_index.json"
MODULAR_INDEX = "modular_model_index.json"  # a modular pipeline's (MiniMax H3, wan_animate_2...): read when no model_index.json
WEIGHTS_NAME = "diffusion_pytorch_model"  # diffusers' weights file stem (.safetensors, .bin, sharded)
PIPELINE_FILES = {"transformer": "transformer/config.json", "scheduler": "scheduler/scheduler_config.json"}


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedModel:
    """Where a VAE's ``config.json`` and weights live on this machine."""

    source: str  # what the user or the config named
    folder: Path  # the folder holding the VAE's config.json
    class_name: str
    origin: str  # "local folder", "HF cache", "downloaded", "single file"
    weights_file: Path | None = None  # a single .safetensors file holding the weights (from_single_file)
    pipeline: PipelineFacts = field(default_factory=PipelineFacts)  # what model_index.json & co. say (empty for a bare VAE)


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


def _read_json(path: Path | None) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is absent or unreadable (these files only refine
    the choice of rule, so a broken one must not stop a run that the VAE config alone can serve)."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _pipeline_facts(find: Callable[[str], Path | None]) -> PipelineFacts:
    """``model_index.json`` (else ``modular_model_index.json``) and the transformer/scheduler configs,
    found by ``find(relative path)``. A folder with both is loaded by ``DiffusionPipeline`` from the
    first, which the experiment most likely ran."""
    index_path = find(MODEL_INDEX)
    index = _read_json(index_path)
    if not index:
        index_path = find(MODULAR_INDEX)
        index = _read_json(index_path)
    if not index:
        return PipelineFacts()
    return PipelineFacts(class_name=index.get("_class_name"), index=index,
                         transformer=_read_json(find(PIPELINE_FILES["transformer"])),
                         scheduler=_read_json(find(PIPELINE_FILES["scheduler"])), source=str(index_path))


def _local_pipeline(root: Path, vae_folder: Path) -> PipelineFacts:
    """The pipeline folder is ``root`` when it holds ``model_index.json``; a VAE folder given directly
    (``model/vae``) belongs to its parent's pipeline when that index names it."""
    if not any((root / name).is_file() for name in (MODEL_INDEX, MODULAR_INDEX)) and vae_folder == root:
        parent = root.parent
        if any(vae_folder.name in _read_json(parent / name) for name in (MODEL_INDEX, MODULAR_INDEX)):
            root = parent
    return _pipeline_facts(lambda rel: root / rel)


def _cached_pipeline(repo_id: str, cache: Path) -> PipelineFacts:
    from huggingface_hub import try_to_load_from_cache

    def find(rel: str) -> Path | None:
        hit = try_to_load_from_cache(repo_id, rel, cache_dir=str(cache))
        return Path(hit) if isinstance(hit, str) else None

    return _pipeline_facts(find)


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
        loadable = sorted(set(SINGLE_FILE_LOADABLE_CLASSES) & set(supported_vae_classes()))
        raise UnsupportedModelError(f"diffusers cannot load {configured.class_name} from a single file ({source}); "
                                    f"it can for {', '.join(loadable)}: use a model folder instead")
    return ResolvedModel(source, configured.folder, configured.class_name, "single file", path.absolute(),
                         configured.pipeline)


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
        return ResolvedModel(source, folder, _class_name(folder), "local folder",
                             pipeline=_local_pipeline(path, folder))
    looked.append(f"no local folder {path.absolute()}")
    if "/" not in source or source.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model '{source}' not found: {'; '.join(looked)}; and it is not an ORG/NAME repo id")
    cache = hf_cache_dir()
    folder = _from_cache(source, cache, subfolder)
    if folder is not None:
        return ResolvedModel(source, folder, _class_name(folder), "HF cache",
                             pipeline=_cached_pipeline(source, cache))
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
    patterns += [MODEL_INDEX, MODULAR_INDEX, *PIPELINE_FILES.values()]
    try:
        snapshot = Path(snapshot_download(repo_id, cache_dir=str(cache), allow_patterns=patterns))
    except Exception as exc:  # hub errors come in many classes; all mean "not found from here"
        raise ModelNotFoundError(
            f"model '{repo_id}' not found: {'; '.join(looked)}; download failed: {first_line(exc)}"
        ) from exc
    folder = _vae_folder_in(snapshot, subfolder)
    if folder is None:
        raise ModelNotFoundError(f"model '{repo_id}': downloaded snapshot {snapshot} holds no VAE config")
    return ResolvedModel(repo_id, folder, _class_name(folder), "downloaded",
                         pipeline=_pipeline_facts(lambda rel: snapshot / rel))


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


def _check_config(resolved: ResolvedModel, cls: Any) -> None:
    """A config the class cannot be built from is one ``ModelNotFoundError`` line naming it."""
    try:
        vae_skeleton(resolved)
    except Exception as exc:  # a value of the wrong type or shape raises whatever the class's __init__ does
        raise ModelNotFoundError(f"model '{resolved.source}': {resolved.folder / 'config.json'} is not a valid "
                                 f"{cls.__name__} config: {describe_error(exc)}") from exc


def load_vae(resolved: ResolvedModel, device: "torch.device", dtype: "torch.dtype") -> Any:
    """Load the VAE from its local folder (never touches the network) onto ``device``. A config the
    class cannot be built from, or weights that are missing, truncated or of another shape, is one
    ``ModelNotFoundError`` line naming the file (the config is looked at only when loading fails: a
    model that loads needs no second build)."""
    cls = _vae_class(resolved)
    if resolved.weights_file is None and not any(resolved.folder.glob(f"{WEIGHTS_NAME}*")):
        _check_config(resolved, cls)
        raise ModelNotFoundError(f"model '{resolved.source}': {resolved.folder} holds no weights file "
                                 f"({WEIGHTS_NAME}.safetensors)")
    where = resolved.weights_file or resolved.folder
    try:
        if resolved.weights_file is not None:
            vae = cls.from_single_file(str(resolved.weights_file), config=str(resolved.folder), torch_dtype=dtype,
                                       local_files_only=True)
        else:
            vae = cls.from_pretrained(str(resolved.folder), torch_dtype=dtype, local_files_only=True)
    except Exception as exc:  # the weights: missing, truncated, not safetensors, tensors of other shapes
        _check_config(resolved, cls)
        raise ModelNotFoundError(f"model '{resolved.source}': cannot load the VAE weights in {where}: "
                                 f"{first_line(exc)}") from exc
    vae.to(device).eval()
    vae.requires_grad_(False)
    return vae
