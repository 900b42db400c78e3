"""Command line: thin click commands over settings, plan and runner."""
from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import click

from .version import __version__
from . import heap
from .errors import LatentDecoderError, SetupError
from .experiment import Experiment, absolute_path
from .families import FAMILIES
from .previews.factors import published_spaces
from .plan import Plan
from .states import ItemState
from .tiny import DISTILL_MINUTES, DISTILL_SAMPLE
from .plan import plan_run
from .runner import RunReport, run_decode
from .settings import (DECODERS, DEFAULT_CRF, DEFAULT_PRESET, DEFAULT_REFRESH_S, DTYPES, EXECUTORS, FORMATS, IO_MODES,
                       PRESETS, VIEWS, CliOptions, RunSettings, WatchOptions, resolve_settings, resolve_views)

log = logging.getLogger("latent_decoder")

EXIT_SETUP = 2
EXIT_INTERRUPTED = 130


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """A warning of ours (float16 on CPU, the Wan stream refused, ...) as one line, like the rest."""
    log.warning("warning: %s", message)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    # torch sets its loggers to WARNING when its import completes; one cut short by Ctrl-C leaves them on
    # our INFO root, and torch's exit hook then prints "FakeTensor cache stats" (fake_tensor.dump_cache_stats)
    logging.getLogger("torch").setLevel(logging.WARNING)
    if not verbose:  # -v keeps Python's own form: file, line and the source line
        warnings.showwarning = _one_line_warning
        for noisy in ("diffusers", "huggingface_hub", "imageio_ffmpeg", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="diffusers")
        warnings.filterwarnings("ignore", category=FutureWarning)


def _fail(err: BaseException, verbose: bool) -> None:
    if verbose:
        log.exception("")
    click.echo(f"error: {err}", err=True)
    sys.exit(getattr(err, "exit_code", 1))


def interruptible(work: Callable[[], Any]) -> Any:
    """``work()`` with Ctrl-C and SIGTERM ending it cleanly (temp files removed as the stack unwinds),
    the process then exiting 130 or 143 with one line, like an interrupted decode."""
    from .stop import StopSignals, interrupt_signal

    signals = StopSignals()
    try:
        with signals:
            return work()
    except BaseException as exc:
        signum = interrupt_signal(exc, signals)
        if signum is None:
            raise
        click.echo("interrupted", err=True)
        sys.exit(128 + signum)


def model_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--model``, ``--vae-subfolder`` and ``--vae-config``: where the VAE comes from, the same for every command."""
    for option in reversed([
        click.option("--model", help="Repo id, model or VAE folder, or a .safetensors file; overrides the config's "
                                     "model_settings.model_id."),
        click.option("--vae-subfolder", metavar="NAME",
                     help="The model's VAE subfolder [default: vae/, else the folder itself]."),
        click.option("--vae-config", metavar="SRC",
                     help="For a single .safetensors --model: the VAE folder, model folder or repo id with its "
                          "config.json."),
    ]):
        command = option(command)
    return command


def rule_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--family``, ``--decode-timestep``, ``--decode-noise-scale`` and ``--decode-chunk-size``: how the
    latents are decoded, the same for ``decode`` and ``inspect``."""
    for option in reversed([
        click.option("--family", metavar="NAME",
                     help="The decode rule to use instead of the one found from the model folder's "
                          "model_index.json (or modular_model_index.json) pipeline or the VAE class (see "
                          "`inspect`; families: "
                          + ", ".join(FAMILIES) + "). With --decoder preview: the latent family of "
                          "the published factors (" + ", ".join(published_spaces()) + ")."),
        click.option("--decode-timestep", type=click.FloatRange(0, 1), metavar="T",
                     help="LTX-Video/LTX-2 with timestep conditioning: the pipeline's decode_timestep "
                          "[default: the config's video_settings/model_settings value, else the pipeline's 0.0]."),
        click.option("--decode-noise-scale", type=click.FloatRange(0, 1), metavar="S",
                     help="LTX-Video/LTX-2: the pipeline's decode_noise_scale [default: the config's, else "
                          "the decode timestep]; the noise comes from a fixed seed."),
        click.option("--decode-chunk-size", type=click.IntRange(1), metavar="N",
                     help="Image VAEs per frame (AnimateDiff, Latte, SVD, ...): frames per VAE call, the "
                          "pipeline's decode_chunk_size; it changes SVD's frames [default: the config's "
                          "video_settings/model_settings value, else the pipeline's]."),
    ]):
        command = option(command)
    return command


