"""What a preview run uses: the family, the latent -> RGB map and the geometry, found without weights.

The preview "family" is a latent space of the registry (``families.PREVIEW_SPACES``: the key of its
published factors). The VAE's ``config.json`` is used when it is on this machine (a local folder, the
HF cache; nothing is downloaded): its class and channel count name the space, and the family rule
(``families/``) on a meta-device skeleton gives the exact geometry (Wan2.2's 16x, LTX-Video's token
grid, CogVideoX's frames). Without it, the model id (the rules' ``model_ids``) and the stored
latent's channel count name the space, and the space's published compression gives the geometry.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import LatentShapeError, ModelNotFoundError, SetupError, UnsupportedModelError
from ..experiment import VideoSettings
from ..latents import Layout
from ..families import (PREVIEW_SPACES, DecodeContext, Family, PreviewSpace, detect, preview_space_for_class,
                        spaces_for_model_id, supported_vae_classes)
from ..models import ResolvedModel, resolve_model, vae_skeleton
from ..video import scaled_size
from .factors import CALIBRATED, PUBLISHED, PreviewMap, load_calibration, model_key, published_map

log = logging.getLogger(__name__)

CALIBRATE_HINT = "run `latent-decoder calibrate-preview EXP` once to fit a map to this model's VAE"


@dataclass(frozen=True)
class Geometry:
    """How a stored latent becomes a ``[1, C, T, H, W]`` grid, and the video a full decode of it gives."""

    layout: Layout
    channels: int
    temporal: int  # video frames per latent frame
    spatial: int  # pixels per latent pixel
    source: str  # where these facts come from
    to_grid: Callable[[np.ndarray], np.ndarray]  # stored (batched) -> [1, C, T, H, W]
    decoded_frames: Callable[[int], int]  # latent frames -> frames of the full decode
    check: Callable[[tuple[int, ...], str], None]  # raises LatentShapeError naming both shapes

    def output_shape(self, grid_shape: tuple[int, ...], scale: float = 1.0) -> tuple[int, int, int]:
        """(frames, height, width) of the full VAE's decode, resized by ``scale`` like the VAE path."""
        t, h, w = grid_shape[2:]
        height, width = h * self.spatial, w * self.spatial
        return (self.decoded_frames(t), *scaled_size(height, width, scale))


def geometry_from_rule(rule: Family, vae: Any, video: VideoSettings, source: str) -> Geometry:
    """The geometry the full decode has, from the family's rule on the VAE skeleton (no weights)."""
    ctx = DecodeContext(vae, video)

    def to_grid(latent: np.ndarray) -> np.ndarray:
        if rule.layout.axes == "BCTHW" and rule.to_grid.__name__ == "same_grid":
            return latent
        import torch

        return rule.to_grid(torch.from_numpy(np.ascontiguousarray(latent)), ctx).numpy()

    factor = rule.temporal_factor(vae)
    return Geometry(rule.layout, rule.channels(vae), factor, rule.spatial_factor(vae), source, to_grid,
                    lambda t: rule.decoded_frames(t, ctx, factor),
                    lambda shape, where: rule.check_shape(shape, ctx, where))


def preview_family(class_name: str, channels: int | None, rule: Family | None) -> str:
    """The preview family of a VAE class with this many channels: the rule's own space of that class
    and size first (``AutoencoderKL``: SD 1.5's or SDXL's, as the pipeline says), else the class's; a
    class or size without a preview space keeps its rule's family name (else the class name)."""
    own = [s for s in (rule.previews if rule is not None else ())
           if s.vae_class == class_name and channels in (None, s.channels)]
    space = own[0] if len(own) == 1 else preview_space_for_class(class_name, channels)
    return space.name if space is not None else rule.name if rule is not None else class_name


