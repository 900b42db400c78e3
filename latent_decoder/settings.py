"""Run settings: command-line options merged over the experiment's config, in one function.

``OutputSettings`` is everything that changes the bytes of an item's outputs; an item decoded
with different output settings is not "done" and is decoded again on resume.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .errors import SetupError
from .experiment import DEFAULT_FPS, Experiment, Filters, VideoSettings

DTYPES = ("float32", "bfloat16", "float16")
FORMATS = ("mp4", "png")
DEFAULT_CRF = 25  # diffusers' export_to_video default (imageio quality 5)
EXECUTORS = ("auto", "inline", "ray")
IO_MODES = ("driver", "shared")


def crf_from_quality(quality: float) -> int:
    """imageio's 0-10 quality scale (the original tool's ``--quality``) as an x264 CRF."""
    if not 0 <= quality <= 10:
        raise SetupError(f"--quality must be between 0 and 10, got {quality}")
    return int((1 - quality / 10.0) * 51)


@dataclass(frozen=True)
class OutputSettings:
    """What an item's outputs depend on; stored in every step record and compared on resume."""

    model: str
    dtype: str = "float32"
    fps: float = DEFAULT_FPS
    format: str = "mp4"
    crf: int = DEFAULT_CRF
    scale: float = 1.0
    vae_subfolder: str | None = None  # the model folder's VAE subfolder, instead of vae/
    vae_config: str | None = None  # where a single-file model's config.json is (folder or repo id)
    # video_settings of the config: packed latents (LTX-Video) are unpacked with these
    frames: int | None = None
    height: int | None = None
    width: int | None = None

    @property
    def video(self) -> VideoSettings:
        return VideoSettings(width=self.width, height=self.height, fps=self.fps, frames=self.frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that shape this format's bytes (fps and CRF do not touch PNG frames), including
        the video geometry that packed (LTX) and padded (CogVideoX 1.5) latents are decoded with.
        Optional model fields left unset are omitted."""
        data = {k: v for k, v in self.to_dict().items() if v is not None or k not in OPTIONAL_FIELDS}
        if self.format == "png":
            del data["fps"], data["crf"]
        return data

    @property
    def geometry(self) -> dict[str, int | None]:
        return {"frames": self.frames, "height": self.height, "width": self.width}


OPTIONAL_FIELDS = ("vae_subfolder", "vae_config")


@dataclass(frozen=True)
class ExecutorSettings:
    """How items are scheduled; never part of an item's fingerprint (outputs do not depend on it)."""

    kind: str = "inline"  # "inline", "ray", or "auto": decided by ``decided()`` when a run starts
    address: str | None = None  # Ray cluster to join; None starts a local runtime
    gpus: int | None = None  # GPUs to use; None: all the cluster has
    actors_per_gpu: int = 1
    workers: int | None = None  # CPU actors
    io: str = "driver"  # "driver": workers get bytes, the driver writes; "shared": workers use the path
    start_timeout: float = 60.0  # seconds to wait for the first Ray worker; unplaced ones are then given up
    item_timeout: float = 300.0  # least seconds an item may run on a Ray worker before it counts as hung

    def decided(self, gpu_count: Callable[[], int] | None = None) -> "ExecutorSettings":
        """Settle ``auto``: Ray when this machine shows more than one GPU. Deferred to run time
        so a dry run or a nothing-to-do run never imports torch just to count GPUs."""
        if self.kind != "auto":
            return self
        return replace(self, kind="ray" if (gpu_count or visible_gpus)() > 1 else "inline")


@dataclass(frozen=True)
class RunSettings:
    experiment: Experiment
    output: OutputSettings
    output_dir: Path
    filters: Filters = field(default_factory=Filters)
    device: str = "auto"
    force: bool = False
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)