def output_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--dtype``, ``--format``, ``--fps``, ``--crf``, ``--quality``, ``--preset``: how the full VAE's steps are
    decoded and written, the same for ``decode`` and ``distill`` (whose sampled steps are outputs of the tree)."""
    for option in reversed([
        click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True, help="VAE precision."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="mp4", show_default=True,
                     help="mp4: H.264 video per step; png: a folder of lossless frames per step."),
        click.option("--fps", type=float, help="Frame rate [default: video_settings.fps from the config, else 12]."),
        click.option("--crf", type=click.IntRange(0, 51),
                     help=f"x264 constant rate factor, lower is better [default: {DEFAULT_CRF}]."),
        click.option("--quality", type=click.FloatRange(0, 10),
                     help="Quality 0-10 as in the original tool (instead of --crf)."),
        click.option("--preset", type=click.Choice(PRESETS), default=DEFAULT_PRESET, show_default=True,
                     help="x264 preset: slower presets spend more CPU per video for smaller files (veryfast: ~3.5x "
                          "less CPU than medium on noisy steps, and smaller files there)."),
    ]):
        command = option(command)
    return command


def ray_options(command: Callable[..., None]) -> Callable[..., None]:
    """Where the full VAE's decodes run (this process or Ray workers), the same for ``decode`` and ``distill``."""
    for option in reversed([
        click.option("--executor", type=click.Choice(EXECUTORS), default="auto", show_default=True,
                     help="inline: this process, one device. ray: a pool of Ray workers. auto: ray when a Ray option "
                          "below is given, or more than one GPU is visible and --device is auto; else inline."),
        click.option("--gpus", type=click.IntRange(1),
                     help="Ray: GPUs to use, one worker each [default: all the cluster has]."),
        click.option("--actors-per-gpu", type=click.IntRange(1), help="Ray: workers sharing each GPU [default: 1]."),
        click.option("--workers", type=click.IntRange(1), help="Ray: number of CPU workers (no GPU) [default: 1]."),
        click.option("--address", metavar="ADDR",
                     help="Ray: join this cluster (auto, HOST:PORT or ray://HOST:10001) instead of starting a local one."),
        click.option("--io", type=click.Choice(IO_MODES), default="driver", show_default=True,
                     help="Ray: driver reads latents and writes videos, workers need no shared storage; "
                          "shared: workers read and write the experiment path (all nodes must mount it)."),
        click.option("--start-timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
                     help="Ray: wait this long for workers to be placed; go on with those started, fail if none "
                          "[default: 60]."),
        click.option("--item-timeout", type=click.FloatRange(0, min_open=True), metavar="SECONDS",
                     help="Ray: a step running longer than this (and 10x the median step time) counts as hung: its "
                          "worker is restarted and the step retried [default: 300]."),
    ]):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="latent-decoder")
def cli() -> None:
    """Decode the latents a video-diffusion experiment stored at every denoising step into videos.

    An experiment folder holds configs/generation_config.yaml and
    latents/<prompt>/<video>/step_NNN.npy.gz; videos go to EXP/latents_videos/.
    """


@cli.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--output-dir", type=click.Path(path_type=Path),
              help="Where videos go [default: EXP/latents_videos; EXP/latents_tiny with --decoder tiny; "
                   "EXP/latents_previews with --decoder preview].")
