"""``latent-decoder inspect``: what a decode of an experiment would use and produce, without decoding.

The VAE is built from its config on torch's meta device (no weights read), and latent shapes
come from the ``.npy`` headers only, so inspecting a large experiment takes seconds.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ItemError, LatentDecoderError, SetupError
from .experiment import Experiment
from .latents import read_latent_header
from .families import DecodeContext, Detection, Family, detect, find_condition
from .models import ResolvedModel, resolve_model, vae_skeleton
from .layout import OutputLayout
from .plan import plan_run
from .settings import OutputSettings, RunSettings
from .states import ItemState

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Peak decode memory beyond the weights, in bytes per output video value (frames x H x W x 3) per
# byte of dtype: the Wan2.1 VAE measured 9.6 GiB (fp32) / 4.8 GiB (bf16) for 61 frames at 848x480
# on an H200, i.e. about 35x the decoded video. Other families are not measured: a rough guide only.
ACTIVATION_FACTOR = 35
MAX_UNREADABLE_SHOWN = 5  # unusable files listed one per line; the rest are counted on one more line


@dataclass(frozen=True)
class ShapeSummary:
    """One distinct stored latent shape and what decoding it gives."""

    shape: tuple[int, ...]
    dtypes: tuple[str, ...]
    count: int
    example: Path
    output: tuple[int, int, int] | None = None  # frames, height, width
    memory_bytes: int | None = None
    problem: str | None = None  # why it does not fit the VAE, or why the file cannot be used
    unreadable: bool = False  # a file whose header cannot be read or is refused (``shape`` is then empty)


@dataclass
class Inspection:
    experiment: Experiment
    output: OutputSettings
    model: ResolvedModel | None = None
    rule: Family | None = None
    detection: Detection | None = None
    conditions: tuple[int, int] | None = None  # a rule with a condition file: videos that store it, videos
    vae_class: str | None = None
    expected_layout: str | None = None
    parameters: int | None = None
    problem: str | None = None  # why the model cannot be used
    cost: str | None = None  # the rule's word on what a decode costs, where it is not one VAE pass
    files: int = 0
    files_read: int = 0
    shapes: list[ShapeSummary] = field(default_factory=list)


def inspect_experiment(experiment: Experiment, output: OutputSettings, max_files: int = 1000) -> Inspection:
    """Resolve the model and survey the stored latents' shapes (headers of up to ``max_files`` files,
    spread evenly over the experiment)."""
    info = Inspection(experiment, output)
    ctx: DecodeContext | None = None
    try:
        info.model = resolve_model(output.model, output.vae_subfolder, output.vae_config)
        info.vae_class = info.model.class_name
        override = output.family if output.decoder == "vae" else None
        info.detection = detect(info.model.class_name, info.model.pipeline, override)
        info.rule = info.detection.family
        ctx = DecodeContext(vae_skeleton(info.model), output.video, info.model.pipeline, output.decode_options)
        info.expected_layout = info.rule.expected_layout(ctx.vae)
        info.parameters = sum(p.numel() for p in ctx.vae.parameters())
        info.cost = info.rule.cost(ctx.vae) if info.rule.cost else None
    except LatentDecoderError as exc:
        info.problem = str(exc)
    steps = experiment.discover()
    info.files = len(steps)
    if info.rule is not None and info.rule.condition_file is not None:
        folders = {os.path.dirname(step.file) for step in steps}
        stored = [find_condition(folder) for folder in folders]
        info.conditions = (sum(1 for found in stored if found and info.rule.reads_condition(found[0])), len(folders))
    stride = max(1, -(-len(steps) // max(1, max_files)))
    counts: Counter[tuple[int, ...]] = Counter()
    dtypes: dict[tuple[int, ...], set[str]] = {}
    examples: dict[tuple[int, ...], Path] = {}
    unreadable: list[tuple[Path, str]] = []
    for step in steps[::stride]:
        info.files_read += 1
        try:
            shape, dtype = read_latent_header(step.path)
        except ItemError as exc:
            unreadable.append((step.path, str(exc)))
            continue
        counts[shape] += 1
        dtypes.setdefault(shape, set()).add(str(dtype))
        examples.setdefault(shape, step.path)
    for shape, count in counts.most_common():
        info.shapes.append(_summarize(shape, tuple(sorted(dtypes[shape])), count, examples[shape], info, ctx))
    # One entry per unusable file (the message names it), a few at most; a header that declares more
    # than a latent can be lands here too, so no memory is ever estimated from it.
    for path, message in unreadable[:MAX_UNREADABLE_SHOWN]:
        info.shapes.append(ShapeSummary((), (), 1, path, problem=message, unreadable=True))
    if len(unreadable) > MAX_UNREADABLE_SHOWN:
        rest = len(unreadable) - MAX_UNREADABLE_SHOWN
        path, message = unreadable[MAX_UNREADABLE_SHOWN]
        info.shapes.append(ShapeSummary((), (), rest, path, unreadable=True,
                                        problem=f"{rest} more unusable file(s), e.g. {message}"))
    return info


def _summarize(shape: tuple[int, ...], dtypes: tuple[str, ...], count: int, example: Path, info: Inspection,
               ctx: DecodeContext | None) -> ShapeSummary:
    summary = ShapeSummary(shape, dtypes, count, example)
    rule = info.rule
    if rule is None or ctx is None:
        return summary
    batched = rule.layout.batched(shape)
    try:
        if batched is None:
            raise ItemError(f"{len(shape)} dims, expected {rule.layout.describe_all()}")
        rule.check_shape(batched, ctx, str(example))
    except ItemError as exc:
        return ShapeSummary(shape, dtypes, count, example, problem=str(exc))
    frames, height, width = rule.output_frames(batched, ctx)
    scale = info.output.scale
    out_h, out_w = (int(height * scale), int(width * scale)) if scale != 1 else (height, width)
    dtype_bytes = DTYPE_BYTES[info.output.dtype]
    memory = (info.parameters or 0) * dtype_bytes + ACTIVATION_FACTOR * frames * height * width * 3 * dtype_bytes
    return ShapeSummary(shape, dtypes, count, example, (frames, out_h, out_w), memory)


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def render(info: Inspection) -> list[str]:
    """The report ``inspect`` prints, one line each."""
    o = info.output
    lines = [f"experiment  {info.experiment.root}"]
    source = o.model + (f" (subfolder {o.vae_subfolder})" if o.vae_subfolder else "")
    if info.model is not None and info.model.weights_file is not None:
        lines.append(f"model       {source}: weights {info.model.weights_file}, config {info.model.folder} "
                     f"({info.model.origin})")
    elif info.model is not None:
        lines.append(f"model       {source}: {info.model.folder} ({info.model.origin})")
        lines.append(f"vae class   {info.vae_class}")
    if info.rule is not None:
        lines.append(f"family      {info.rule.name} ({info.rule.label}), mirrors {info.rule.mirrors}")
        lines.append(f"rule        {info.detection.reason}")
        if info.rule.note:
            lines.append(f"            note: {info.rule.note}")
        if info.cost:
            lines.append(f"cost        {info.cost}")
        if info.conditions is not None:
            found, videos = info.conditions
            name = info.rule.condition_file
            lines.append(f"condition   {found} of {videos} video(s) store {name}.npy[.gz]/.pt[.gz]"
                         + ("" if found == videos else "; the others decode without it"))
        if info.rule.reads:
            given = {name: getattr(o, name) for name in info.rule.reads}
            lines.append("decode args " + ", ".join(f"{k} {'pipeline default' if v is None else v}"
                                                    for k, v in given.items()))
        lines.append(f"layout      {info.expected_layout} stored latents ({info.parameters:,} VAE parameters)")
    if info.problem is not None:
        lines.append(f"model       {info.problem}")
    v = o.video
    lines.append(f"video       config: {v.frames or '?'} frames, {v.width or '?'}x{v.height or '?'}, "
                 f"{o.fps:g} fps; decode as {o.dtype}")
    lines.append(f"latents     {info.files} file(s); headers read: {info.files_read}")
    for s in info.shapes:
        if s.unreadable:
            lines.append(f"  unreadable: {s.problem}")
            continue
        head = f"  {list(s.shape)} {'/'.join(s.dtypes)} x{s.count}"
        if s.problem is not None:
            lines.append(f"{head}: does not fit: {s.problem}")
        elif s.output is not None:
            f, h, w = s.output
            lines.append(f"{head} -> {f} frames {w}x{h}, decode memory ~{format_bytes(s.memory_bytes or 0)} "
                         f"(rough estimate, {o.dtype})")
        else:
            lines.append(head)
    return lines


def tiny_lines(settings: RunSettings, flag: str | Path | None = None) -> list[str]:
    """``inspect``'s line on the tiny decoder: which file ``--decoder tiny`` would use, where it was
    found and what it is, or why there is none."""
    from .tiny.setup import resolve_tiny

    o = settings.output
    try:
        setup = resolve_tiny(settings.experiment.root, o.model, o.vae_subfolder, o.vae_config, o.family, flag)
    except LatentDecoderError as err:
        return [f"tiny        not available: {err}"]
    lines = [f"tiny        {setup.checkpoint.describe()}", f"            from {setup.how}: {setup.checkpoint.path}"]
    if setup.card and setup.card.get("held_out_psnr") is not None:
        lines.append(f"            distilled: held-out PSNR {setup.card['held_out_psnr']:.1f} dB against the full VAE")
    return lines


def x0_lines(settings: RunSettings) -> list[str]:
    """``inspect``'s lines on the x0 view: for how many steps it is available, and what it shows."""
    from .x0 import attach_x0, model_scheduler

    o = settings.output
    steps = settings.experiment.discover()
    scheduler = model_scheduler(o.model, o.vae_subfolder, o.vae_config)
    try:
        x0 = attach_x0(steps, scheduler)
    except SetupError as err:  # the model's scheduler rules x0 out: a fact to show, not a failed inspect
        return [f"x0 view     not available: {err}"]
    lines = [f"x0 view     available for {len(x0.steps)} of {len(steps)} steps; {x0.sigma_text}; {scheduler.label()}"]
    reasons = Counter(x0.unavailable.values())
    return lines + [f"  {n} without x0: {why}" for why, n in reasons.items()]


def output_lines(settings: RunSettings) -> list[str]:
    """``inspect``'s view of the output folder: the plan a decode with these settings would make."""
    out = settings.output_dir
    layout = OutputLayout(out)
    if not layout.journal_path.is_file() and not layout.legacy_records_dir.is_dir():
        return [f"output      {out}: nothing decoded yet"]
    plan = plan_run(settings)
    counts = ", ".join(f"{plan.count(st)} {st.words}" for st in ItemState if plan.count(st))
    lines = [f"output      {out}: {counts}"]
    for state in (ItemState.CHANGED, ItemState.FAILED):
        keys = [k for k, st in plan.states.items() if st is state]
        lines += [f"  {state.words}: {k}" for k in keys[:5]]
        if len(keys) > 5:
            lines.append(f"  ... and {len(keys) - 5} more")
    return lines
