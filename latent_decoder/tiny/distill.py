"""``latent-decoder distill EXP``: a tiny decoder for this experiment's VAE, trained on its own steps.

1. **Setup** (refused in one line before anything is written): the full VAE (its family rule and
   geometry), the decoder to start from: the one distilled for this experiment before (its card
   names this VAE), else the published file the family rule names (``setup.published_file``, never
   downloaded), else a new one from the VAE's geometry (``training.config_for_vae``); ``--width``
   always starts anew at that width.
2. **The sample** (``sampling.choose_sample``): ``--sample`` steps spread over the trajectory (each video's
   steps by position, so noisy early steps and clean late ones are both there) and over the videos
   (taken in turn), ``--held-out`` of them, spread the same way, never trained on.
3. **The sample's decode** is a normal run of the full VAE (``runner.run_decode`` over exactly the
   sampled items, ``Filters.items``): its steps become outputs of the full-VAE tree, journaled, so a
   later ``decode`` skips them, and it runs in-process or on Ray like any decode. Its worker keeps
   each step's latent and frames as a training pair (``pairs.keeping_pairs``): one decode per step, exact
   frames. Pairs kept by an earlier distill are used again; a sampled step already decoded without
   a pair is decoded again (``force``) to get one. So the item lifecycle stays written once (the
   pipeline's prepare, compute, write, commit; the pair is a by-product of the compute stage), and
   training never sees frames read back from a lossy MP4 (it would learn x264's artifacts).
4. **Training** in this process on ``--device`` for ``--minutes`` (or until ``--until-psnr``), the
   held-out PSNR shown as it goes (``training.py``). Ctrl-C stops it: the best weights measured so
   far are saved when training improved on its start (measured, so the card tells the truth), then
   the command exits 130/143.
5. **Saving**: ``EXP/tiny_decoder/decoder.safetensors`` and ``card.json`` (``distilled.py``), unless
   the decoder already there scores better on these held-out steps (it is kept). ``--decoder tiny``
   then finds it without a flag.
6. **What it saves**: the full VAE's and the tiny decoder's seconds per step (the VAE's as the
   sample's decode measured them, the tiny decoder's on the training device), times the steps the
   full VAE has not decoded yet.
"""
from __future__ import annotations

import hashlib
import logging
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable


from ..errors import LatentDecoderError, SetupError, TinyCheckpointError, TinyMismatchError
from ..experiment import Filters
from ..families import DecodeContext, Family, TinySpace, detect
from ..models import ResolvedModel, resolve_model, vae_skeleton
from ..plan import plan_run
from ..runner import RunReport, decoder_class, run_decode
from ..settings import RunSettings
from ..stop import Interrupted, StopSignals, critical
from ..version import __version__
from ..worker import resolve_device
from . import DISTILL_MINUTES, DISTILL_SAMPLE
from .checkpoint import TinyCheckpoint, load_checkpoint, save_checkpoint
from .distilled import WEIGHTS_FILE, check_card, distilled_dir, read_card, vae_identity, write_card
from .model import TinyConfig, frames_uint8, kept_frames, load_decoder
from .pairs import PAIRS_DIRNAME, StoredPair, drop_stale_pairs, keeping_pairs, mark_pairs, read_pair
from .sampling import choose_sample
from .setup import check_fit, published_file, tiny_input, trim_for
from .training import (Outcome, Pair, Quality, Trainer, UnfitVae, config_for_vae, init_for_training, measure_quality,
                       train)

log = logging.getLogger(__name__)

DEFAULT_WIDTH = 64  # from scratch: trains in minutes on a CPU; the published decoders are 256 wide
HELD_OUT_SHARE = 5  # a fifth of the sample, by default


@dataclass(frozen=True)
class DistillOptions:
    sample: int = DISTILL_SAMPLE
    held_out: int | None = None  # None: a fifth of the sample (at least 1)
    minutes: float = DISTILL_MINUTES
    until_psnr: float | None = None
    width: int | None = None  # train from scratch at this width
    seed: int = 0


@dataclass(frozen=True)
class Start:
    """What training starts from."""

    label: str
    config: TinyConfig
    checkpoint: TinyCheckpoint | None  # None: from scratch