def geometry_from_space(space: PreviewSpace, video: VideoSettings) -> Geometry:
    """The space's published compression, for a model whose config.json is not on this machine."""
    layout, c, tf, sf = space.layout, space.channels, space.temporal, space.spatial

    def token_grid() -> tuple[int, int, int]:
        return (video.frames - 1) // tf + 1, video.height // sf, video.width // sf

    def check(shape: tuple[int, ...], where: str) -> None:
        axis = layout.axes.index("C")
        if len(shape) != layout.rank or shape[axis] != c:
            raise LatentShapeError(f"{where}: latent {tuple(shape)} does not fit the {space.label} preview, "
                                   f"which takes {layout.describe(C=c)} (does the model id match the experiment?)")
        if layout.axes == "BSC":
            missing = [n for n in ("frames", "height", "width") if getattr(video, n) is None]
            if missing:
                raise LatentShapeError(f"{where}: packed {space.label} latent {tuple(shape)} needs video_settings "
                                       f"frames, height, width to unpack; missing: {', '.join(missing)}")
            t, h, w = token_grid()
            if shape[1] != t * h * w:
                raise LatentShapeError(f"{where}: packed latent {tuple(shape)} has {shape[1]} tokens but "
                                       f"video_settings give a {t}x{h}x{w} grid = {t * h * w} tokens")

    def to_grid(latent: np.ndarray) -> np.ndarray:
        if layout.axes == "BSC":
            t, h, w = token_grid()
            return latent.reshape(latent.shape[0], t, h, w, c).transpose(0, 4, 1, 2, 3)
        if layout.axes == "BTCHW":
            if video.frames is not None:  # CogVideoX 1.5's padded leading frames
                keep = (video.frames - 1) // tf + 1
                latent = latent[:, max(0, latent.shape[1] - keep):]
            return latent.transpose(0, 2, 1, 3, 4)
        return latent

    def decoded_frames(t: int) -> int:
        if layout.axes == "BTCHW" and t % 2 == 0:  # AutoencoderKLCogVideoX: see families/cogvideox.py
            return t * tf
        return (t - 1) * tf + 1

    return Geometry(layout, c, tf, sf, f"{space.label} defaults ({tf}x temporal, {sf}x spatial)", to_grid,
                    decoded_frames, check)


@dataclass(frozen=True)
class PreviewSetup:
    family: str
    how: str  # how the family was found
    preview: PreviewMap
    geometry: Geometry
    model: ResolvedModel | None  # the VAE's local config, if any (never its weights)
    vae_class: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"decoder": "preview", "family": self.family, "family_from": self.how,
                "factors": self.preview.kind, "factors_source": self.preview.describe(),
                "fit_r2": self.preview.fit.get("r2"), "geometry": self.geometry.source,
                "model_folder": str(self.model.folder) if self.model else None, "vae_class": self.vae_class}


def local_model(model: str, subfolder: str | None, config: str | None) -> ResolvedModel | None:
    """The model's VAE config on this machine (local folder or HF cache), never downloading."""
    try:
        return resolve_model(model, subfolder, config, download=False)
    except (ModelNotFoundError, UnsupportedModelError) as exc:
        log.debug("no local VAE config for %s: %s", model, exc)
        return None


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _family_from_id(model: str, shape: tuple[int, ...] | None, where: str) -> tuple[str, str]:
    """The family named by the model id, narrowed by the stored latent's channels; one line if unsure."""
    named = spaces_for_model_id(model)
    if named == ():
        raise SetupError(f"model '{model}' has no published preview factors and its config.json is not on this "
                         f"machine; pass --family NAME, or {CALIBRATE_HINT}")
    pool = [PREVIEW_SPACES[n] for n in (named or PREVIEW_SPACES) if published_map(n) is not None or named]
    fitting = [f.name for f in pool if f.fits(shape)]
    shape_text = f"{list(shape)} latents" if shape is not None else "latents of unknown shape"
    if len(fitting) == 1:
        source = f"model id '{model}'" if named else "the latent's shape"
        return fitting[0], f"{source} and {shape_text}"
    if not fitting:
        said = f"model id '{model}' names {', '.join(named)}" if named else f"no family takes {shape_text}"
        raise SetupError(f"{said}, which does not fit {shape_text} ({where}); pass --family NAME "
                         f"({', '.join(PREVIEW_SPACES)}) or the right --model")
    raise SetupError(f"cannot tell which VAE family made the {shape_text} of model '{model}' (no config.json on "
                     f"this machine): {' or '.join(fitting)}; pass --family NAME")


