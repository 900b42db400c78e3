"""The family registry: which rule decodes a model's latents, and why.

Each module of this package mirrors one diffusers pipeline family (its layout, de-normalisation and
decode call, with the pipeline file named at the top). ``detect`` picks the rule: ``--family`` if
given, else the pipeline named by the model folder's ``model_index.json`` or, for a modular
pipeline, ``modular_model_index.json`` (Kandinsky 5 and HunyuanVideo share a VAE but not a layout,
Cosmos 2 and Wan share a VAE but not a dtype order), refusing a video pipeline no rule decodes
(``unsupported.py``, with the reason), else the VAE class's default family (a bare VAE, or a
pipeline this table does not know).

The preview decoder's tables come from the same rules: each rule names the latent spaces its
pipelines' latents are in (``Family.previews``, declared in the module of the family that owns the
space) and the model ids that name it (``Family.model_ids``).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from ..errors import UnsupportedModelError
from .allegro import ALLEGRO
from .animatediff import ANIMATEDIFF, ANIMATEDIFF_SDXL
from .anyflow import ANYFLOW
from .bare_vaes import KVAE_VIDEO, VIDTOK
from .base import CONDITION_SUFFIXES, DecodeContext, DecodeOptions, Family, PipelineFacts, PreviewSpace, TinySpace
from .chronoedit import CHRONOEDIT
from .cogvideox import COGVIDEOX
from .cosmos import COSMOS1
from .cosmos2 import COSMOS2, COSMOS2_5, COSMOS2_5_TRANSFER
from .cosmos3 import COSMOS3
from .easyanimate import EASYANIMATE
from .echo import ECHO
from .hunyuan_video import HUNYUANVIDEO, HUNYUANVIDEO_I2V
from .hunyuan_video15 import HUNYUANVIDEO15
from .kandinsky5 import KANDINSKY5, KANDINSKY5_I2V
from .kandinsky6 import KANDINSKY6
from .latte import LATTE
from .ltx_video import LTX_VIDEO
from .ltx2 import LTX2, LTX2_CONDITIONED
from .ltx2_5 import DIFFUSION_DECODER, LTX2_5, LTX2_5_DIFFUSION_DECODER
from .minimax_h3 import MINIMAX_H3
from .mochi import MOCHI
from .motif_video import MOTIF_VIDEO
from .sana_video import SANA_VIDEO
from .sana_wm import SANA_WM
from .stable_video_diffusion import SVD
from .text_to_video_sd import I2VGEN_XL, TEXT_TO_VIDEO_SD
from .text_to_video_zero import TEXT_TO_VIDEO_ZERO, TEXT_TO_VIDEO_ZERO_SDXL
from .unsupported import UNSUPPORTED
from .wan import SKYREELS_V2, WAN, WAN22_I2V, WAN_MODULAR, WAN_USERS, WAN_VACE
from .wan_animate import WAN_ANIMATE

FAMILIES: dict[str, Family] = {f.name: f for f in (
    WAN, WAN22_I2V, SKYREELS_V2, WAN_USERS,
    WAN_VACE, WAN_MODULAR, WAN_ANIMATE, ANYFLOW, CHRONOEDIT, MOTIF_VIDEO, COSMOS3,
    KANDINSKY6, MINIMAX_H3, SANA_WM, ECHO, LTX2_5, LTX2_5_DIFFUSION_DECODER,
    KVAE_VIDEO, VIDTOK,
    HUNYUANVIDEO, HUNYUANVIDEO_I2V,
    KANDINSKY5, KANDINSKY5_I2V,
    ALLEGRO,
    EASYANIMATE,
    HUNYUANVIDEO15,
    COSMOS1, COSMOS2, COSMOS2_5, COSMOS2_5_TRANSFER,
    COGVIDEOX,
    MOCHI,
    LTX_VIDEO,
    LTX2, LTX2_CONDITIONED,
    SANA_VIDEO,
    ANIMATEDIFF, ANIMATEDIFF_SDXL, LATTE, SVD, TEXT_TO_VIDEO_SD, I2VGEN_XL, TEXT_TO_VIDEO_ZERO, TEXT_TO_VIDEO_ZERO_SDXL,
)}

# The family (name) for a VAE class when no pipeline says otherwise.
VAE_DEFAULTS: dict[str, str] = {
    "AutoencoderKLWan": WAN.name,
    "AutoencoderKLMiniMaxH3": MINIMAX_H3.name,
    DIFFUSION_DECODER: LTX2_5_DIFFUSION_DECODER.name,
    "AutoencoderKLKVAEVideo": KVAE_VIDEO.name,
    "AutoencoderVidTok": VIDTOK.name,
    "AutoencoderKLHunyuanVideo": HUNYUANVIDEO.name,
    "AutoencoderKLHunyuanVideo15": HUNYUANVIDEO15.name,
    "AutoencoderKLCosmos": COSMOS1.name,
    "AutoencoderKLCogVideoX": COGVIDEOX.name,
    "AutoencoderKLMochi": MOCHI.name,
    "AutoencoderKLAllegro": ALLEGRO.name,
    "AutoencoderKLMagvit": EASYANIMATE.name,
    "AutoencoderKLLTXVideo": LTX_VIDEO.name,
    "AutoencoderKLLTX2Video": LTX2.name,
    "AutoencoderKL": ANIMATEDIFF.name,
    "AutoencoderKLTemporalDecoder": SVD.name,
}

# The per-video input files some rule reads (``Family.condition_file``), in the order they are looked for.
CONDITION_FILES: tuple[str, ...] = tuple(dict.fromkeys(f.condition_file for f in FAMILIES.values() if f.condition_file))

# The latent spaces of the preview decoder, by name (``--decoder preview --family``), in registry order.
PREVIEW_SPACES: dict[str, PreviewSpace] = {s.name: s for f in FAMILIES.values() for s in f.previews}

__all__ = ["CONDITION_FILES", "FAMILIES", "PREVIEW_SPACES", "UNSUPPORTED", "VAE_DEFAULTS", "DecodeContext",
           "DecodeOptions", "Detection", "Family", "PipelineFacts", "PreviewSpace", "TinySpace", "default_family",
           "detect", "find_condition",
           "preview_space_for_class", "spaces_for_model_id", "supported_vae_classes"]


@dataclass(frozen=True)
class Detection:
    """The rule chosen for a model and the reason, as ``inspect`` prints it."""

    family: Family
    reason: str


def find_condition(video_folder: str) -> tuple[str, os.stat_result] | None:
    """The video's condition file (the first of ``CONDITION_FILES`` stored there) and its stat, if any."""
    for stem in CONDITION_FILES:
        for suffix in CONDITION_SUFFIXES:
            path = os.path.join(video_folder, stem + suffix)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                return path, st
    return None


