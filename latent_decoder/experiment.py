"""Reading an experiment folder: its generation config and the stored latent files.

An experiment looks like ``EXP/configs/generation_config.yaml`` plus
``EXP/latents/<prompt>/<video>/step_NNN.npy.gz`` (or plain ``.npy``), with an optional
``step_NNN_metadata.json`` beside each step.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .errors import ExperimentError, first_line

log = logging.getLogger(__name__)

CONFIG_RELPATH = Path("configs") / "generation_config.yaml"
LATENTS_DIRNAME = "latents"
VIDEOS_DIRNAME = "latents_videos"  # EXP/latents_videos: the full VAE's tree by default
DEFAULT_FPS = 12.0

PROMPT_DIR_RE = re.compile(r"^(prompt_.+|p\d+_b\d+_s\d+)$")
STEP_FILE_RE = re.compile(r"^step_(\d+)\.(npy|pt)(\.gz)?$")  # np.save or torch.save, gzip'd or not


@dataclass(frozen=True)
class VideoSettings:
    """``video_settings`` from the generation config; any field may be absent."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    frames: int | None = None


@dataclass(frozen=True)
class X0Inputs:
    """What the model's x0 prediction at a step is recovered from (see ``x0.py``): the stored x at
    sigma_i (the previous step's file, or the initial noise) beside this step's x at sigma_{i+1}."""

    previous: str
    sigma: float  # sigma_i
    sigma_next: float  # sigma_{i+1}; 0 after the last step


@dataclass(frozen=True)
class LatentStep:
    """One stored latent: the (prompt, video, step) a work item decodes.

    ``size``/``mtime_ns`` are the file's stat when it was discovered (-1: not taken): the fast half
    of the input identity that resume compares (see ``identity.py``). An item that reads more files
    than its latent (``inputs``) has them cover all of those. ``file`` is the absolute path as a
    string: planning 100,000 items must not build 100,000 ``Path`` objects.
    """

    prompt: str
    video: str
    step: str  # e.g. "step_000"
    step_index: int
    file: str
    size: int = -1
    mtime_ns: int = -1
    x0: X0Inputs | None = None  # set for the x0 view; size/mtime_ns then cover both files
    condition: str | None = None  # the video's condition file (a family's ``condition_file``), read with the latent

    @property
    def inputs(self) -> list[str]:
        """Every file the item reads, in this order: the latent, the x0 view's previous step, the condition."""
        return [self.file, *([self.x0.previous] if self.x0 else []), *([self.condition] if self.condition else [])]

    @cached_property
    def path(self) -> Path:
        return Path(self.file)

    @cached_property
    def key(self) -> str:
        """Stable identity of the item, also its path relative to latents/ without suffix."""
        return f"{self.prompt}/{self.video}/{self.step}"

    @property
    def video_key(self) -> str:
        return f"{self.prompt}/{self.video}"

    @property
    def metadata_path(self) -> Path:
        return self.path.with_name(f"{self.step}_metadata.json")

    def read_metadata(self) -> dict[str, Any] | None:
        """The ``step_NNN_metadata.json`` beside the latent, or None if there is none.

        A metadata file that cannot be parsed is reported inside the returned dict rather
        than failing the item: the latent itself may be fine.
        """
        path = self.metadata_path
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return {"_error": f"unreadable metadata {path}: {exc}"}
        return data if isinstance(data, dict) else {"value": data}


def metadata_timestep(meta: dict[str, Any]) -> float | None:
    """A step metadata's ``timestep``: a finite number, or one in a one-element list (what
    ``tensor.tolist()`` stores, nested or not). None when the metadata has none; ``ValueError`` for
    anything else (``null``, a string, several values), which callers report as "no timestep"."""
    if "timestep" not in meta:
        return None
    value = meta["timestep"]
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"timestep {json.dumps(meta['timestep'])} is not a number")
    return float(value)


_told_timesteps: set[str] = set()  # metadata already reported: a watch plans every round, inspect twice


def tell_bad_timesteps(bad: dict[str, str]) -> None:
    """One warning line for the steps whose metadata ``timestep`` is unusable (metadata file -> why),
    each told once per process."""
    new = {f"{path}: {why}" for path, why in bad.items()} - _told_timesteps
    if new:
        _told_timesteps.update(new)
        log.warning("%d step(s) have a metadata timestep that is not a number or a one-element list; taken as "
                    "no timestep (e.g. %s)", len(new), min(new))