@dataclass
class DistillResult:
    folder: Path
    model: str
    vae_class: str
    family: str
    start: Start
    trained: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # sampled steps whose decode failed
    decoded: RunReport | None = None  # the sample's decode, when one ran
    device: str = ""
    quality: Quality | None = None  # the best measured
    start_quality: Quality | None = None
    kept: Quality | None = None  # the decoder already in the folder, on these held-out steps, when it stays
    saved: bool = False
    steps: int = 0
    train_seconds: float = 0.0
    stopped: str = ""  # "time", "target" or "interrupted"
    interrupted: int | None = None  # the signal
    vae_seconds: float | None = None  # per step
    vae_device: str | None = None
    tiny_seconds: float | None = None
    remaining: int | None = None  # steps the full VAE has not decoded

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return 128 + self.interrupted
        failed = self.decoded is not None and self.decoded.exit_code != 0
        return 1 if failed or self.left_out or not self.saved else 0

    def lines(self) -> list[str]:
        """What the command prints at its end."""
        out = [f"tiny decoder for {self.model} ({self.vae_class}, {self.family} rule), from {self.start.label}: "
               f"{self.start.config.describe()}"]
        if self.quality is None:
            out.append(f"interrupted before training: nothing saved; the sampled steps decoded so far are kept "
                       f"(outputs and training pairs in {self.folder / PAIRS_DIRNAME}): run distill again to go on")
            return out
        why = {"time": "the time was up", "target": "it reached --until-psnr",
               "interrupted": "interrupted"}.get(self.stopped, self.stopped)
        q, s = self.quality, self.start_quality
        worst, worst_db = q.worst
        out.append(f"trained for {_duration(self.train_seconds)} ({self.steps} optimiser steps on {self.device}, {why}) on "
                   f"{len(self.trained)} sampled step(s); on {len(self.held_out)} held-out step(s): PSNR {q.psnr:.1f} dB, "
                   f"SSIM {q.ssim:.3f} against the full VAE (worst {worst} {worst_db:.1f} dB; {s.psnr:.1f} dB at the start)")
        if self.saved:
            out.append(f"saved {self.folder / WEIGHTS_FILE} and its card.json: `latent-decoder decode EXP --decoder tiny` "
                       f"uses it for this experiment")
        elif self.kept is not None:
            out.append(f"kept the decoder in {self.folder}: it scores {self.kept.psnr:.1f} dB on these held-out steps, "
                       f"the new one {q.psnr:.1f} dB")
        else:
            out.append(f"nothing saved: no training step did better than {self.start.label}")
        saving = self.saving_line()
        if saving:
            out.append(saving)
        return out

    def saving_line(self) -> str | None:
        if self.vae_seconds is None or self.tiny_seconds is None or self.remaining is None:
            return None
        vae, tiny = self.vae_seconds, self.tiny_seconds
        where = (f" (the VAE on {self.vae_device})" if self.vae_device and self.vae_device != self.device else "")
        rates = (f"{vae:.2f} s/step with the full VAE, {tiny:.3f} s/step with this tiny decoder on {self.device}{where}, "
                 f"{vae / tiny:.0f}x" if tiny > 0 else f"{vae:.2f} s/step with the full VAE")
        if not self.remaining:
            return f"decode time: {rates}; the full VAE has decoded every step already"
        return (f"expected saving: the {self.remaining} step(s) the full VAE has not decoded take "
                f"{_duration(self.remaining * vae)} to decode with it and {_duration(self.remaining * tiny)} with "
                f"this tiny decoder ({rates}; decoding only, encoding is the same)")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


# ------------------------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class VaeFacts:
    model: ResolvedModel
    rule: Family
    ctx: DecodeContext
    space: TinySpace | None
    identity: dict[str, str]

    @property
    def geometry(self) -> tuple[int, int, int]:
        vae = self.ctx.vae
        return self.rule.channels(vae), self.rule.temporal_factor(vae), self.rule.spatial_factor(vae)