@click.option("--prompt-filter", metavar="NAMES", help="Only these prompt folders (comma list of exact names).")
@click.option("--video-filter", metavar="NAMES", help="Only these video folders, e.g. vid_001,vid_002.")
@click.option("--step-filter", metavar="NAMES", help="Only these steps, e.g. step_000,step_019 (or 0,19).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@output_options
@click.option("--scale", type=click.FloatRange(0, 4, min_open=True), default=1.0, show_default=True,
              help="Resize frames by this factor (0.5 = half size).")
@model_options
@click.option("--decoder", type=click.Choice(DECODERS), default="vae", show_default=True,
              help="vae: the model's own VAE. tiny: a tiny decoder (a TAEHV-family video decoder published by "
                   "madebyollin/taehv, a TAESD image decoder per frame for the image-VAE pipelines, published by "
                   "madebyollin/taesd, or one distilled into EXP/tiny_decoder), many times faster, to the full "
                   "VAE's frames and size, "
                   "into EXP/latents_tiny. preview: no model, no weights, no device: every latent frame through "
                   "a linear latent->RGB map (the family's published factors, or this model's calibrate-preview "
                   "map), repeated to the full video's frames and size, into EXP/latents_previews.")
@click.option("--tiny-weights", type=click.Path(path_type=Path), metavar="FILE",
              help="--decoder tiny: this .safetensors/.pth decoder file, or diffusers AutoencoderTiny folder "
                   "[default: EXP/tiny_decoder/, else the "
                   "published file the family rule names in $LATENT_DECODER_TINY_DIR (default "
                   "~/.cache/latent-decoder/tiny), else in the HF cache; nothing is downloaded].")
@rule_options
@click.option("--view", type=click.Choice(VIEWS), default="xt", show_default=True,
              help="xt: the stored latents. x0: the model's prediction of the clean video at each step, "
                   "recovered from consecutive stored steps (flow-matching schedulers), into EXP/latents_videos_x0. "
                   "both: the two trees.")
@click.option("--watch", is_flag=True,
              help="Decode the steps already there, then keep decoding new ones as the generation writes "
                   "them (only complete files; torn ones wait). Stops after --idle-exit or Ctrl-C.")
@click.option("--idle-exit", type=click.FloatRange(0, min_open=True), default=600, show_default=True,
              metavar="SECONDS", help="--watch: stop after this long without a new complete step.")
@click.option("--poll", is_flag=True, help="--watch: rescan every second instead of filesystem events (NFS).")
@click.option("--refresh-every", type=click.FloatRange(0, min_open=True), default=DEFAULT_REFRESH_S, show_default=True,
              metavar="SECONDS", help="--watch: redraw the summary and the views of the videos that changed at "
                                      "most this often (and always when the watch stops).")
@click.option("--force", is_flag=True, help="Decode again items that are already done.")
@click.option("--dry-run", is_flag=True, help="Print what would be decoded and what is already done; decode nothing.")
@ray_options
@click.option("--verbose", "-v", is_flag=True, help="More logging; tracebacks on errors.")
def decode(experiment: Path, output_dir: Path | None, prompt_filter: str | None, video_filter: str | None,
           step_filter: str | None, device: str, dtype: str, fmt: str, fps: float | None, crf: int | None,
           quality: float | None, preset: str, scale: float, model: str | None, vae_subfolder: str | None,
           vae_config: str | None, view: str, watch: bool, idle_exit: float, poll: bool, refresh_every: float,
           force: bool, dry_run: bool, executor: str, gpus: int | None,
           actors_per_gpu: int | None, workers: int | None, address: str | None, io: str,
           start_timeout: float | None, item_timeout: float | None, verbose: bool, decoder: str = "vae",
           tiny_weights: Path | None = None, family: str | None = None, decode_timestep: float | None = None,
           decode_noise_scale: float | None = None, decode_chunk_size: int | None = None) -> None:
    """Decode every stored step of EXPERIMENT into a video.

    Resumes by default: a step is skipped only if it was decoded from this very latent file with
    the same settings and its outputs are still there (the output folder's journal says so; see
    `latent-decoder status`). Exit status: 0 all decoded, 1 some steps failed or the run had to
    stop (disk full, broken GPU; finished steps kept), 2 bad setup or nothing to decode, 130/143
    interrupted by Ctrl-C/SIGTERM (finished steps kept).

    With several GPUs (or --workers, or --address) steps are spread over Ray workers, one
    per GPU; a worker that dies or hangs is restarted and its steps decoded again, and a step
    that killed three workers is recorded as failed.
    """
    _setup_logging(verbose)
    opts = CliOptions(output_dir=output_dir, prompt_filter=prompt_filter, video_filter=video_filter,
                      step_filter=step_filter, device=device, fps=fps, dtype=dtype, format=fmt, quality=quality,
                      preset=preset,
                      crf=crf, scale=scale, model=model, vae_subfolder=vae_subfolder, vae_config=vae_config,
                      force=force, executor=executor, address=address, gpus=gpus, actors_per_gpu=actors_per_gpu,
                      workers=workers, io=io, start_timeout=start_timeout, item_timeout=item_timeout, view=view,
                      decoder=decoder, family=family, decode_timestep=decode_timestep,
                      decode_noise_scale=decode_noise_scale, decode_chunk_size=decode_chunk_size,
                      tiny_weights=str(tiny_weights) if tiny_weights else None)
    reports: list[tuple[RunSettings, RunReport]] = []
    watching = WatchOptions(idle_exit=idle_exit, poll=poll, refresh_every=refresh_every) if watch else None
    try:
        if watching is not None and (dry_run or view == "both"):
            raise SetupError("--watch decodes one view as it is written: not with --dry-run or --view both")
        for settings in resolve_views(Experiment.load(experiment, latents_required=watching is None), opts):
            settings = replace(settings, watch=watching)
            if dry_run:
                print_plan(settings, plan_run(settings), verbose)
                continue
            _describe(settings)
            reports.append((settings, run_decode(settings)))
            if reports[-1][1].interrupted is not None or reports[-1][1].stopped is not None:
                break
    except LatentDecoderError as err:
        _fail(err, verbose)
        return
    except KeyboardInterrupt as exc:  # before the run started (planning, model loading): nothing to keep
        click.echo("interrupted", err=True)
        sys.exit(128 + getattr(exc, "signum", EXIT_INTERRUPTED - 128))
    except OSError as err:  # an OS error no stage anticipated: still one line naming the path
        _fail(SetupError(f"{err.filename or 'I/O'}: {err.strerror or err}"), verbose)
        return
    for settings, report in reports:
        print_report(settings, report)
    sys.exit(max((report.exit_code for _, report in reports), default=0))


def _describe(settings: RunSettings) -> None:
    o = settings.output
    enc = f"crf {o.crf} {o.preset}, {o.fps:g} fps" if o.format == "mp4" else "lossless"
    view = ", view x0" if o.view == "x0" else ""
    log.info("experiment %s\nmodel      %s\noutput     %s (%s, %s, %s%s%s)", settings.experiment.root, o.model,
             settings.output_dir, o.format, enc, o.dtype, f", scale {o.scale:g}" if o.scale != 1 else "", view)
    if o.decoder == "preview":
        log.info("decoder    preview (no model loaded): %s latents, %s map", o.family, o.preview_factors)
    elif o.decoder == "tiny":
        log.info("decoder    tiny: %s (%s)", o.tiny_file, o.tiny_weights)


def _warn_duplicates(plan: Plan) -> None:
    for line in plan.duplicates[:10]:
        click.echo(f"warning: {line}", err=True)
    if len(plan.duplicates) > 10:
        click.echo(f"warning: ... and {len(plan.duplicates) - 10} more steps with several files", err=True)
    if plan.x0_label:
        click.echo(f"x0 view: {plan.x0_label}", err=True)
    for key, why in list(plan.unavailable.items())[:10]:
        click.echo(f"not available: {key}: {why}", err=True)
    if len(plan.unavailable) > 10:
        click.echo(f"not available: ... and {len(plan.unavailable) - 10} more steps", err=True)


def print_plan(settings: RunSettings, plan: Plan, verbose: bool) -> None:
    _describe(settings)
    _warn_duplicates(plan)
    by_video: dict[str, list] = {}
    for step in plan.items:
        by_video.setdefault(step.video_key, []).append(step)
    for key, steps in by_video.items():
        done = sum(1 for s in steps if plan.states[s.key] is ItemState.DONE)
        click.echo(f"{key}: {len(steps)} steps, {done} done, {len(steps) - done} to decode")
        if verbose:
            for s in steps:
                click.echo(f"  {s.step}  {plan.states[s.key].words}")
    counts = ", ".join(f"{plan.count(st)} {st.words}" for st in ItemState if plan.count(st))
    click.echo(f"dry run: {len(plan.items)} items ({counts or 'nothing matches the filters'}); nothing decoded")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def print_report(settings: RunSettings, report: RunReport) -> None:
    _warn_duplicates(report.plan)
    n = report.attempts
    rate = f" ({n / report.wall_seconds:.2f} items/s)" if n and report.wall_seconds > 0 else ""
    head = "interrupted" if report.interrupted is not None else "stopped" if report.stopped else "finished"
    if report.stopped is not None:
        click.echo(f"error: {report.stopped}", err=True)
    steps = len(report.records)
    again = f" ({steps} steps, {n - steps} decoded again after they changed)" if n > steps else ""
    click.echo(f"{head}: decoded {n} item(s){again} in {_duration(report.wall_seconds)}{rate}: "
               f"{report.succeeded} ok, {len(report.failed)} failed, {report.skipped} already done", err=True)
    for rec in report.failed[:10]:
        click.echo(f"  failed {rec.item}: {rec.error}", err=True)
    if len(report.failed) > 10:
        click.echo(f"  ... and {len(report.failed) - 10} more (see decode_summary.json)", err=True)
    if report.incomplete:
        shown = ", ".join(report.incomplete[:5]) + (f" and {len(report.incomplete) - 5} more"
                                                     if len(report.incomplete) > 5 else "")
        click.echo(f"not decoded: {len(report.incomplete)} step(s) still incomplete (being written?) when the "
                   f"watch ended: {shown}", err=True)
    if report.summary is not None:
        s = report.summary
        pending = f", {s['pending_steps']} pending" if s.get("pending_steps") else ""
        click.echo(f"all items in the folder: {s['successful_steps']}/{s['total_steps']} ok, "
                   f"{s['failed_steps']} failed{pending}", err=True)
    click.echo(f"videos:  {settings.output_dir}", err=True)
    click.echo(f"summary: {settings.output_dir / 'decode_summary.json'}", err=True)


@cli.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@model_options
@rule_options
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="VAE precision the memory estimate assumes.")
@click.option("--max-files", type=click.IntRange(1), default=1000, show_default=True,
              help="Read the headers of at most this many latent files (spread over the experiment).")