def resolve_preview(model: str, video: VideoSettings, subfolder: str | None = None, config: str | None = None,
                    family: str | None = None, sample: tuple[tuple[int, ...], str] | None = None,
                    pinned: str | None = None) -> PreviewSetup:
    """Family, map and geometry for a preview of ``model``'s latents.

    ``family``: the user's ``--family`` (its published factors win over a calibration). ``sample``: a
    stored latent's (shape, path), to tell families apart by channels. ``pinned``: the map identity
    the run was planned with (``kind:digest``); the map found now must be that one.
    """
    if family is not None and family not in PREVIEW_SPACES and pinned is None:
        raise SetupError(f"--family {family}: unknown preview family (known: {', '.join(PREVIEW_SPACES)})")
    resolved = local_model(model, subfolder, config)
    rule, vae, class_name, channels = None, None, None, None
    if resolved is not None:
        class_name = resolved.class_name
        try:  # the pipeline's rule: its layout (Kandinsky 5's channels last on HunyuanVideo's VAE)
            rule = detect(class_name, resolved.pipeline).family
        except UnsupportedModelError:
            rule = None
        if rule is not None:
            try:
                vae = vae_skeleton(resolved)
                channels = rule.channels(vae)
            except (SetupError, OSError, ValueError, TypeError) as exc:
                log.debug("no skeleton for %s: %s", resolved.folder, exc)
                rule = None
        if channels is None:
            cfg = _read_config(resolved.folder)
            channels = next((int(cfg[k]) for k in ("latent_channels", "z_dim", "z_channels") if k in cfg), None)
    shape, where = sample if sample is not None else (None, "")

    if family is not None and pinned is None:
        how = "--family"
    elif resolved is not None:
        detected = preview_family(class_name, channels, rule)
        how = f"{resolved.folder / 'config.json'} ({class_name}, {channels} channels)"
        if family is not None and family != detected:
            how += f", --family {family}"
        family = family or detected
    elif family is not None:
        how = "the model id and latent channels, or --family"
    else:
        family, how = _family_from_id(model, shape, where)

    calibrated = load_calibration(model_key(model, resolved, subfolder))
    if calibrated is not None and class_name and calibrated.fit.get("vae_class") not in (None, class_name):
        log.warning("ignoring %s: it was fitted to a %s, the model now has a %s", calibrated.source,
                    calibrated.fit.get("vae_class"), class_name)
        calibrated = None
    published = published_map(family)
    if pinned is not None:
        order = [calibrated] if pinned.startswith(CALIBRATED) else [published]
    elif how == "--family":
        order = [published, calibrated]
    else:
        order = [calibrated, published]
    preview = next((m for m in order if m is not None), None)
    label = PREVIEW_SPACES[family].label if family in PREVIEW_SPACES else family
    if preview is None and resolved is not None and rule is None:
        raise SetupError(f"no preview for model '{model}': {class_name} has no published factors, and "
                         f"calibrate-preview needs a VAE class this tool decodes ({', '.join(supported_vae_classes())})")
    if preview is None:
        raise SetupError(f"no preview factors for {label} (model '{model}'"
                         + (f", {class_name}" if class_name else "") + f"): {CALIBRATE_HINT}")
    if pinned is not None and preview.identity != pinned:
        raise SetupError(f"the preview map of model '{model}' changed while the run was starting "
                         f"({pinned} -> {preview.identity}); run again")

    same_class = family not in PREVIEW_SPACES or PREVIEW_SPACES[family].vae_class == class_name
    if rule is not None and vae is not None and same_class:
        geometry = geometry_from_rule(rule, vae, video, f"{class_name} config ({resolved.folder})")
    elif family in PREVIEW_SPACES:
        geometry = geometry_from_space(PREVIEW_SPACES[family], video)
    else:
        raise SetupError(f"no geometry for preview family {family} of model '{model}': its VAE config is not "
                         f"on this machine; pass --family NAME")
    if preview.channels != geometry.channels:
        fix = CALIBRATE_HINT if preview.kind == PUBLISHED else "run calibrate-preview again for this model"
        raise SetupError(f"{preview.describe()} take {preview.channels}-channel latents but {geometry.source} has "
                         f"{geometry.channels}: {fix}")
    return PreviewSetup(family, how, preview, geometry, resolved, class_name)


def sample_latent(experiment: Any, filters: Any = None, tries: int = 3) -> tuple[tuple[int, ...], str] | None:
    """(shape, path) from the header of the first readable stored latent (only its first bytes are read)."""
    from ..errors import LatentFileError
    from ..latents import read_latent_header

    for step in experiment.discover(filters)[:tries]:
        try:
            return tuple(int(n) for n in read_latent_header(step.path)[0]), str(step.path)
        except LatentFileError:
            continue
    return None


def preview_output(experiment: Any, output: Any, family: str | None, filters: Any = None) -> Any:
    """``output`` for ``--decoder preview``: the family and the map identity join the settings, so
    the fingerprint of every item says which map made it."""
    from dataclasses import replace

    setup = resolve_preview(output.model, output.video, output.vae_subfolder, output.vae_config, family=family,
                            sample=sample_latent(experiment, filters))
    return replace(output, decoder="preview", family=setup.family, preview_factors=setup.preview.identity)
