"""The gallery: ``latents_videos/index.html`` (the run's figures, every prompt and video at a glance)
and one page per video (``<prompt>/<video>/index.html``: its progression, statistics and every step).

Static pages that open from disk: inline CSS, JS and SVG, relative links, no network. Heavy media
waits until needed (``loading="lazy"`` images, ``preload="none"`` videos), and the index holds one
small card per video, so it stays usable at hundreds of videos.

The pages are Jinja2 templates (``templates/``, autoescaped: prompt texts, folder names and error
reasons are the user's); this module prepares what they show as plain values.
"""
from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .collect import StepView, VideoView
from .progression_video import PROGRESSION_NAME
from .sheet import SHEET_NAME, SHEET_THUMB_NAME
from .stats import STATS_NAME, Sparkline, sparkline, stats_charts

PAGE_NAME = "index.html"
OPEN_PROMPTS_UP_TO = 48  # videos; more than this and prompt sections start collapsed
FAILURES_SHOWN = 100


@dataclass
class VideoEntry:
    """What the index needs of one video; kept in the views state file so that an index rebuild reads
    no per-video file."""

    prompt: str
    video: str
    signature: str
    prompt_text: str | None = None
    steps: int = 0
    done: int = 0
    failed: int = 0
    decode_seconds: float = 0.0
    rows: int = 0
    built: bool = False  # its views were drawn (an older version's state may say False: they are drawn again)
    page: bool = False  # its own index.html (not for a video with nothing attempted yet)
    problem: str | None = None  # why its views could not be drawn (retried by the next run)
    sheet: bool = False
    progression: bool = False
    stats: bool = False
    spark: list[float] = field(default_factory=list)
    poster: str | None = None  # a thumbnail, relative to the output folder

    @property
    def key(self) -> str:
        return f"{self.prompt}/{self.video}"

    @property
    def pending(self) -> int:
        return max(0, self.steps - self.done - self.failed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VideoEntry":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


_PAGES = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True,
                     undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
# The file names the pages link to, as the templates know them.
_FILES = {"page": PAGE_NAME, "sheet": SHEET_NAME, "progression": PROGRESSION_NAME, "stats": STATS_NAME}


def _render(template: str, **context: Any) -> str:
    return _PAGES.get_template(template).render(files=_FILES, **context) + "\n"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# ------------------------------------------------------------------------------- what the pages show

@dataclass(frozen=True)
class Figure:
    """One of the big numbers at the top of a page; ``kind`` colours it (ok, bad, warn)."""

    value: str
    label: str
    kind: str = ""


@dataclass(frozen=True)
class Counts:
    """The badges of a prompt or a video."""

    done: int
    failed: int
    pending: int


@dataclass(frozen=True)
class RunMeta:
    """The index's line about the last run, the model and the settings; ``parts`` lists those present."""

    parts: list[str]
    finished_at: str = ""
    wall: str | None = None
    interrupted: bool = False
    stopped: str | None = None
    model: str = ""
    family: str | None = None
    vae_class: str = ""
    decoder: str = ""  # which decoder made the tree (``decoder_label``)
    settings: str = ""


@dataclass(frozen=True)
class FailureRow:
    item: str
    reason: str
    page: str | None  # its video's page (None: the video has none), whose ``anchor`` is the step
    anchor: str


@dataclass(frozen=True)
class Failures:
    total: int
    rows: list[FailureRow]

    @property
    def more(self) -> int:
        return self.total - len(self.rows)


@dataclass(frozen=True)
class Card:
    """A video on the index: its sheet (or why there is none), badges and sparkline."""

    key: str  # prompt/video, what the filter matches
    video: str
    page: str  # relative to the index
    linked: bool  # the page exists
    counts: Counts
    steps: int
    decode: str
    sheet: str | None  # the sheet's thumbnail
    empty: str  # what shows when there is no sheet
    spark: Sparkline | None


@dataclass(frozen=True)
class PromptSection:
    prompt: str
    text: str | None
    counts: Counts
    cards: list[Card]
    opened: bool

    @property
    def wide(self) -> bool:
        return len(self.cards) > 1  # a prompt of one video shares its row with others

    @property
    def search_text(self) -> str:
        return f"{self.prompt} {self.text or ''}"


@dataclass(frozen=True)
class StepCard:
    """A step on a video's page; paths are relative to the page."""

    step: str
    detail: list[str]  # timestep, sigma
    failed: bool
    reason: str | None = None
    video: str | None = None  # an .mp4, or a folder of PNG frames
    thumb: str | None = None
    frames: bool = False
    timing: str | None = None

    @property
    def video_name(self) -> str:
        return posixpath.basename(self.video or "")


@dataclass(frozen=True)
class SheetFigure:
    """One side of the x_t / x0 comparison: a sheet, linked to its page when it is the other view's."""

    sheet: str
    page: str | None
    alt: str
    caption: str


# ---------------------------------------------------------------------------------------- the index

def _run_figures(entries: list[VideoEntry]) -> list[Figure]:
    total = sum(e.steps for e in entries)
    ok = sum(e.done for e in entries)
    failed = sum(e.failed for e in entries)
    pending = total - ok - failed
    decode = sum(e.decode_seconds for e in entries)
    return [Figure(str(len(entries)), "videos"), Figure(str(total), "steps"),
            Figure(str(ok), "decoded", "ok"), Figure(str(failed), "failed", "bad" if failed else ""),
            Figure(str(pending), "pending", "warn" if pending else ""),
            Figure(f"{100 * ok / total:.0f}%" if total else "-", "success rate"),
            Figure(_duration(decode), "decode time"),
            Figure(_duration(decode / ok) if ok else "-", "per step")]


def decoder_label(model: dict[str, Any]) -> str:
    """Which decoder made a tree, from the run's model description: the full VAE, a tiny decoder (its
    file and where it came from) or the preview map."""
    kind = model.get("decoder")
    if kind == "tiny":
        return f"tiny decoder {model.get('tiny_name') or '?'} ({model.get('tiny_from') or '?'}){_measured(model)}"
    if kind == "preview":
        return f"preview map ({model.get('factors') or '?'} factors, no VAE)"
    return "full VAE"


def _measured(model: dict[str, Any]) -> str:
    """A distilled decoder's measured quality, from its card: held-out PSNR and SSIM against the full VAE."""
    card = model.get("tiny_card") or {}
    psnr, ssim = card.get("held_out_psnr"), card.get("held_out_ssim")
    if not isinstance(psnr, (int, float)):
        return ""
    held = card.get("steps_held_out")
    steps = f" on {len(held)} held-out step{'s' if len(held) != 1 else ''}" if isinstance(held, list) else " held out"
    similar = f", SSIM {ssim:.3f}" if isinstance(ssim, (int, float)) else ""
    return f": PSNR {psnr:.1f} dB{similar} against the full VAE{steps}"


def _run_meta(summary: dict[str, Any], model: dict[str, Any] | None) -> RunMeta:
    parts: list[str] = []
    fields: dict[str, Any] = {}
    last = summary.get("last_run") or {}
    if last.get("finished_at"):
        parts.append("run")
        wall = last.get("wall_seconds")
        fields.update(finished_at=str(last["finished_at"]), wall=_duration(float(wall)) if wall is not None else None,
                      interrupted=bool(last.get("interrupted")),
                      stopped=str(last["stopped"]) if last.get("stopped") else None)
    if model:
        parts.append("model")
        fields.update(model=str(model.get("model") or "?"),
                      family=str(model["family"]) if model.get("family") else None,
                      vae_class=str(model.get("vae_class") or ""), decoder=decoder_label(model))
    settings = summary.get("settings") or {}
    if settings:
        parts.append("settings")
        keys = [("format", "", ""), ("fps", "", " fps"), ("dtype", "", ""), ("crf", "crf ", "")]
        fields["settings"] = ", ".join(f"{prefix}{settings[k]}{suffix}" for k, prefix, suffix in keys
                                       if settings.get(k) is not None)
    return RunMeta(parts, **fields)


def _card(entry: VideoEntry) -> Card:
    base = entry.key
    if entry.problem:
        empty = f"its views could not be drawn: {entry.problem}"
    else:
        empty = "no decoded step to show" if entry.page else "nothing decoded yet"
    return Card(base, entry.video, f"{base}/{PAGE_NAME}", entry.page, Counts(entry.done, entry.failed, entry.pending),
                entry.steps, _duration(entry.decode_seconds), f"{base}/{SHEET_THUMB_NAME}" if entry.sheet else None,
                empty, sparkline(entry.spark))


def _failures(failures: list[tuple[str, str, str, str | None]], total: int, pages: set[str]) -> Failures | None:
    if not total:
        return None
    rows = [FailureRow(item, error or "failed",
                       f"{prompt}/{video}/{PAGE_NAME}" if f"{prompt}/{video}" in pages else None,
                       item.rpartition("/")[2])
            for item, prompt, video, error in failures[:FAILURES_SHOWN]]
    return Failures(total, rows)


def render_index(summary: dict[str, Any], entries: list[VideoEntry], failures: list[tuple[str, str, str, str | None]],
                 failed_total: int, model: dict[str, Any] | None) -> str:
    """The gallery's front page."""
    experiment = summary.get("experiment") or ""
    by_prompt: dict[str, list[VideoEntry]] = {}
    for entry in entries:
        by_prompt.setdefault(entry.prompt, []).append(entry)
    open_all = len(entries) <= OPEN_PROMPTS_UP_TO
    sections = [PromptSection(prompt, next((v.prompt_text for v in videos if v.prompt_text), None),
                              Counts(sum(v.done for v in videos), sum(v.failed for v in videos),
                                     sum(v.pending for v in videos)),
                              [_card(v) for v in videos], open_all or n == 0)
                for n, (prompt, videos) in enumerate(by_prompt.items())]
    return _render("index.html", name=posixpath.basename(str(experiment).rstrip("/")) or "experiment",
                   experiment=str(experiment), note=view_note(summary), run_figures=_run_figures(entries),
                   meta=_run_meta(summary, model),
                   failures=_failures(failures, failed_total, {e.key for e in entries if e.page}), sections=sections)


# ----------------------------------------------------------------------------------- a video's page

def _rel(path: str, base: str) -> str:
    return posixpath.relpath(path, base)


def _step_card(step: StepView, base: str) -> StepCard:
    detail = step.label()[1:]
    if step.status == "failed":
        return StepCard(step.step, detail, True, reason=step.error or "failed")
    return StepCard(step.step, detail, False, video=_rel(step.video, base),
                    thumb=_rel(step.thumbnail, base) if step.thumbnail else None, frames=step.frames_dir,
                    timing=f"decode {step.decode_seconds:.2f} s" if step.decode_seconds else None)


XT_LABEL, X0_LABEL = "x_t (the stored latents)", "x0 (the model's prediction)"
FULL_LABEL, TINY_LABEL = "full VAE", "tiny decoder"


@dataclass(frozen=True)
class Sibling:
    """A tree beside this one whose sheet of the same video a page shows next to its own."""

    tree: str  # its folder's name, beside this tree's
    title: str  # what the pair shows, e.g. "x_t and x0"
    mine: str  # the caption of this tree's sheet
    theirs: str  # the caption of its sheet
    mine_first: bool


@dataclass(frozen=True)
class SheetPair:
    title: str
    figures: list[SheetFigure]


def _side_by_side(base: str, siblings: list[Sibling]) -> list[SheetPair]:
    """This video's progression sheet next to the sheet of each sibling tree that has it."""
    pairs = []
    for s in siblings:
        other = f"../../../{s.tree}/{base}"
        mine = SheetFigure(SHEET_NAME, None, "this tree", s.mine)
        theirs = SheetFigure(f"{other}/{SHEET_NAME}", f"{other}/{PAGE_NAME}", "the other tree", s.theirs)
        pairs.append(SheetPair(s.title, [mine, theirs] if s.mine_first else [theirs, mine]))
    return pairs


def view_note(summary: dict[str, Any]) -> str | None:
    """What a page of the x0 view says it shows (the summary's ``view`` and ``x0`` label: exact, or
    approximate for multistep solvers, and where sigma came from); None for the stored x_t."""
    if summary.get("view") != "x0":
        return None
    label = summary.get("x0") or "exact for Euler flow-matching steps, the step's effective x0 otherwise"
    return ("x0 view: each step shows the model's prediction of the clean video at that step, recovered from "
            f"two consecutive stored steps (no model call); {label}")


def render_video_page(view: VideoView, entry: VideoEntry, siblings: list[Sibling] | None = None,
                      note: str | None = None) -> str:
    """One video: its progression (video, sheet, statistics) and every step; its sheet beside those of
    the ``siblings`` (trees that have this video: the other view, x_t or x0; the full VAE's or the tiny
    decoder's tree). ``note``: what the view shows, when it is not the stored latents (``view_note``)."""
    d = view.digest
    base = d.key
    hidden = [s.step for s in view.steps if not s.shown]
    figures = [Figure(str(d.items), "steps"), Figure(str(d.done), "decoded", "ok"),
               Figure(str(d.failed), "failed", "bad" if d.failed else ""),
               Figure(str(d.pending), "pending", "warn" if d.pending else ""),
               Figure(_duration(d.decode_seconds), "decode time")]
    return _render("video.html", key=base, prompt=d.prompt, prompt_text=view.prompt_text, note=note,
                   video_figures=figures, progression=entry.progression,
                   poster=_rel(entry.poster, base) if entry.poster else None, charts=stats_charts(view),
                   stats=entry.stats, sheet=entry.sheet,
                   side_by_side=_side_by_side(base, siblings or []) if entry.sheet else [],
                   steps=[_step_card(s, base) for s in view.steps if s.shown],
                   waiting=hidden[:50], waiting_more=len(hidden) > 50)


def entries_in_order(entries: Iterable[VideoEntry]) -> list[VideoEntry]:
    return sorted(entries, key=lambda e: (e.prompt, e.video))
