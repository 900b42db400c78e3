"""Run settings: command-line options merged over the experiment's config, in one function.

``OutputSettings`` is everything that changes the bytes of an item's outputs; an item decoded
with different output settings is not "done" and is decoded again on resume.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .errors import SetupError
from .experiment import DEFAULT_FPS, Experiment, Filters, VideoSettings, absolute_path
from .families.base import DecodeOptions
from .video import FrameSizeError, scaled_size

DTYPES = ("float32", "bfloat16", "float16")
VIEWS = ("xt", "x0", "both")
FORMATS = ("mp4", "png")
DEFAULT_CRF = 25  # diffusers' export_to_video default (imageio quality 5)
# x264 presets; measured per 61x480x848 step at CRF 25 (shared/reference/x264_presets.txt): on noisy
# steps medium takes 5.2 core-s for 9.8 MB, veryfast 1.6 core-s for 8.8 MB. The encoder, not the GPU,
# would be the bottleneck at medium, so veryfast is the default.
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
DEFAULT_PRESET = "veryfast"
EXECUTORS = ("auto", "inline", "ray")
IO_MODES = ("driver", "shared")
DECODERS = ("vae", "tiny", "preview")  # the full VAE, a tiny TAEHV-family decoder (tiny/), a linear map (previews/)


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
    preset: str = DEFAULT_PRESET  # x264 speed/size trade-off; veryfast: ~3.5x less CPU than medium, smaller files
    scale: float = 1.0
    vae_subfolder: str | None = None  # the model folder's VAE subfolder, instead of vae/
    vae_config: str | None = None  # where a single-file model's config.json is (folder or repo id)
    # video_settings of the config: packed latents (LTX-Video) are unpacked with these
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    view: str = "xt"  # "xt": the stored latents; "x0": the model's x0 prediction at each step (x0.py)
    decoder: str = "vae"  # "vae": the model's VAE; "tiny": a tiny decoder (tiny/); "preview": a linear map (previews/)
    family: str | None = None  # vae: the decode rule given with --family; preview: the latent space (wan2.1, ...)
    decode_timestep: float | None = None  # LTX-Video/LTX-2 decode arguments; None: the pipeline's default
    decode_noise_scale: float | None = None
    decode_chunk_size: int | None = None  # image VAEs per frame: frames per vae.decode call; None: the pipeline's
    preview_factors: str | None = None  # preview: the map, "published:<digest>" or "calibrated:<digest>"
    tiny_weights: str | None = None  # tiny: the decoder file's identity, "sha256:<digest>"
    tiny_file: str | None = None  # tiny: where that file is (not in the fingerprint: the digest says which)

    @property
    def video(self) -> VideoSettings:
        return VideoSettings(width=self.width, height=self.height, fps=self.fps, frames=self.frames)

    @property
    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(self.decode_timestep, self.decode_noise_scale, self.decode_chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that shape this format's bytes (fps and CRF do not touch PNG frames), including
        the video geometry that packed (LTX) and padded (CogVideoX 1.5) latents are decoded with.
        Optional model fields left unset are omitted."""
        data = {k: v for k, v in self.to_dict().items() if v is not None or k not in OPTIONAL_FIELDS}
        if self.view == "xt":  # fingerprints of runs from before views existed stay valid
            del data["view"]
        if self.preset == DEFAULT_PRESET:  # the same frames at the same CRF: earlier runs' videos stay done
            del data["preset"]
        if self.decoder == "vae":  # likewise for runs from before previews existed
            del data["decoder"]
        elif self.decoder == "preview":  # a preview's pixels do not depend on the VAE's precision
            del data["dtype"]
        data.pop("tiny_file", None)
        if self.format == "png":
            del data["fps"], data["crf"]
            data.pop("preset", None)
        return data

    @property
    def geometry(self) -> dict[str, int | None]:
        return {"frames": self.frames, "height": self.height, "width": self.width}


OPTIONAL_FIELDS = ("vae_subfolder", "vae_config", "family", "decode_timestep", "decode_noise_scale",
                   "decode_chunk_size", "preview_factors", "tiny_weights", "tiny_file")


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


DEFAULT_IDLE_EXIT_S = 600.0
DEFAULT_REFRESH_S = 30.0


@dataclass(frozen=True)
class WatchOptions:
    """``--watch``: decode while the generation writes its steps (``watch.py``)."""

    idle_exit: float = DEFAULT_IDLE_EXIT_S  # stop after this long without a new complete step
    poll: bool = False  # rescan on a timer instead of filesystem events
    refresh_every: float = DEFAULT_REFRESH_S  # redraw the summary and the views at most this often