@dataclass
class CliOptions:
    """Exactly what the user asked for; None means "not given"."""

    output_dir: Path | None = None
    prompt_filter: str | None = None
    video_filter: str | None = None
    step_filter: str | None = None
    device: str = "auto"
    fps: float | None = None
    dtype: str = "float32"
    format: str = "mp4"
    quality: float | None = None
    crf: int | None = None
    scale: float = 1.0
    model: str | None = None
    vae_subfolder: str | None = None
    vae_config: str | None = None
    force: bool = False
    executor: str = "auto"
    address: str | None = None
    gpus: int | None = None
    actors_per_gpu: int | None = None
    workers: int | None = None
    io: str = "driver"
    start_timeout: float | None = None
    item_timeout: float | None = None


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_executor(opts: CliOptions) -> ExecutorSettings:
    """``auto`` picks Ray when any Ray option is given (``--address``, ``--workers``, ``--gpus``,
    ``--actors-per-gpu``, ``--io shared``) or, with ``--device auto``, when this machine shows more
    than one GPU; otherwise the in-process executor."""
    if opts.executor not in EXECUTORS:
        raise SetupError(f"--executor must be one of {', '.join(EXECUTORS)}, got {opts.executor}")
    if opts.io not in IO_MODES:
        raise SetupError(f"--io must be one of {', '.join(IO_MODES)}, got {opts.io}")
    ray_only = {"--address": opts.address, "--gpus": opts.gpus, "--actors-per-gpu": opts.actors_per_gpu,
                "--workers": opts.workers, "--io shared": opts.io == "shared" or None}
    given = [flag for flag, value in ray_only.items() if value is not None]
    if opts.workers is not None and (opts.gpus is not None or opts.actors_per_gpu is not None):
        raise SetupError("give --workers (CPU workers) or --gpus/--actors-per-gpu (GPU workers), not both")
    for flag, value in (("--gpus", opts.gpus), ("--actors-per-gpu", opts.actors_per_gpu), ("--workers", opts.workers)):
        if value is not None and value < 1:
            raise SetupError(f"{flag} must be at least 1, got {value}")
    for flag, seconds in (("--start-timeout", opts.start_timeout), ("--item-timeout", opts.item_timeout)):
        if seconds is not None and not seconds > 0:
            raise SetupError(f"{flag} must be a positive number of seconds, got {seconds}")
    kind = opts.executor
    if kind == "auto":
        kind = "ray" if given else "auto" if opts.device == "auto" else "inline"
    if kind == "inline" and given:
        raise SetupError(f"{', '.join(given)} need the Ray executor (--executor ray or auto)")
    if kind == "ray" and opts.device not in ("auto", "cpu", "cuda"):
        raise SetupError(f"--device {opts.device}: with Ray use auto, cpu or cuda, and --gpus to choose how many")
    timeouts = {k: v for k, v in (("start_timeout", opts.start_timeout), ("item_timeout", opts.item_timeout))
                if v is not None}
    return ExecutorSettings(kind=kind, address=opts.address, gpus=opts.gpus, actors_per_gpu=opts.actors_per_gpu or 1,
                            workers=opts.workers, io=opts.io, **timeouts)


def resolve_settings(experiment: Experiment, opts: CliOptions) -> RunSettings:
    """Merge options over the config: ``--model`` over the config's model id, ``--fps`` over
    ``video_settings.fps`` over 12, ``--crf`` or ``--quality`` over the default CRF."""
    model = opts.model or experiment.model_id
    if not model:
        raise SetupError(
            f"no model id: {experiment.config_path} has no model_settings.model_id (nor model_id); pass --model"
        )
    fps = opts.fps if opts.fps is not None else experiment.video_settings.fps or DEFAULT_FPS
    if fps <= 0:
        raise SetupError(f"fps must be positive, got {fps}")
    if opts.dtype not in DTYPES:
        raise SetupError(f"--dtype must be one of {', '.join(DTYPES)}, got {opts.dtype}")
    if opts.format not in FORMATS:
        raise SetupError(f"--format must be one of {', '.join(FORMATS)}, got {opts.format}")
    if opts.crf is not None and opts.quality is not None:
        raise SetupError("give either --crf or --quality, not both")
    if opts.crf is not None:
        if not 0 <= opts.crf <= 51:
            raise SetupError(f"--crf must be between 0 and 51, got {opts.crf}")
        crf = opts.crf
    elif opts.quality is not None:
        crf = crf_from_quality(opts.quality)
    else:
        crf = DEFAULT_CRF
    if not 0 < opts.scale <= 4:
        raise SetupError(f"--scale must be in (0, 4], got {opts.scale}")
    video = experiment.video_settings
    output = OutputSettings(model=model, dtype=opts.dtype, fps=float(fps), format=opts.format, crf=crf,
                            scale=opts.scale, vae_subfolder=opts.vae_subfolder or None,
                            vae_config=opts.vae_config or None, frames=video.frames, height=video.height,
                            width=video.width)
    return RunSettings(
        experiment=experiment,
        output=output,
        output_dir=Path(opts.output_dir) if opts.output_dir else experiment.default_output_dir,
        filters=Filters.parse(opts.prompt_filter, opts.video_filter, opts.step_filter),
        device=opts.device,
        force=opts.force,
        executor=resolve_executor(opts),
    )