@dataclass(frozen=True)
class NameFilter:
    """A comma list of exact names; empty means everything matches.

    The same matcher serves dry-run and decode. For steps, a bare number also matches
    (``5`` or ``005`` selects ``step_005``).
    """

    names: frozenset[str] = frozenset()
    numeric: bool = False

    @classmethod
    def parse(cls, text: str | None, numeric: bool = False) -> "NameFilter":
        names = frozenset(p.strip() for p in (text or "").split(",") if p.strip())
        return cls(names, numeric)

    def __bool__(self) -> bool:
        return bool(self.names)

    def matches(self, name: str, index: int | None = None) -> bool:
        if not self.names:
            return True
        if name in self.names:
            return True
        if self.numeric and index is not None:
            return any(n.isdigit() and int(n) == index for n in self.names)
        return False


@dataclass(frozen=True)
class Filters:
    prompts: NameFilter = field(default_factory=NameFilter)
    videos: NameFilter = field(default_factory=NameFilter)
    steps: NameFilter = field(default_factory=lambda: NameFilter(numeric=True))
    # exact items by key (``prompt/video/step``): a run over a chosen sample (``distill``); empty: all
    items: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, prompt: str | None = None, video: str | None = None, step: str | None = None) -> "Filters":
        return cls(NameFilter.parse(prompt), NameFilter.parse(video), NameFilter.parse(step, numeric=True))

    def __bool__(self) -> bool:
        """Whether anything is filtered out."""
        return bool(self.prompts or self.videos or self.steps or self.items)

    def covers(self, prompt: str, video: str, step: str) -> bool:
        """Whether an item (by its folder and step names) lies within these filters."""
        if self.items and f"{prompt}/{video}/{step}" not in self.items:
            return False
        digits = step.rpartition("_")[2]
        index = int(digits) if digits.isdigit() else None
        return self.prompts.matches(prompt) and self.videos.matches(video) and self.steps.matches(step, index)


@dataclass
class Experiment:
    root: Path
    config: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path, latents_required: bool = True) -> "Experiment":
        """Read the experiment folder and check its config's values once, here, so that a wrong type
        stops the run before anything is written instead of failing every step later. The latents
        folder may be missing only where the caller waits for it (``--watch`` on a generation that
        has not written a step yet)."""
        root = absolute_path(root)
        if not root.is_dir():
            raise ExperimentError(f"experiment folder not found: {root}")
        config_path = root / CONFIG_RELPATH
        if not config_path.is_file():
            raise ExperimentError(f"config not found: {config_path} (expected EXP/{CONFIG_RELPATH})")
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ExperimentError(f"cannot parse {config_path}: {first_line(exc)}") from exc
        if not isinstance(config, dict):
            raise ExperimentError(f"{config_path} must hold a mapping, found {type(config).__name__}")
        if latents_required and not (root / LATENTS_DIRNAME).is_dir():
            raise ExperimentError(f"latents folder not found: {root / LATENTS_DIRNAME}")
        experiment = cls(root=root, config=config)
        experiment.check_config()
        return experiment

    def check_config(self) -> None:
        """Read every config value the tool uses: a wrong one is one line naming it, now."""
        _ = self.model_id, self.video_settings, self.inference_steps, self.decode_arguments

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_RELPATH

    @property
    def latents_dir(self) -> Path:
        return self.root / LATENTS_DIRNAME

    @property
    def default_output_dir(self) -> Path:
        return self.root / VIDEOS_DIRNAME

    def _section(self, name: str) -> dict[str, Any]:
        """A mapping of the config (``model_settings``, ``video_settings``); absent or null is empty."""
        raw = self.config.get(name)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ExperimentError(f"{self.config_path}: {name} must be a mapping, got {raw!r}")
        return raw

    @cached_property
    def model_id(self) -> str | None:
        """``model_settings.model_id``, else a top-level ``model_id``."""
        for key, value in (("model_settings.model_id", self._section("model_settings").get("model_id")),
                           ("model_id", self.config.get("model_id"))):
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise ExperimentError(f"{self.config_path}: {key} must be a string (a repo id or a path), "
                                      f"got {value!r}")
            return value
        return None

    @cached_property
    def video_settings(self) -> VideoSettings:
        """``video_settings``, each value checked: width, height and frames whole numbers of at least 1
        (``480.0`` is 480; ``9.7``, ``true`` and strings are refused), fps a finite number above 0."""
        raw = self._section("video_settings")

        def bad(key: str, want: str) -> ExperimentError:
            return ExperimentError(f"{self.config_path}: video_settings.{key} must be {want}, got {raw[key]!r}")

        def count(key: str) -> int | None:
            value = raw.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
                raise bad(key, "a whole number")
            if value < 1:
                raise bad(key, "at least 1")
            return int(value)

        fps = raw.get("fps")
        if fps is not None:
            if isinstance(fps, bool) or not isinstance(fps, (int, float)):
                raise bad("fps", "a number")
            if not (math.isfinite(fps) and fps > 0):
                raise bad("fps", "a finite number above 0")
        return VideoSettings(count("width"), count("height"), None if fps is None else float(fps), count("frames"))

    @cached_property
    def inference_steps(self) -> int | None:
        """``generation_settings.num_inference_steps``: how many steps the generation ran, for steps
        whose metadata does not say (``total_steps``)."""
        value = self._section("generation_settings").get("num_inference_steps")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExperimentError(f"{self.config_path}: generation_settings.num_inference_steps must be a whole "
                                  f"number of at least 1, got {value!r}")
        return value

    @property
    def decode_arguments(self) -> dict[str, float | int]:
        """``decode_timestep`` / ``decode_noise_scale`` the generation passed to an LTX pipeline and
        ``decode_chunk_size`` (a whole number) it passed to an image-VAE pipeline, read from
        ``video_settings`` or ``model_settings`` (the first that has it)."""
        found: dict[str, float | int] = {}
        for section in ("video_settings", "model_settings"):
            raw = self._section(section)
            for key, kind in (("decode_timestep", float), ("decode_noise_scale", float), ("decode_chunk_size", int)):
                if key in found or raw.get(key) is None:
                    continue
                value = raw[key][0] if isinstance(raw[key], list) and raw[key] else raw[key]
                if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ExperimentError(f"{self.config_path}: {section}.{key} must be a whole number, "
                                          f"got {raw[key]!r}")
                try:
                    found[key] = kind(value)
                except (TypeError, ValueError):
                    raise ExperimentError(f"{self.config_path}: {section}.{key} must be a number, got {raw[key]!r}")
        return found

    def discover(self, filters: Filters | None = None) -> list[LatentStep]:
        """Every stored latent step that passes the filters, in a stable order."""
        return self.scan(filters).steps

    def scan(self, filters: Filters | None = None) -> "Discovery":
        """The steps that pass the filters (each with its file's stat), and the step numbers that
        have more than one file, which are reported rather than silently reduced to one."""
        filters = filters or Filters()
        found = Discovery()
        if not self.latents_dir.is_dir():  # a watched generation that has not written anything yet
            return found
        for prompt in _subdirs(self.latents_dir):
            if not PROMPT_DIR_RE.match(prompt) or not filters.prompts.matches(prompt):
                continue
            for video in _subdirs(self.latents_dir / prompt):
                if filters.videos.matches(video):
                    _scan_video(prompt, video, self.latents_dir / prompt / video, filters.steps, found)
        if filters.items:
            found.steps = [s for s in found.steps if s.key in filters.items]
        return found