@click.option("--output-dir", type=click.Path(path_type=Path),
              help="The decode's output folder whose state to show [default: EXP/latents_videos].")
@click.option("--tiny-weights", type=click.Path(path_type=Path), metavar="FILE",
              help="The tiny decoder file to check against the latents [default: the one --decoder tiny would find].")
@click.option("--verbose", "-v", is_flag=True, help="Tracebacks on errors.")
def inspect(experiment: Path, model: str | None, vae_subfolder: str | None, vae_config: str | None,
            family: str | None, decode_timestep: float | None, decode_noise_scale: float | None,
            decode_chunk_size: int | None, dtype: str,
            max_files: int, output_dir: Path | None, tiny_weights: Path | None, verbose: bool) -> None:
    """Show what decoding EXPERIMENT would use and produce, without decoding: the resolved model,
    its VAE class and family rule (the diffusers pipeline it mirrors, and why it was chosen: --family,
    the pipeline in model_index.json or modular_model_index.json, or the VAE class), the stored latent shapes,
    the frames and size each decodes to, a rough decode-memory estimate, and, where the output folder
    has been decoded into, which steps a decode with these settings would skip or redo (and why:
    changed input, other settings, outputs missing).

    Exit status: 0 all fits, 1 some latents do not fit the VAE, 2 the model cannot be used.
    """
    from .inspection import inspect_experiment, output_lines, render, tiny_lines, x0_lines

    _setup_logging(verbose)
    try:
        settings = resolve_settings(Experiment.load(experiment),
                                    CliOptions(model=model, vae_subfolder=vae_subfolder, vae_config=vae_config,
                                               dtype=dtype, output_dir=output_dir, family=family,
                                               decode_timestep=decode_timestep,
                                               decode_noise_scale=decode_noise_scale,
                                               decode_chunk_size=decode_chunk_size))
        info = inspect_experiment(settings.experiment, settings.output, max_files)
        lines = render(info) + tiny_lines(settings, tiny_weights) + x0_lines(settings) + output_lines(settings)
    except LatentDecoderError as err:
        _fail(err, verbose)
        return
    for line in lines:
        click.echo(line)
    sys.exit(EXIT_SETUP if info.problem else 1 if any(s.problem for s in info.shapes) else 0)


