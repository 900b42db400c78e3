"""What a tiny run uses: the model's family rule and latent geometry (from its VAE config, no weights),
and the tiny decoder file, found in this order:

1. ``--tiny-weights FILE``;
2. a decoder distilled for this experiment, ``EXP/tiny_decoder/`` (its card must name this model's VAE);
3. the tiny decoder folder: ``$LATENT_DECODER_TINY_DIR``, by default
   ``${XDG_CACHE_HOME:-~/.cache}/latent-decoder/tiny``, holding the published files under their names
   (or a diffusers ``AutoencoderTiny`` folder under its HF repo's name, e.g. ``taesd/``);
4. the HF cache (any cached repo holding a published file under its name, or the published
   ``AutoencoderTiny`` repo's weights); nothing is ever downloaded.

Which published file fits is the family rule's (``Family.tiny``); the file's own tensors decide its
configuration, which must fit the latent space: its channels, frames per latent frame and pixels per
latent pixel (one line naming both when not).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import LatentShapeError, ModelNotFoundError, TinyMismatchError, TinyWeightsNotFoundError
from ..families import DecodeContext, Family, TinySpace, detect
from ..models import WEIGHTS_NAME, ResolvedModel, hf_cache_dir, resolve_model, vae_skeleton
from .checkpoint import SUFFIXES, TinyCheckpoint, load_checkpoint
from .distilled import DISTILLED_DIRNAME, WEIGHTS_FILE, check_card, check_weights, distilled_dir, read_card

log = logging.getLogger(__name__)

TINY_DIR_ENV = "LATENT_DECODER_TINY_DIR"
DIFFUSERS_WEIGHTS = f"{WEIGHTS_NAME}.safetensors"  # an AutoencoderTiny folder's weights file


def tiny_dir() -> Path:
    """The tiny decoder folder (read from the environment at call time; tests change it)."""
    if os.environ.get(TINY_DIR_ENV):
        return Path(os.environ[TINY_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "latent-decoder" / "tiny"


def local_model(model: str, subfolder: str | None, config: str | None) -> ResolvedModel:
    """The model's VAE config on this machine (local folder, single file's config, HF cache): the tiny
    decoder needs its family rule and geometry, never its weights, so nothing is downloaded."""
    try:
        return resolve_model(model, subfolder, config, download=False)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc} (--decoder tiny reads the VAE's config.json, never its weights: "
                                 f"put the model's vae/config.json on this machine)") from None


def _names(space: TinySpace) -> list[str]:
    return [stem + suffix for stem in space.files for suffix in SUFFIXES]


def _in_folder(folder: Path, space: TinySpace) -> Path | None:
    """A published file under its own name, else an ``AutoencoderTiny`` folder under its repo's name."""
    folder = folder.absolute()
    candidates = [folder / name for name in _names(space)]
    candidates += [folder / repo.split("/")[-1] / DIFFUSERS_WEIGHTS for repo in space.diffusers_repos]
    return next((path for path in candidates if path.is_file()), None)


def _in_hf_cache(space: TinySpace) -> Path | None:
    """A published file under its own name in any cached repo's snapshot (top level or one folder down),
    preferred file first; else a cached ``AutoencoderTiny`` repo's weights."""
    cache = hf_cache_dir().absolute()
    snapshots = sorted(cache.glob("models--*/snapshots/*"))
    for name in _names(space):
        for snapshot in snapshots:
            for found in (snapshot / name, *sorted(snapshot.glob(f"*/{name}"))):
                if found.is_file():
                    return found
    for repo in space.diffusers_repos:
        found = sorted(cache.glob(f"models--{repo.replace('/', '--')}/snapshots/*/{DIFFUSERS_WEIGHTS}"))
        if found:
            return found[0]
    return None


def _wanted(space: TinySpace) -> str:
    """What the missing-file line asks for."""
    files = " or ".join(f"{stem}.safetensors/.pth" for stem in space.files)
    return files + "".join(f" or the {repo} AutoencoderTiny folder" for repo in space.diffusers_repos)