def _vae_facts(settings: RunSettings) -> VaeFacts:
    o = settings.output
    model = resolve_model(o.model, o.vae_subfolder, o.vae_config)
    rule = detect(model.class_name, model.pipeline, o.family).family
    ctx = DecodeContext(vae_skeleton(model), o.video, model.pipeline, o.decode_options)
    channels = rule.channels(ctx.vae)
    return VaeFacts(model, rule, ctx, rule.tiny_space(channels, o.model), vae_identity(model))


def _distilled_before(folder: Path, facts: VaeFacts) -> TinyCheckpoint | None:
    """The decoder distilled for this experiment before, when its card names this VAE."""
    if not (folder / WEIGHTS_FILE).is_file():
        return None
    try:
        check_card(read_card(folder), facts.model, folder)
        return load_checkpoint(folder / WEIGHTS_FILE)
    except (TinyCheckpointError, TinyMismatchError) as exc:
        log.warning("warning: %s; it will be replaced", exc)
        return None


def has_distilled(settings: RunSettings) -> bool:
    """Whether the experiment holds a decoder distilled for the VAE of ``settings``."""
    folder = distilled_dir(settings.experiment.root)
    return (folder / WEIGHTS_FILE).is_file() and _distilled_before(folder, _vae_facts(settings)) is not None


def _start(facts: VaeFacts, before: TinyCheckpoint | None, width: int | None) -> Start:
    """Where training starts (see the module's docstring); refused in one line for a VAE no TAEHV-family
    decoder fits."""
    channels, temporal, spatial = facts.geometry
    if width is None and before is not None:
        return Start(f"the decoder distilled before ({before.path})", before.config, before)
    if width is None and facts.space is not None:
        found = published_file(facts.space)
        if found is not None:
            published = load_checkpoint(found)
            try:
                check_fit(published, facts.rule, facts.ctx.vae, facts.model.source, facts.space)
                return Start(f"the published {found.name} ({found})", published.config, published)
            except TinyMismatchError as exc:
                log.warning("warning: %s; training one from scratch", exc)
    try:
        config = config_for_vae(channels, temporal, spatial, width or DEFAULT_WIDTH)
    except UnfitVae as exc:
        raise SetupError(f"{facts.model.source}: no tiny decoder for its {facts.rule.label} VAE: {exc}") from None
    if before is not None and before.config == config:
        return Start(f"the decoder distilled before ({before.path})", config, before)
    return Start("scratch", config, None)


# ------------------------------------------------------------------------------------------- pairs


def _pair(stored: StoredPair, facts: VaeFacts, config: TinyConfig) -> Pair | str:
    """A kept pair as training data, or why it cannot be (frames that are not this decoder's to make)."""
    try:
        latent = tiny_input(facts.rule, facts.ctx, stored.latent, stored.key)
        segment = facts.space.segment if facts.space is not None else None
        trim = trim_for(facts.rule, facts.ctx, latent.shape[1], config.t_upscale, segment, stored.key)
    except LatentDecoderError as exc:
        return str(exc)
    t, h, w = latent.shape[1], latent.shape[3], latent.shape[4]
    expected = (len(kept_frames(t, config.t_upscale, trim, segment)), h * config.spatial, w * config.spatial)
    if tuple(stored.frames.shape[:3]) != expected:
        return (f"{stored.key}: the VAE made {tuple(stored.frames.shape[:3])} frames of this latent, a tiny decoder "
                f"makes {expected}")
    return Pair(stored.key, latent, stored.frames, trim, segment)


# ------------------------------------------------------------------------------------------- progress


class TrainingBar:
    """Seconds of training done / the budget, with the held-out PSNR, on a tty; a log line per measure
    otherwise."""

    def __init__(self, seconds: float, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=round(seconds), unit="s", desc="training", dynamic_ncols=True, file=sys.stderr,
                        disable=(not enabled) or None,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} s{postfix}")
        self.line_mode = self.bar.disable and enabled
        self.best: float | None = None
        self.measured = ""

    def __call__(self, steps: int, seconds: float, loss: float, quality: Quality | None) -> None:
        if quality is not None:
            self.best = quality.psnr if self.best is None else max(self.best, quality.psnr)
            self.measured = f", held-out PSNR {quality.psnr:.1f} dB (best {self.best:.1f})"
            if self.line_mode:
                log.info("training: step %d, %s: held-out PSNR %.1f dB, SSIM %.3f (best %.1f dB)", steps,
                         _duration(seconds), quality.psnr, quality.ssim, self.best)
        self.bar.set_postfix_str(f"step {steps}{self.measured}", refresh=False)
        self.bar.update(max(0.0, min(seconds, self.bar.total) - self.bar.n))

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------------------- distill