@cli.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--output-dir", type=click.Path(path_type=Path), help="The decode's output folder [default: EXP/latents_videos].")
@click.option("--prompt", "prompt", metavar="NAME", help="Only this prompt folder.")
@click.option("--video", "video", metavar="NAME", help="Only this video folder.")
@click.option("--failed", is_flag=True, help="List the failed steps with their reasons.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON record per step (JSONL: redirect to a file to export).")
@click.option("--verbose", "-v", is_flag=True, help="Tracebacks on errors.")
def status(experiment: Path, output_dir: Path | None, prompt: str | None, video: str | None, failed: bool,
           as_json: bool, verbose: bool) -> None:
    """Show what the journal of EXPERIMENT's output folder knows, per video and per step, as of the
    last run that scanned each item (a dry run of `decode` checks the files again).

    States: done, failed (the last attempt; an earlier good output stays until replaced), pending
    (never decoded), changed (the latent file changed since it was decoded), stale (decoded with
    other settings).

    An output folder shared by several experiments holds the items of the one decoded last: when
    that is another experiment, a warning line on stderr names it, and what the folder holds is
    shown all the same.
    """
    from .status import other_experiment, render_status, status_records

    _setup_logging(verbose)
    try:
        exp = Experiment.load(experiment)
        out = absolute_path(output_dir) if output_dir else exp.default_output_dir
        other = other_experiment(exp, out)
        if other is not None:
            click.echo(f"warning: {out} was last decoded from {other}, not {exp.root}: the steps below are "
                       "that experiment's", err=True)
        if as_json:
            for line in status_records(exp, out, prompt, video, failed):
                click.echo(line)
        else:
            for line in render_status(exp, out, prompt, video, failed):
                click.echo(line)
    except LatentDecoderError as err:
        _fail(err, verbose)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("experiment")
