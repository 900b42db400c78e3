"""Latent -> RGB maps: the published factors shipped with the package, and calibrated ones per model.

A calibrated map lives in one place, a cache file per model:
``$LATENT_DECODER_PREVIEW_DIR/<key>.json``, by default ``${XDG_CACHE_HOME:-~/.cache}/latent-decoder/previews``.
The key comes from where the model is: its repo id (any snapshot of the repo, cached or downloaded)
and VAE subfolder, or the absolute path of a local VAE folder or single weights file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SetupError
from ..families import PREVIEW_SPACES
from ..models import ResolvedModel

FACTORS_FILE = Path(__file__).with_name("latent_rgb_factors.json")
PREVIEW_DIR_ENV = "LATENT_DECODER_PREVIEW_DIR"
PUBLISHED = "published"
CALIBRATED = "calibrated"


@dataclass(frozen=True)
class PreviewMap:
    """``rgb = latent_channels_last @ factors + bias``, roughly in [-1, 1], for one latent space."""

    family: str
    factors: np.ndarray  # [C, 3] float32
    bias: np.ndarray  # [3] float32
    kind: str  # "published" or "calibrated"
    source: str  # where it comes from: the published source text, or the calibration file
    fit: dict[str, Any] = field(default_factory=dict)  # calibrated: R^2, samples, steps

    @property
    def channels(self) -> int:
        return int(self.factors.shape[0])

    @property
    def identity(self) -> str:
        """``kind:digest`` of the numbers: part of the settings fingerprint, so a new calibration
        makes earlier previews stale."""
        digest = hashlib.sha256(np.ascontiguousarray(self.factors, np.float32).tobytes()
                                + np.ascontiguousarray(self.bias, np.float32).tobytes()).hexdigest()
        return f"{self.kind}:{digest[:12]}"

    def describe(self) -> str:
        if self.kind == CALIBRATED:
            r2 = self.fit.get("r2")
            return f"calibrated for this model ({self.source}" + (f", R^2 {r2:.3f})" if r2 is not None else ")")
        return f"published {self.family} factors ({self.source})"


@lru_cache(maxsize=1)
def _published_table() -> dict[str, Any]:
    return json.loads(FACTORS_FILE.read_text())


def published_families() -> list[str]:
    return [k for k in _published_table() if not k.startswith("_")]


def published_spaces() -> list[str]:
    """The registry's preview spaces (``families.PREVIEW_SPACES``) that have published factors, in its order."""
    published = set(published_families())
    return [name for name in PREVIEW_SPACES if name in published]


def published_map(family: str) -> PreviewMap | None:
    """The family's published factors, or None (e.g. CogVideoX has none). An entry ``same_as`` another
    takes its numbers (SVD's temporal decoder reads SD 1.5's latent space)."""
    entry = _published_table().get(family)
    if entry is None or family.startswith("_"):
        return None
    if "same_as" in entry:
        entry = _published_table()[entry["same_as"]]
    return PreviewMap(family, np.asarray(entry["factors"], np.float32), np.asarray(entry["bias"], np.float32),
                      PUBLISHED, "ComfyUI comfy/latent_formats.py, via latent_decoder/previews/latent_rgb_factors.json")


# --------------------------------------------------------------------------- calibrated maps


def calibration_dir() -> Path:
    """Where calibrated maps are kept (read from the environment at call time; tests change it)."""
    if os.environ.get(PREVIEW_DIR_ENV):
        return Path(os.environ[PREVIEW_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "latent-decoder" / "previews"


def model_key(source: str, resolved: ResolvedModel | None, subfolder: str | None = None) -> str | None:
    """What identifies a model's VAE across runs: ``repo:ID/SUBFOLDER`` for a hub model (any snapshot),
    else the absolute path of its VAE folder or weights file; None when nothing local is known."""
    if resolved is not None and resolved.weights_file is not None:
        return f"file:{Path(resolved.weights_file).resolve()}"
    if resolved is not None and resolved.origin == "local folder":
        return f"folder:{Path(resolved.folder).resolve()}"
    if resolved is not None or ("/" in source and not Path(source).expanduser().exists()
                                and not source.startswith((".", "/", "~"))):
        return f"repo:{source}/{subfolder or 'vae'}"
    return None


def calibration_path(key: str) -> Path:
    """``<dir>/<readable name>-<hash>.json`` for a model key."""
    name = key.split(":", 1)[1].rstrip("/")
    parts = [p for p in name.split("/") if p and p != "vae"][-2:]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", "--".join(parts))[:80] or "model"
    return calibration_dir() / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def load_calibration(key: str | None) -> PreviewMap | None:
    """The calibrated map for a model key, if one was stored; a broken file is a setup error."""
    if key is None:
        return None
    path = calibration_path(key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        factors = np.asarray(data["factors"], np.float32)
        bias = np.asarray(data["bias"], np.float32)
        if factors.ndim != 2 or factors.shape[1] != 3 or bias.shape != (3,):
            raise ValueError(f"factors {factors.shape}, bias {bias.shape}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SetupError(f"calibrated preview map {path} is unreadable ({exc}); run calibrate-preview again "
                         f"or delete it") from exc
    return PreviewMap(str(data.get("family", "?")), factors, bias, CALIBRATED, str(path),
                      dict(data.get("fit", {}), vae_class=data.get("vae_class")))


def save_calibration(key: str, record: dict[str, Any]) -> Path:
    """Write a calibrated map atomically (a reader never sees half a file)."""
    path = calibration_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**record, "key": key}, indent=1))
    os.replace(tmp, path)
    return path