def distill(settings: RunSettings, options: DistillOptions, progress: bool = True,
            on_decoded: Callable[[RunSettings, RunReport], None] | None = None) -> DistillResult:
    """Distill a tiny decoder for ``settings``' experiment and VAE (see the module's docstring).
    ``settings``: a full-VAE decode's (its output folder is where the sample's outputs go);
    ``on_decoded``: told about the sample's decode when one ran. A Ctrl-C before the training leaves
    the command as an interrupted decode does; during it, it ends the training (``result.interrupted``)."""
    if options.held_out is not None and options.held_out >= options.sample:
        raise SetupError(f"--held-out {options.held_out} leaves no step of --sample {options.sample} to train on")
    folder = distilled_dir(settings.experiment.root)
    facts = _vae_facts(settings)
    before = _distilled_before(folder, facts)
    start = _start(facts, before, options.width)
    steps = settings.experiment.discover(settings.filters)
    if len(steps) < 2:
        raise SetupError(f"{settings.experiment.latents_dir}: distill needs at least 2 stored steps (one to train on, "
                         f"one to hold out), found {len(steps)}")
    size = min(options.sample, len(steps))
    held = options.held_out if options.held_out is not None else max(1, size // HELD_OUT_SHARE)
    train_steps, held_steps = choose_sample(steps, size, min(held, size - 1), options.seed)
    result = DistillResult(folder, facts.model.source, facts.model.class_name, facts.rule.name, start)
    device = resolve_device(settings.device)
    result.device = str(device)

    pairs_dir = folder / PAIRS_DIRNAME
    made_by = {"vae": facts.identity, "dtype": settings.output.dtype}
    drop_stale_pairs(pairs_dir, made_by)
    sampled = train_steps + held_steps
    missing = [s.key for s in sampled if read_pair(pairs_dir, s.key) is None]
    if missing:
        run = replace(settings, filters=Filters(items=frozenset(missing)), force=True)
        log.info("decoding %d sampled step(s) with the full VAE into %s (%d kept from before)", len(missing),
                 settings.output_dir, len(sampled) - len(missing))
        report = run_decode(run, progress=progress, worker_cls=keeping_pairs(decoder_class("vae"), pairs_dir))
        mark_pairs(pairs_dir, made_by)
        result.decoded = report
        if on_decoded is not None:
            on_decoded(run, report)
        if report.interrupted is not None:
            result.interrupted = report.interrupted
            return result
        if report.stopped is not None:
            raise report.stopped
    stored = {s.key: read_pair(pairs_dir, s.key) for s in sampled}
    unpaired = [k for k in missing if stored[k] is None and (result.decoded is None or k not in result.decoded.records
                                                             or result.decoded.records[k].ok)]
    if unpaired:
        raise SetupError(f"{pairs_dir}: no training pair for {len(unpaired)} decoded step(s) (e.g. {unpaired[0]}): the "
                         f"workers keep them where they run; on Ray, distill needs workers that see {folder}")
    usable: dict[str, Pair] = {}
    for key, pair in stored.items():
        made = _pair(pair, facts, start.config) if pair is not None else f"{key}: its decode failed"
        if isinstance(made, str):
            result.left_out.append(key)
            log.warning("warning: left out of training: %s", made)
        else:
            usable[key] = made
    train_pairs = [usable[s.key] for s in train_steps if s.key in usable]
    held_pairs = [usable[s.key] for s in held_steps if s.key in usable]
    if not train_pairs or not held_pairs:
        raise SetupError(f"{settings.experiment.root}: after leaving out {len(result.left_out)} step(s), no step is left "
                         f"to {'train on' if not train_pairs else 'measure on'}")
    result.trained, result.held_out = [p.key for p in train_pairs], [p.key for p in held_pairs]

    model = (load_decoder(start.checkpoint.state, start.config).float() if start.checkpoint is not None
             else init_for_training(start.config, options.seed))
    trainer = Trainer(model, train_pairs, held_pairs, device, seed=options.seed)
    result.start_quality = trainer.measure()
    incumbent = _incumbent(before, start, result.start_quality, held_pairs, device)

    outcome = Outcome()
    bar = TrainingBar(options.minutes * 60, progress)
    with StopSignals() as signals:
        try:
            train(trainer, options.minutes * 60, outcome, options.until_psnr, bar)
        except KeyboardInterrupt as exc:
            result.interrupted = exc.signum if isinstance(exc, Interrupted) else signals.raised or signal.SIGINT
        finally:
            bar.close()
        result.steps, result.train_seconds, result.stopped = trainer.steps, outcome.seconds, outcome.reason
        result.quality = trainer.best
        improved = trainer.best_step > 0  # the starting weights are never saved as a new decoder
        if improved and incumbent is not None and trainer.best.psnr <= incumbent.psnr:
            result.kept = incumbent
        if improved and result.kept is None:
            with critical():
                _save(folder, trainer, result, facts, settings)
            result.saved = True
    if result.interrupted is None:
        result.tiny_seconds = _tiny_seconds(load_decoder(trainer.best_state, start.config).to(device), held_pairs,
                                            device)
        result.vae_seconds, result.vae_device = _vae_seconds(stored.values())
        result.remaining = len(plan_run(settings).todo)
    return result


def _incumbent(before: TinyCheckpoint | None, start: Start, at_start: Quality, held_out: list[Pair],
               device: Any) -> Quality | None:
    """The decoder distilled before, measured on these held-out steps: what a new one must beat."""
    if before is None:
        return None
    if start.checkpoint is before:
        return at_start
    try:
        return measure_quality(load_decoder(before.state, before.config).float(), held_out, device)
    except ValueError as exc:  # it makes other frames than the VAE (another geometry): any new one is better
        log.warning("warning: %s: %s; it will be replaced", before.path, exc)
        return None


def _tiny_seconds(model: Any, pairs: list[Pair], device: Any) -> float:
    """The tiny decoder's seconds per step on ``device``: the median over the held-out latents, warm."""
    frames_uint8(model, pairs[0].latent.to(device), pairs[0].trim, pairs[0].segment)
    times = []
    for pair in pairs:
        start = time.perf_counter()
        frames_uint8(model, pair.latent.to(device), pair.trim, pair.segment)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _vae_seconds(pairs: Any) -> tuple[float | None, str | None]:
    """The full VAE's seconds per step as the sample's decode measured them (median), and on which device."""
    measured = [p for p in pairs if p is not None and p.decode_seconds is not None]
    if not measured:
        return None, None
    devices = sorted({p.device for p in measured if p.device})
    return statistics.median(p.decode_seconds for p in measured), ", ".join(devices) or None


def _save(folder: Path, trainer: Any, result: DistillResult, facts: VaeFacts, settings: RunSettings) -> None:
    """The best weights (published key layout) and their card; the card last, naming the weights' digest."""
    path = save_checkpoint(trainer.best_state, folder / WEIGHTS_FILE,
                           metadata={"made_by": f"latent-decoder {__version__} distill"})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    q, o = result.quality, settings.output
    config = result.start.config
    write_card(folder, {
        "vae": facts.identity, "model": o.model, "vae_class": facts.model.class_name, "family": facts.rule.name,
        "dtype": o.dtype, "config": config.to_dict(), "config_text": config.describe(),
        "started_from": result.start.label, "steps_trained": result.trained, "steps_held_out": result.held_out,
        "held_out_psnr": round(q.psnr, 3), "held_out_ssim": round(q.ssim, 4),
        "held_out_psnr_per_step": {k: round(v, 3) for k, v in q.per_step.items()},
        "start_psnr": round(result.start_quality.psnr, 3), "optimizer_steps": trainer.best_step,
        "training_seconds": round(result.train_seconds, 1), "stopped": result.stopped, "device": result.device, "weights_sha256": digest,
        "made_by": f"latent-decoder {__version__}", "made_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    })