@click.argument("decode_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--address", required=True, metavar="URL", help="The cluster's Ray dashboard, e.g. http://HEAD:8265.")
@click.option("--runtime-env", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Runtime-env YAML merged into the job's (which always ships this package), e.g. jobs/runtime_env.yaml.")
@click.option("--no-wait", is_flag=True, help="Return once submitted instead of streaming the job's logs.")
@click.option("--verbose", "-v", is_flag=True, help="Tracebacks on errors.")
def submit(experiment: str, decode_args: tuple[str, ...], address: str, runtime_env: Path | None, no_wait: bool,
           verbose: bool) -> None:
    """Decode EXPERIMENT as a Ray Job on the cluster at --address.

    EXPERIMENT is the path as the cluster's head node sees it. Options after -- go to `decode`
    on the cluster, which joins the job's cluster (--address auto):

        latent-decoder submit /data/EXP --address http://HEAD:8265 -- --gpus 8

    Streams the job's logs and exits with its status (unless --no-wait). With Ray's token
    authentication on, set RAY_AUTH_TOKEN to the cluster's token.
    """
    from .submit import load_runtime_env, submit as submit_job

    _setup_logging(verbose)
    try:
        code = submit_job(experiment, list(decode_args), address, load_runtime_env(runtime_env), not no_wait,
                          lambda line: click.echo(line))
    except LatentDecoderError as err:
        _fail(err, verbose)
        return
    sys.exit(code)


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path), default=Path("demo_experiment"))
@click.option("--steps", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Denoising steps stored per clip (Wan's UniPC flow schedule, flow_shift 3).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the starting noise.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True, help="VAE precision.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="mp4", show_default=True,
              help="mp4: H.264 video per step; png: a folder of lossless frames per step.")
@click.option("--verbose", "-v", is_flag=True, help="More logging; tracebacks on errors.")
def demo(directory: Path, steps: int, seed: int, device: str, dtype: str, fmt: str, verbose: bool) -> None:
    """Build a demo experiment in DIRECTORY (default ./demo_experiment) and decode it.

    Four short clips of coloured shapes, each stored at every step of a flow-matching path from
    noise to the clip's latent (as a Wan pipeline's callback stores them), with a tiny Wan VAE
    trained on those clips (scripts/train_demo_vae.py). The decoded steps show the shapes emerging
    from noise. As a user would: `distill` (a sample of the steps decoded with the full VAE, a tiny
    decoder trained on them until its held-out PSNR is good enough, a couple of minutes on a CPU),
    `decode` (the other steps, with the full VAE, into EXP/latents_videos) and `decode --decoder tiny`
    (every step, into EXP/latents_tiny, whose pages show both trees side by side). Running it again
    resumes (the distilled decoder is kept); a folder that is not a demo experiment is refused.
    """
    from .demo import run_demo, where_to_look

    _setup_logging(verbose)
    opts = CliOptions(device=device, dtype=dtype, format=fmt, executor="inline")

    def distilled(result: Any) -> None:
        for line in result.lines():
            click.echo(line, err=True)

    try:
        run = run_demo(directory, steps=steps, seed=seed, opts=opts, on_decoded=print_report, on_distilled=distilled)
    except LatentDecoderError as err:
        _fail(err, verbose)
        return
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    click.echo(f"demo experiment {run.settings.experiment.root}: {steps} steps from noise to each clip")
    tiny = run.tiny_settings.output_dir if run.tiny_settings is not None else None
    for label, path in where_to_look(run.settings.output_dir, tiny):
        click.echo(f"{label + ':':22s}{path}")
    sys.exit(run.exit_code)


@cli.command()
@click.option("--full", is_flag=True,
              help="The real-size Wan2.1 VAE (random weights) on 61 frames at 848x480; without it a tiny VAE at "
                   "17x128x192, which a CPU runs in about a minute.")
@click.option("--size", metavar="FxHxW",
              help="Another video size for the real-size Wan2.1 VAE and the tiny decoder, e.g. 17x240x432 "
                   "(frames x height x width; frames 4k+1, sides multiples of 8).")
@click.option("--items", type=click.IntRange(2), default=6, show_default=True, help="Steps to decode.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", "dtypes", type=click.Choice(DTYPES), multiple=True,
              help="Our dtypes to measure (repeatable) [default: float32 and bfloat16].")
@click.option("--verbose", "-v", is_flag=True, help="More logging; tracebacks on errors.")
def bench(full: bool, size: str | None, items: int, device: str, dtypes: tuple[str, ...], verbose: bool) -> None:
    """Measure the tool against the plain diffusers loop on this machine and print them side by side:
    the plain loop (float32 decode, export_to_video, one step after the other), our decode alone per
    dtype (with peak GPU memory), our whole run per dtype, the tiny decoder (--decoder tiny, shaped
    like taew2_1) on the same device and latents, and the ratios. Nothing is downloaded; the models
    are built with random weights in a temporary folder."""
    from .bench import parse_size, run_bench

    _setup_logging(verbose)
    try:
        geometry = parse_size(size) if size else None
        result = run_bench(full=full or geometry is not None, items=items, device=device,
                           dtypes=dtypes or ("float32", "bfloat16"), size=geometry,
                           log=lambda line: click.echo(line, err=True))
    except LatentDecoderError as err:
        _fail(err, verbose)
        return
    for line in result.table():
        click.echo(line)


@cli.command("calibrate-preview")
@click.argument("experiment", type=click.Path(path_type=Path))
@model_options
@click.option("--steps", type=click.IntRange(1), default=8, show_default=True,
              help="Fit on the final (clean) step of up to this many videos.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N, for the full decodes.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True, help="VAE precision.")
@click.option("--force", is_flag=True,
              help="Replace the model's stored map even when it predicts these decodes better than the new fit.")
@click.option("--verbose", "-v", is_flag=True, help="More logging; tracebacks on errors.")
def calibrate_preview(experiment: Path, model: str | None, vae_subfolder: str | None, vae_config: str | None,
                      steps: int, device: str, dtype: str, force: bool, verbose: bool) -> None:
    """Fit the linear latent->RGB map that `decode --decoder preview` uses for EXPERIMENT's model.

    Decodes the final step of a few videos with the full VAE, average-pools each video onto the
    latent grid and fits factors and bias by least squares; prints the fit's R^2 (and that of the
    family's published factors). The map is stored per model under
    $LATENT_DECODER_PREVIEW_DIR (default ~/.cache/latent-decoder/previews) and from then on preferred
    over the published factors; models without published factors (CogVideoX) need it.

    Only final steps are fitted: a video's last stored step counts when its metadata says it is the
    last (step == total_steps - 1); other videos are skipped with a warning, and so is a step that
    cannot be read. A stored map that predicts these decodes better than the new fit does (on videos
    it was not fitted to) is kept unless --force. Exit status: 0 saved, 1 the stored map was kept,
    2 nothing to calibrate on or bad setup, 130/143 interrupted by Ctrl-C/SIGTERM (nothing written).
    """
    _setup_logging(verbose)

    def calibrate() -> Any:
        from .previews.calibrate import calibrate_preview as fit

        settings = resolve_settings(Experiment.load(experiment), CliOptions(
            model=model, vae_subfolder=vae_subfolder, vae_config=vae_config, dtype=dtype, device=device))
        return fit(settings.experiment, settings.output, device, steps, force=force)

    try:
        result = interruptible(calibrate)
    except LatentDecoderError as err:
        _fail(err, verbose)
        return
    click.echo(result.summary())
    click.echo(result.outcome(), err=not result.saved)
    sys.exit(0 if result.saved else 1)


@cli.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--sample", type=click.IntRange(2), default=DISTILL_SAMPLE, show_default=True,
              help="Steps to decode with the full VAE, spread over prompts, videos and the whole trajectory (noisy "
                   "early steps and clean late ones); they become outputs of the full-VAE tree like any decode's.")
@click.option("--held-out", type=click.IntRange(1),
              help="Of the sample, steps never trained on, on which PSNR and SSIM against the full VAE are measured "
                   "[default: a fifth of the sample].")
@click.option("--minutes", type=click.FloatRange(0, min_open=True), default=DISTILL_MINUTES, show_default=True,
              help="Training time (after the sample's decode).")
@click.option("--until-psnr", type=float, metavar="DB", help="Stop training as soon as the held-out PSNR reaches DB.")
@click.option("--width", type=click.IntRange(4),
              help="Train a new decoder with stage widths W, W/2, W/4, W/4 (the published decoders: 256) [default: go on "
                   "from the decoder distilled for this experiment before, else from the published file that fits "
                   "these latents, else a new one at 64].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample and of the training.")
@click.option("--output-dir", type=click.Path(path_type=Path),
              help="The full-VAE tree the sampled steps are decoded into [default: EXP/latents_videos].")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N: for the training, and for the sample's decode in this process.")
@output_options
@model_options
@rule_options
@ray_options
@click.option("--verbose", "-v", is_flag=True, help="More logging; tracebacks on errors.")
def distill(experiment: Path, sample: int, held_out: int | None, minutes: float, until_psnr: float | None,
            width: int | None, seed: int, output_dir: Path | None, device: str, dtype: str, fmt: str, fps: float | None,
            crf: int | None, quality: float | None, preset: str, model: str | None, vae_subfolder: str | None,
            vae_config: str | None, family: str | None, decode_timestep: float | None,
            decode_noise_scale: float | None, decode_chunk_size: int | None, executor: str, gpus: int | None,
            actors_per_gpu: int | None,
            workers: int | None, address: str | None, io: str, start_timeout: float | None,
            item_timeout: float | None, verbose: bool) -> None:
    """Train a tiny decoder for EXPERIMENT's VAE on EXPERIMENT's own steps, for `decode --decoder tiny`.

    Decodes a sample of the steps with the full VAE (as `decode` would: they are outputs of
    EXP/latents_videos, journaled, and a later decode skips them; on Ray too), trains a
    TAEHV-family decoder on (stored latent, VAE frames) pairs in this process, and measures it on
    held-out steps (PSNR and SSIM against the full VAE, shown as it trains). Saves
    EXP/tiny_decoder/decoder.safetensors and card.json (the VAE's identity, the steps, the measured
    quality, the training time), which `decode --decoder tiny` then uses for this experiment; the
    training pairs stay in EXP/tiny_decoder/pairs/ for the next distill (delete them freely).
    Ends with the decode time the tiny decoder saves on the steps the full VAE has not decoded.

    Exit status: 0 saved, 1 some sampled steps failed to decode or nothing better than the decoder
    already there was found (it is kept), 2 bad setup, 130/143 interrupted by Ctrl-C/SIGTERM (during
    training: the best decoder measured so far is saved first).
    """
    from .tiny.distill import DistillOptions, distill as run_distill

    _setup_logging(verbose)
    opts = CliOptions(output_dir=output_dir, device=device, fps=fps, dtype=dtype, format=fmt, quality=quality,
                      crf=crf, preset=preset, model=model, vae_subfolder=vae_subfolder, vae_config=vae_config,
                      family=family, decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale,
                      decode_chunk_size=decode_chunk_size, executor=executor, address=address, gpus=gpus, actors_per_gpu=actors_per_gpu, workers=workers,
                      io=io, start_timeout=start_timeout, item_timeout=item_timeout)
    options = DistillOptions(sample=sample, held_out=held_out, minutes=minutes, until_psnr=until_psnr, width=width,
                             seed=seed)
    try:
        settings = resolve_settings(Experiment.load(experiment), opts)
        _describe(settings)
        result = run_distill(settings, options, on_decoded=print_report)
    except LatentDecoderError as err:
        _fail(err, verbose)
        return
    except KeyboardInterrupt as exc:  # before the training: what was decoded is kept, like an interrupted decode
        click.echo("interrupted", err=True)
        sys.exit(128 + getattr(exc, "signum", EXIT_INTERRUPTED - 128))
    for line in result.lines():
        click.echo(line)
    sys.exit(result.exit_code)


@cli.command()
@click.argument("experiment", type=click.Path(path_type=Path))
@click.option("--output-dir", type=click.Path(path_type=Path), help="The decode's output folder [default: EXP/latents_videos].")
@click.option("--force", is_flag=True, help="Rebuild every video's views, not only those that changed.")
@click.option("--verbose", "-v", is_flag=True, help="Tracebacks on errors.")
def gallery(experiment: Path, output_dir: Path | None, force: bool, verbose: bool) -> None:
    """Bring the gallery of EXPERIMENT's output folder up to date and print the path of its index.html.

    Per video: progression.png (one row per step), progression.mp4 (the steps in turn),
    latent_stats.json and a page; index.html links them all and opens from disk. Every decode run
    does this at its end; only videos whose views are missing or behind the journal are drawn.
    Exit status: 0 built, 1 some videos' views could not be built, 2 nothing decoded there yet, not
    writable, or another run holds the folder; 130/143 interrupted by Ctrl-C/SIGTERM.
    """
    from .views import update_gallery

    _setup_logging(verbose)
    try:
        exp = Experiment.load(experiment)
        out = absolute_path(output_dir) if output_dir else exp.default_output_dir
        result = interruptible(lambda: update_gallery(out, force=force))
    except LatentDecoderError as err:
        _fail(err, verbose)
        return
    for problem in result.problems:
        click.echo(f"warning: could not build the views of {problem}", err=True)
    click.echo(str(result.index))
    sys.exit(1 if result.problems else 0)

def main() -> None:
    heap.own_process()
    cli(prog_name="latent-decoder")