def _get(space: TinySpace) -> str:
    repos = "".join(f", or the HF hub's AutoencoderTiny folder {repo} (as {repo.split('/')[-1]}/)"
                    for repo in space.diffusers_repos)
    return f"get {space.files[0]}{space.suffix} from {space.source}{repos}"


def published_file(space: TinySpace) -> Path | None:
    """The published file for these latents in the tiny decoder folder, else in the HF cache; None when
    neither holds one (nothing is downloaded)."""
    return _in_folder(tiny_dir(), space) or _in_hf_cache(space)


@dataclass(frozen=True)
class TinySetup:
    """The rule, geometry and decoder file of a tiny run."""

    model: ResolvedModel
    rule: Family
    vae: Any  # the VAE skeleton (meta device: config and ratios, no weights)
    checkpoint: TinyCheckpoint
    how: str  # where the file was found
    space: TinySpace | None  # the published files for these latents (None: the family has none)
    card: dict[str, Any] | None = None  # a distilled decoder's card

    @property
    def segment(self) -> int | None:
        return self.space.segment if self.space is not None else None

    def describe(self) -> dict[str, Any]:
        c = self.checkpoint
        return {"decoder": "tiny", "tiny_file": str(c.path), "tiny_name": c.path.name, "tiny_identity": c.identity,
                "tiny_from": self.how, "tiny_config": c.config.describe(), "tiny_card": self.card}


def find_weights(experiment_root: Path, model: ResolvedModel, rule: Family, channels: int, model_id: str,
                 flag: str | Path | None) -> Path:
    """The tiny decoder file for these latents (see the module's docstring for the order). Raises a
    one-line ``TinyWeightsNotFoundError`` that says where it looked and which file to get."""
    if flag:
        return Path(flag).expanduser().absolute()
    distilled = distilled_dir(experiment_root)
    if (distilled / WEIGHTS_FILE).is_file():
        return distilled / WEIGHTS_FILE
    space = rule.tiny_space(channels, model_id)
    label = f"{rule.label} latents ({channels} channels) of {model.source}"
    if space is None:
        raise TinyWeightsNotFoundError(f"no published tiny decoder fits the {label}, and {distilled} holds none: "
                                       f"pass --tiny-weights FILE")
    folder = tiny_dir()
    found = published_file(space)
    if found is None:
        raise TinyWeightsNotFoundError(
            f"no tiny decoder for the {label}: looked for {_wanted(space)} in {distilled}, in {folder} "
            f"(${TINY_DIR_ENV}) and in the HF cache {hf_cache_dir()}; {_get(space)} into {folder}, "
            f"or pass --tiny-weights FILE")
    return found


def source_of(path: Path, model: ResolvedModel) -> tuple[str, dict[str, Any] | None]:
    """Where a tiny decoder file comes from, as ``inspect`` and the summary say it, and a distilled
    decoder's card (refused in one line when it names another VAE than ``model``'s)."""
    if path.name == WEIGHTS_FILE and path.parent.name == DISTILLED_DIRNAME:
        card = read_card(path.parent)
        check_card(card, model, path.parent)
        return f"distilled for this experiment ({path.parent})", card
    folder = tiny_dir()
    if path.is_relative_to(folder.absolute()):
        return f"the tiny decoder folder {folder}" + (f" (${TINY_DIR_ENV})" if os.environ.get(TINY_DIR_ENV) else ""), None
    cache = hf_cache_dir().absolute()
    if path.is_relative_to(cache) and path.relative_to(cache).parts[0].startswith("models--"):
        repo = path.relative_to(cache).parts[0].removeprefix("models--").replace("--", "/")
        return f"the HF cache ({repo})", None
    return "--tiny-weights", None