@dataclass(frozen=True)
class RunSettings:
    experiment: Experiment
    output: OutputSettings
    output_dir: Path
    filters: Filters = field(default_factory=Filters)
    device: str = "auto"
    force: bool = False
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    watch: WatchOptions | None = None  # decode while the generation writes (watch.py)


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
    preset: str = DEFAULT_PRESET
    scale: float = 1.0
    model: str | None = None
    vae_subfolder: str | None = None
    vae_config: str | None = None
    force: bool = False
    view: str = "xt"
    executor: str = "auto"
    address: str | None = None
    gpus: int | None = None
    actors_per_gpu: int | None = None
    workers: int | None = None
    io: str = "driver"
    start_timeout: float | None = None
    item_timeout: float | None = None
    decoder: str = "vae"
    family: str | None = None
    decode_timestep: float | None = None
    decode_noise_scale: float | None = None
    decode_chunk_size: int | None = None
    tiny_weights: str | None = None  # --tiny-weights FILE


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
    video = experiment.video_settings  # checked when the experiment was loaded: fps is None or above 0
    fps = opts.fps if opts.fps is not None else video.fps if video.fps is not None else DEFAULT_FPS
    if not (math.isfinite(fps) and fps > 0):
        raise SetupError(f"--fps must be a finite number above 0, got {fps}")
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
    if video.height and video.width:  # the config's size; a decode whose size differs is checked per item
        try:
            scaled_size(video.height, video.width, opts.scale)
        except FrameSizeError as exc:
            raise SetupError(f"{exc} (the config's video_settings size)") from None
    if opts.view not in VIEWS:
        raise SetupError(f"--view must be one of {', '.join(VIEWS)}, got {opts.view}")
    view = "x0" if opts.view == "x0" else "xt"
    if opts.preset not in PRESETS:
        raise SetupError(f"--preset must be one of {', '.join(PRESETS)}, got {opts.preset}")
    configured = experiment.decode_arguments
    timestep = opts.decode_timestep if opts.decode_timestep is not None else configured.get("decode_timestep")
    noise_scale = (opts.decode_noise_scale if opts.decode_noise_scale is not None
                   else configured.get("decode_noise_scale"))
    for flag, value in (("decode_timestep", timestep), ("decode_noise_scale", noise_scale)):
        if value is not None and not 0 <= value <= 1:
            raise SetupError(f"{flag} must be between 0 and 1, got {value}")
    chunk = opts.decode_chunk_size if opts.decode_chunk_size is not None else configured.get("decode_chunk_size")
    if chunk is not None and chunk < 1:
        raise SetupError(f"decode_chunk_size must be at least 1, got {chunk}")
    output = OutputSettings(model=model, dtype=opts.dtype, fps=float(fps), format=opts.format, crf=crf,
                            preset=opts.preset, scale=opts.scale, vae_subfolder=opts.vae_subfolder or None,
                            vae_config=opts.vae_config or None, frames=video.frames, height=video.height,
                            width=video.width, view=view, family=opts.family or None, decode_timestep=timestep,
                            decode_noise_scale=noise_scale, decode_chunk_size=chunk)
    if opts.decoder not in DECODERS:
        raise SetupError(f"--decoder must be one of {', '.join(DECODERS)}, got {opts.decoder}")
    if opts.tiny_weights and opts.decoder != "tiny":
        raise SetupError("--tiny-weights goes with --decoder tiny")
    if opts.decoder == "tiny":
        from .tiny.setup import tiny_output

        output = tiny_output(experiment, output, opts.tiny_weights)
    if opts.decoder == "preview":
        from .previews.setup import preview_output

        if resolve_executor(opts).kind == "ray":
            raise SetupError("--decoder preview runs in this process (no model, no device): drop the Ray options")
        output = preview_output(experiment, output, opts.family,
                                Filters.parse(opts.prompt_filter, opts.video_filter, opts.step_filter))
    if opts.output_dir:
        output_dir = absolute_path(opts.output_dir)
    else:
        output_dir = experiment.default_output_dir
        if output.decoder == "preview":
            from .previews import PREVIEW_DIRNAME

            output_dir = experiment.root / PREVIEW_DIRNAME
        elif output.decoder == "tiny":
            from .tiny import TINY_DIRNAME

            output_dir = experiment.root / TINY_DIRNAME
        if view == "x0":
            output_dir = output_dir.with_name(output_dir.name + X0_SUFFIX)
    return RunSettings(
        experiment=experiment,
        output=output,
        output_dir=output_dir,
        filters=Filters.parse(opts.prompt_filter, opts.video_filter, opts.step_filter),
        device=opts.device,
        force=opts.force,
        executor=resolve_executor(opts),
    )


X0_SUFFIX = "_x0"  # EXP/latents_videos_x0: the x0 view's own tree, with its own journal


def resolve_views(experiment: Experiment, opts: CliOptions) -> list[RunSettings]:
    """One ``RunSettings`` per view asked for: ``--view both`` decodes the stored x_t into the output
    folder and the x0 view into a sibling folder named ``<output folder>_x0``; x0 first, so that the
    x_t gallery pages, built last, show both side by side."""
    if opts.view != "both":
        return [resolve_settings(experiment, opts)]
    xt = resolve_settings(experiment, replace(opts, view="xt"))
    if not xt.output_dir.name:
        raise SetupError(f"--view both: the output folder {xt.output_dir} has no name to put the x0 tree beside")
    x0 = resolve_settings(experiment, replace(opts, view="x0", output_dir=None))
    if opts.output_dir:
        x0 = replace(x0, output_dir=xt.output_dir.with_name(xt.output_dir.name + X0_SUFFIX))
    return [x0, xt]