def supported_vae_classes() -> list[str]:
    return sorted({c for f in FAMILIES.values() for c in f.vae_classes})


def default_family(vae_class: str) -> Family | None:
    name = VAE_DEFAULTS.get(vae_class)
    return FAMILIES[name] if name else None


def detect(vae_class: str, pipeline: PipelineFacts, override: str | None = None) -> Detection:
    """``--family`` > the pipeline in ``model_index.json`` (or ``modular_model_index.json``) > the VAE class;
    a pipeline in ``UNSUPPORTED`` is refused with its reason."""
    if override:
        family = FAMILIES.get(override)
        if family is None:
            raise UnsupportedModelError(f"--family {override}: unknown family (known: {', '.join(FAMILIES)})")
        if vae_class not in family.vae_classes:
            raise UnsupportedModelError(f"--family {override} decodes {', '.join(family.vae_classes)} latents, "
                                        f"but the model's VAE is {vae_class}")
        return Detection(family, f"--family {override}")
    name = pipeline.class_name
    if name:
        for family in FAMILIES.values():
            if name in family.pipelines and vae_class in family.vae_classes and family.accepts(pipeline.index):
                return Detection(family, f"pipeline {name} in {pipeline.source or 'model_index.json'}")
        if name in UNSUPPORTED:
            raise UnsupportedModelError(f"pipeline {name} ({pipeline.source or 'model_index.json'}) is not supported: "
                                        f"{UNSUPPORTED[name]} (--family NAME decodes with a rule anyway)")
    default = default_family(vae_class)
    if default is None:
        raise UnsupportedModelError(f"VAE class {vae_class} is not supported yet "
                                    f"(supported: {', '.join(supported_vae_classes())})")
    if name:
        return Detection(default, f"VAE class {vae_class}: pipeline {name} is not in the family table, so the "
                                  f"{default.label} rule is assumed (pass --family to choose)")
    return Detection(default, f"VAE class {vae_class} (no model_index.json names the pipeline)")


def spaces_for_model_id(model_id: str) -> tuple[str, ...] | None:
    """The preview spaces a model id names, or None when it names no family.

    Each family's ``model_ids`` are searched in the lower-cased id (``_`` read as ``-``); the family
    whose pattern matches the longest text wins (``hunyuanvideo-1.5`` over ``hunyuan``, ``ltx-2`` over
    ``ltx``), families tied on it pool their spaces (``cosmos`` alone: Cosmos 1 or 2). ``()``: a known
    model whose VAE has no preview space (LTX-2)."""
    text = model_id.lower().replace("_", "-")
    longest, named = 0, []
    for family in FAMILIES.values():
        length = max((len(m.group(0)) for m in (re.search(p, text) for p in family.model_ids) if m), default=0)
        if length and length > longest:
            longest, named = length, [family]
        elif length and length == longest:
            named.append(family)
    if not named:
        return None
    return tuple(dict.fromkeys(space.name for family in named for space in family.previews))


def preview_space_for_class(vae_class: str, channels: int | None) -> PreviewSpace | None:
    """The preview space of a VAE class with this many latent channels (Wan: 16 -> wan2.1, 48 -> wan2.2);
    a class with one space keeps it at any channel count (a small CogVideoX or HunyuanVideo: the same
    family of latent spaces); None: the class has none, or several and none with these channels."""
    spaces = [s for s in PREVIEW_SPACES.values() if s.vae_class == vae_class]
    fitting = [s for s in spaces if channels is None or s.channels == channels]
    if len(fitting) == 1:
        return fitting[0]
    return spaces[0] if len(spaces) == 1 else None