def check_fit(checkpoint: TinyCheckpoint, rule: Family, vae: Any, model: str, space: TinySpace | None) -> None:
    """The decoder must make the full VAE's frames from the experiment's latents: same latent channels,
    frames per latent frame and pixels per latent pixel. One line naming both when not."""
    config = checkpoint.config
    channels = rule.channels(vae)
    hint = f"; the {rule.label} file is {space.files[0]}" if space is not None else ""
    if config.latent_channels != channels:
        raise TinyMismatchError(f"{checkpoint.path}: a tiny decoder for {config.latent_channels}-channel latents, "
                                f"but the {rule.label} latents of {model} have {channels} channels{hint}")
    temporal, spatial = rule.temporal_factor(vae), rule.spatial_factor(vae)
    if (config.t_upscale, config.spatial) != (temporal, spatial):
        raise TinyMismatchError(f"{checkpoint.path}: a tiny decoder making {config.t_upscale} frames per latent frame "
                                f"at {config.spatial}x, but the {rule.label} VAE of {model} makes {temporal} at "
                                f"{spatial}x{hint}")


def resolve_tiny(experiment_root: Path, model_id: str, subfolder: str | None = None, config: str | None = None,
                 family: str | None = None, flag: str | Path | None = None,
                 model: ResolvedModel | None = None) -> TinySetup:
    """Everything a tiny run needs but the device: refused in one line when the file is missing,
    unsafe, not a tiny decoder or made for other latents."""
    model = model or local_model(model_id, subfolder, config)
    rule = detect(model.class_name, model.pipeline, family).family
    vae = vae_skeleton(model)
    channels = rule.channels(vae)
    path = find_weights(experiment_root, model, rule, channels, model_id, flag)
    how, card = source_of(path, model)
    checkpoint = load_checkpoint(path)
    if card is not None:
        check_weights(card, checkpoint.digest, path.parent)
    space = rule.tiny_space(channels, model_id)
    check_fit(checkpoint, rule, vae, model_id, space)
    return TinySetup(model, rule, vae, checkpoint, how, space, card)


def tiny_input(rule: Family, ctx: DecodeContext, latent: Any, source: str) -> Any:
    """A stored latent (the rule's layout, batch axis included) as a tiny decoder's input ``[1, T, C, h, w]``
    float32: the rule's ``[B, C, T, H, W]`` grid, not de-normalised (the tiny decoders take the sampler's
    latents), time before channels."""
    import numpy as np
    import torch

    rule.check_shape(latent.shape, ctx, source)
    grid = rule.to_grid(torch.from_numpy(np.ascontiguousarray(latent)).float(), ctx)
    return grid[:1].permute(0, 2, 1, 3, 4)


def trim_for(rule: Family, ctx: DecodeContext, latent_frames: int, t_upscale: int, segment: int | None,
             source: str) -> int:
    """Raw frames to drop at the start so that ``latent_frames`` give the full VAE's frame count (the
    family rule's ``decoded_frames``: the published ``t_upscale - 1``, none for an even CogVideoX
    latent); with ``segment``, ``t_upscale - 1`` at the start of each piece."""
    if segment is not None:
        return t_upscale - 1
    raw = latent_frames * t_upscale
    expected = rule.decoded_frames(latent_frames, ctx, rule.temporal_factor(ctx.vae))
    if not 0 < expected <= raw:
        raise LatentShapeError(f"{source}: {latent_frames} latent frames decode to {expected} frames with the "
                               f"{rule.label} VAE, but to {raw} with the tiny decoder")
    return raw - expected


def tiny_output(experiment: Any, output: Any, flag: str | Path | None) -> Any:
    """``output`` for ``--decoder tiny``: the decoder file's identity (its digest) joins the settings, so the
    fingerprint of every item says which decoder made it; its path travels to the workers."""
    setup = resolve_tiny(experiment.root, output.model, output.vae_subfolder, output.vae_config, output.family, flag)
    log.info("tiny decoder %s from %s", setup.checkpoint.describe(), setup.how)
    return replace(output, decoder="tiny", tiny_weights=setup.checkpoint.identity, tiny_file=str(setup.checkpoint.path))