@dataclass
class Discovery:
    steps: list[LatentStep] = field(default_factory=list)
    duplicates: list[tuple[str, str, str, str]] = field(default_factory=list)  # (prompt, video, step, message)


def absolute_path(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute and normalised (``out/..`` is the current folder):
    every later ``.name`` or sibling of it is then what the user meant (``.`` has no name)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _subdirs(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _preference(candidate: tuple[os.DirEntry, str]) -> tuple[bool, bool, int, str]:
    """Which of several files of one step is decoded: .npy over .pt, gzip'd over plain, zero-padded
    over short."""
    entry, digits = candidate
    return ".npy" in entry.name, entry.name.endswith(".gz"), len(digits), entry.name


def _scan_video(prompt: str, video: str, video_dir: Path, step_filter: NameFilter, found: Discovery) -> None:
    candidates: dict[int, list[tuple[os.DirEntry, str]]] = {}
    with os.scandir(video_dir) as entries:
        for entry in entries:
            match = STEP_FILE_RE.match(entry.name)
            if not match or not entry.is_file():
                continue
            digits = match.group(1)
            index = int(digits)
            if not step_filter or step_filter.matches(f"step_{digits}", index):
                candidates.setdefault(index, []).append((entry, digits))
    for index in sorted(candidates):
        files = candidates[index]
        if len(files) > 1:
            files.sort(key=_preference, reverse=True)
        chosen, digits = files[0]
        if len(files) > 1:
            found.duplicates.append((prompt, video, f"step_{digits}",
                                     f"{prompt}/{video}: step {index} has {len(files)} files "
                                     f"({', '.join(f.name for f, _ in files)}); decoding {chosen.name}"))
        try:
            st = chosen.stat()
        except FileNotFoundError:  # deleted while scanning: not part of the experiment any more
            continue
        found.steps.append(LatentStep(prompt, video, f"step_{digits}", index, chosen.path, st.st_size, st.st_mtime_ns))
