"""The gallery: ``latents_videos/index.html`` (the run's figures, every prompt and video at a glance)
and one page per video (``<prompt>/<video>/index.html``: its progression, statistics and every step).

Static pages that open from disk: inline CSS, JS and SVG, relative links, no network. Heavy media
waits until needed (``loading="lazy"`` images, ``preload="none"`` videos), and the index holds one
small card per video, so it stays usable at hundreds of videos.
"""
from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, field
from html import escape
from typing import Any, Iterable
from urllib.parse import quote

from .collect import StepView, VideoView
from .progression_video import PROGRESSION_NAME
from .sheet import SHEET_NAME, SHEET_THUMB_NAME
from .stats import STATS_NAME, sparkline, stats_charts

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


def url(path: str) -> str:
    """A relative path as an attribute value (percent-encoded, escaped)."""
    return escape(quote(path), quote=True)


CSS = """
:root{--bg:#111318;--panel:#1a1d24;--panel2:#222631;--text:#e8eaf0;--muted:#9aa1b2;--line:#2e3340;
--ok:#4cc38a;--bad:#ff6b6b;--warn:#f0b849;--accent:#5ea0ff}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header.top{padding:18px 28px 10px;border-bottom:1px solid var(--line);background:var(--panel)}
header.top h1{margin:0 0 2px;font-size:20px;font-weight:650}
.sub{color:var(--muted);font-size:13px;overflow-wrap:anywhere}
.view-note{margin:8px 0 0;padding:6px 10px;border-left:3px solid var(--warn);background:rgba(240,184,73,.08);
font-size:13px}
main{padding:18px 28px 40px;max-width:1600px}
.figures{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0 6px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}.pair img{width:100%}.pair figure{margin:0}
.fig{background:var(--panel2);border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:108px}
.fig b{display:block;font-size:19px;font-weight:650}.fig span{color:var(--muted);font-size:12px}
.fig.ok b{color:var(--ok)}.fig.bad b{color:var(--bad)}.fig.warn b{color:var(--warn)}
.meta{color:var(--muted);font-size:12.5px;margin:6px 0 0}.meta code{color:var(--text)}
h2{font-size:16px;margin:26px 0 10px}
.prompts{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr));gap:14px;margin-top:14px;
align-items:start}
details.prompt{background:var(--panel);border:1px solid var(--line);border-radius:10px;padding:0;min-width:0}
details.prompt.wide{grid-column:1/-1}
details.prompt>summary{cursor:pointer;padding:11px 16px 9px;font-weight:600;list-style-position:inside}
details.prompt>summary .text{display:block;font-weight:400;color:var(--muted);margin:2px 0 0 18px}
details.prompt>summary .counts{float:right;font-weight:400;color:var(--muted);font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:14px;padding:4px 16px 16px}
.card{background:var(--panel2);border:1px solid var(--line);border-radius:9px;overflow:hidden;display:flex;
flex-direction:column}
.card header{display:flex;justify-content:space-between;align-items:center;padding:8px 12px;gap:8px}
.card header a{font-weight:600}
.sheet-box{display:block;max-height:300px;overflow:auto;background:#16181d;border-top:1px solid var(--line);
border-bottom:1px solid var(--line)}
.sheet-box img{display:block;width:100%;height:auto}
.card footer{display:flex;justify-content:space-between;align-items:center;padding:6px 12px;color:var(--muted);
font-size:12px;gap:8px}
.empty{padding:26px 12px;color:var(--muted);text-align:center}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;margin-left:4px;
background:#2b303c;color:var(--muted);white-space:nowrap}
.badge.ok{background:rgba(76,195,138,.15);color:var(--ok)}.badge.bad{background:rgba(255,107,107,.16);color:var(--bad)}
.badge.warn{background:rgba(240,184,73,.15);color:var(--warn)}
.tools{display:flex;gap:14px;align-items:center;margin:18px 0 4px;flex-wrap:wrap}
.tools input[type=search]{background:var(--panel2);border:1px solid var(--line);color:var(--text);border-radius:7px;
padding:7px 10px;min-width:280px}
.tools label{color:var(--muted)}
.failures{background:rgba(255,107,107,.06);border:1px solid rgba(255,107,107,.35);border-radius:10px;
padding:6px 16px 10px;margin:16px 0 4px}
.failures summary{cursor:pointer;font-weight:600;color:var(--bad);padding:6px 0}
.failures li{margin:4px 0}.reason{color:#ffc9c9;overflow-wrap:anywhere}
.layout{display:grid;grid-template-columns:minmax(300px,1fr) minmax(300px,1fr);gap:18px;align-items:start}
@media (max-width:900px){.layout{grid-template-columns:1fr}}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:10px;padding:12px}
.panel video{width:100%;border-radius:6px;background:#000}
.chart{width:100%;height:auto;display:block;margin:4px 0 10px}
.chart .plot{fill:#16181d;stroke:var(--line)}.chart .grid{stroke:#2a2f3a;stroke-width:1}
.chart .tick{fill:var(--muted);font-size:11px}.chart .chart-title{fill:var(--text);font-size:13px;font-weight:600}
.sheet-full{overflow:auto;max-height:80vh}.sheet-full img{display:block;max-width:100%;height:auto}
.steps{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:12px}
.step{background:var(--panel2);border:1px solid var(--line);border-radius:8px;overflow:hidden}
.step h3{font-size:13px;margin:0;padding:7px 10px;display:flex;justify-content:space-between;gap:6px}
.step h3 span{color:var(--muted);font-weight:400}
.step video,.step img{display:block;width:100%;height:auto;background:#000}
.step .foot{padding:5px 10px;color:var(--muted);font-size:12px}
.step.failed{background:#2a2b2f;border-color:#5c5f66}
.step.failed .why{padding:14px 10px;color:#ffc9c9;overflow-wrap:anywhere}
.step.failed .why b{color:var(--bad);display:block;margin-bottom:4px}
blockquote{margin:8px 0 0;padding:6px 12px;border-left:3px solid var(--accent);color:var(--text);
background:var(--panel2);border-radius:0 6px 6px 0}
nav.crumbs{font-size:13px;margin-bottom:6px}
.hidden{display:none!important}
footer.page{color:var(--muted);font-size:12px;padding:0 28px 24px}
"""

FILTER_JS = """
(function(){
  var box=document.getElementById('filter'),bad=document.getElementById('only-failed');
  if(!box)return;
  function apply(){
    var q=box.value.trim().toLowerCase(),only=bad.checked;
    document.querySelectorAll('details.prompt').forEach(function(sec){
      var shown=0,text=(sec.getAttribute('data-text')||'').toLowerCase();
      sec.querySelectorAll('.card').forEach(function(card){
        var hit=(!q||text.indexOf(q)>=0||card.getAttribute('data-key').toLowerCase().indexOf(q)>=0)&&
                (!only||card.getAttribute('data-failed')==='1');
        card.classList.toggle('hidden',!hit);if(hit)shown++;
      });
      sec.classList.toggle('hidden',shown===0);
      if((q||only)&&shown)sec.open=true;
    });
  }
  box.addEventListener('input',apply);bad.addEventListener('change',apply);
})();
"""


def _page(title: str, body: str, script: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n{body}\n"
            + (f"<script>{script}</script>" if script else "") + "</body></html>\n")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _badges(done: int, failed: int, pending: int) -> str:
    out = f'<span class="badge ok">{done} ok</span>'
    if failed:
        out += f'<span class="badge bad">{failed} failed</span>'
    if pending:
        out += f'<span class="badge warn">{pending} pending</span>'
    return out


def _figure(value: str, label: str, kind: str = "") -> str:
    return f'<div class="fig {kind}"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _figures(summary: dict[str, Any], entries: list[VideoEntry]) -> str:
    total = sum(e.steps for e in entries)
    ok = sum(e.done for e in entries)
    failed = sum(e.failed for e in entries)
    pending = total - ok - failed
    decode = sum(e.decode_seconds for e in entries)
    figures = [_figure(str(len(entries)), "videos"), _figure(str(total), "steps"),
               _figure(str(ok), "decoded", "ok"), _figure(str(failed), "failed", "bad" if failed else ""),
               _figure(str(pending), "pending", "warn" if pending else ""),
               _figure(f"{100 * ok / total:.0f}%" if total else "-", "success rate"),
               _figure(_duration(decode), "decode time"),
               _figure(_duration(decode / ok) if ok else "-", "per step")]
    return '<div class="figures">' + "".join(figures) + "</div>"


def _run_meta(summary: dict[str, Any], model: dict[str, Any] | None) -> str:
    bits = []
    last = summary.get("last_run") or {}
    if last.get("finished_at"):
        run = f"last run <code>{escape(str(last['finished_at']))}</code>"
        if last.get("wall_seconds") is not None:
            run += f" in {escape(_duration(float(last['wall_seconds'])))}"
        if last.get("interrupted"):
            run += " (interrupted)"
        if last.get("stopped"):
            run += f" (stopped: {escape(str(last['stopped']))})"
        bits.append(run)
    if model:
        what = model.get("model") or "?"
        family = f" ({escape(str(model['family']))}, {escape(str(model.get('vae_class') or ''))})" \
            if model.get("family") else ""
        bits.append(f"model <code>{escape(str(what))}</code>{family}")
    settings = summary.get("settings") or {}
    if settings:
        keys = [("format", "", ""), ("fps", "", " fps"), ("dtype", "", ""), ("crf", "crf ", "")]
        shown = [f"{prefix}{settings[k]}{suffix}" for k, prefix, suffix in keys if settings.get(k) is not None]
        bits.append("settings <code>" + escape(", ".join(str(s) for s in shown)) + "</code>")
    return '<p class="meta">' + " &middot; ".join(bits) + "</p>" if bits else ""


def _card(entry: VideoEntry) -> str:
    base = f"{entry.prompt}/{entry.video}"
    page = f"{base}/{PAGE_NAME}"
    if entry.sheet:
        thumb = url(f"{base}/{SHEET_THUMB_NAME}")
        media = (f'<a class="sheet-box" href="{url(page)}"><img loading="lazy" src="{thumb}" '
                 f'alt="progression of {escape(base)}"></a>')
    elif entry.problem:
        media = f'<div class="empty">its views could not be drawn: {escape(entry.problem)}</div>'
    elif entry.page:
        media = '<div class="empty">no decoded step to show</div>'
    else:
        media = '<div class="empty">nothing decoded yet</div>'
    spark = sparkline(entry.spark)
    title = f'<a href="{url(page)}">{escape(entry.video)}</a>' if entry.page else f"<b>{escape(entry.video)}</b>"
    return (f'<article class="card" data-key="{escape(base)}" data-failed="{1 if entry.failed else 0}">'
            f'<header>{title}'
            f'<span>{_badges(entry.done, entry.failed, entry.pending)}</span></header>{media}'
            f'<footer><span>{entry.steps} steps &middot; {escape(_duration(entry.decode_seconds))} decode</span>'
            f'{spark}</footer></article>')


def _failures(failures: list[tuple[str, str, str, str | None]], total: int, pages: set[str]) -> str:
    if not total:
        return ""
    items = []
    for item, prompt, video, error in failures[:FAILURES_SHOWN]:
        page = f"{prompt}/{video}/{PAGE_NAME}"
        name = (f'<a href="{url(page)}#{url(item.rpartition("/")[2])}">{escape(item)}</a>'
                if f"{prompt}/{video}" in pages else escape(item))
        items.append(f'<li>{name}: <span class="reason">{escape(error or "failed")}</span></li>')
    more = total - len(items)
    tail = f"<li>... and {more} more (<code>latent-decoder status EXP --failed</code>)</li>" if more > 0 else ""
    return (f'<details class="failures" open><summary>{total} failed step{"s" if total != 1 else ""}</summary>'
            f'<ul>{"".join(items)}{tail}</ul></details>')


def render_index(summary: dict[str, Any], entries: list[VideoEntry], failures: list[tuple[str, str, str, str | None]],
                 failed_total: int, model: dict[str, Any] | None) -> str:
    """The gallery's front page."""
    experiment = summary.get("experiment") or ""
    name = posixpath.basename(str(experiment).rstrip("/")) or "experiment"
    by_prompt: dict[str, list[VideoEntry]] = {}
    for entry in entries:
        by_prompt.setdefault(entry.prompt, []).append(entry)
    open_all = len(entries) <= OPEN_PROMPTS_UP_TO
    sections = []
    for n, (prompt, videos) in enumerate(by_prompt.items()):
        text = next((v.prompt_text for v in videos if v.prompt_text), None)
        done, failed = sum(v.done for v in videos), sum(v.failed for v in videos)
        pending = sum(v.pending for v in videos)
        quoted = f'<span class="text">&ldquo;{escape(text)}&rdquo;</span>' if text else ""
        opened = " open" if open_all or n == 0 else ""
        plural = "s" if len(videos) != 1 else ""
        wide = " wide" if len(videos) > 1 else ""  # a prompt of one video shares its row with others
        sections.append(
            f'<details class="prompt{wide}"{opened} data-text="{escape(prompt + " " + (text or ""))}">'
            f'<summary>{escape(prompt)}<span class="counts">{len(videos)} video{plural}'
            f'{_badges(done, failed, pending)}</span>{quoted}</summary>'
            f'<div class="cards">{"".join(_card(v) for v in videos)}</div></details>')
    note = view_note(summary)
    body = (f'<header class="top"><h1>Denoising gallery: {escape(name)}{" (x0 view)" if note else ""}</h1>'
            f'<div class="sub">{escape(str(experiment))}</div>{_note(note)}</header><main>'
            f'{_figures(summary, entries)}{_run_meta(summary, model)}'
            f'{_failures(failures, failed_total, {e.key for e in entries if e.page})}'
            '<div class="tools"><input type="search" id="filter" placeholder="filter by prompt or video" '
            'aria-label="filter videos"><label><input type="checkbox" id="only-failed"> only videos with failed steps'
            '</label></div>'
            + (f'<div class="prompts">{"".join(sections)}</div>' if sections else
               '<p class="empty">nothing in the journal yet</p>')
            + '</main><footer class="page">made by latent-decoder &middot; <a href="decode_summary.json">'
              'decode_summary.json</a> &middot; rebuilt after every run, or with <code>latent-decoder gallery EXP'
              '</code></footer>')
    return _page(f"{name}: denoising gallery", body, FILTER_JS)


def _rel(path: str, base: str) -> str:
    return posixpath.relpath(path, base)


def _step_card(step: StepView, base: str) -> str:
    label = escape(step.step)
    detail = " &middot; ".join(escape(line) for line in step.label()[1:])
    head = f'<h3>{label}<span>{detail}</span></h3>'
    if step.status == "failed":
        return (f'<div class="step failed" id="{label}">{head}<div class="why"><b>failed</b>'
                f'<span class="reason">{escape(step.error or "failed")}</span></div></div>')
    thumb = _rel(step.thumbnail, base) if step.thumbnail else None
    video = _rel(step.video, base)
    if step.frames_dir:
        first = f"{video}/frame_0000.png"
        picture = (f'<a href="{url(first)}"><img loading="lazy" src="{url(thumb)}" alt="{label}"></a>' if thumb else
                   f'<a href="{url(first)}">PNG frames</a>')
        foot = f'lossless PNG frames &middot; <a href="{url(first)}">first frame</a>'
    else:
        poster = f' poster="{url(thumb)}"' if thumb else ""
        picture = f'<video controls preload="none"{poster} src="{url(video)}"></video>'
        foot = f'<a href="{url(video)}">{escape(posixpath.basename(video))}</a>'
    timing = f" &middot; decode {step.decode_seconds:.2f} s" if step.decode_seconds else ""
    return f'<div class="step" id="{label}">{head}{picture}<div class="foot">{foot}{timing}</div></div>'


XT_LABEL, X0_LABEL = "x_t (the stored latents)", "x0 (the model's prediction)"


def _side_by_side(base: str, sibling: str | None, is_x0: bool) -> str:
    """x_t and x0 progression sheets next to each other, when the other view's tree has this video."""
    if sibling is None:
        return ""
    other = f"../../../{sibling}/{base}"
    mine = (f'<figure><img loading="lazy" src="{SHEET_NAME}" alt="this view">'
            f'<figcaption>{escape(X0_LABEL if is_x0 else XT_LABEL)}</figcaption></figure>')
    theirs = (f'<figure><a href="{url(other + "/" + PAGE_NAME)}"><img loading="lazy" '
              f'src="{url(other + "/" + SHEET_NAME)}" alt="other view"></a>'
              f'<figcaption>{escape(XT_LABEL if is_x0 else X0_LABEL)}</figcaption></figure>')
    pair = theirs + mine if is_x0 else mine + theirs
    return f'<h2>x_t and x0 side by side</h2><div class="panel pair">{pair}</div>'


def view_note(summary: dict[str, Any]) -> str | None:
    """What a page of the x0 view says it shows (the summary's ``view`` and ``x0`` label: exact, or
    approximate for multistep solvers, and where sigma came from); None for the stored x_t."""
    if summary.get("view") != "x0":
        return None
    label = summary.get("x0") or "exact for Euler flow-matching steps, the step's effective x0 otherwise"
    return ("x0 view: each step shows the model's prediction of the clean video at that step, recovered from "
            f"two consecutive stored steps (no model call); {label}")


def _note(note: str | None) -> str:
    return f'<p class="view-note">{escape(note)}</p>' if note else ""


def render_video_page(view: VideoView, entry: VideoEntry, sibling: str | None = None, is_x0: bool = False,
                      note: str | None = None) -> str:
    """One video: its progression (video, sheet, statistics) and every step; beside the sheet of the
    other view (x_t or x0) when ``sibling`` (that tree's folder name) has this video. ``note``: what
    the view shows, when it is not the stored latents (``view_note``)."""
    base = f"{view.digest.prompt}/{view.digest.video}"
    d = view.digest
    quote_text = f"<blockquote>{escape(view.prompt_text)}</blockquote>" if view.prompt_text else ""
    poster = f' poster="{url(_rel(entry.poster, base))}"' if entry.poster else ""
    player = (f'<video controls preload="none"{poster} src="{PROGRESSION_NAME}"></video>'
              '<p class="meta">every decoded step in turn, first to last</p>' if entry.progression else
              '<p class="empty">no decoded step to play yet</p>')
    charts = stats_charts(view) or '<p class="empty">no latent statistics recorded</p>'
    stats_link = f' &middot; <a href="{STATS_NAME}">{STATS_NAME}</a>' if entry.stats else ""
    sheet = (f'<h2>Contact sheet</h2><div class="panel sheet-full"><img loading="lazy" src="{SHEET_NAME}" '
             f'alt="progression of {escape(base)}"></div>' if entry.sheet else "")
    shown = [s for s in view.steps if s.shown]
    hidden = [s.step for s in view.steps if not s.shown]
    waiting = (f'<p class="meta">not decoded (yet): {escape(", ".join(hidden[:50]))}'
               f'{" ..." if len(hidden) > 50 else ""}</p>' if hidden else "")
    body = (f'<header class="top"><nav class="crumbs"><a href="../../{PAGE_NAME}">&larr; gallery</a> / '
            f'{escape(d.prompt)}</nav><h1>{escape(base)}{" (x0)" if note else ""}</h1>{quote_text}{_note(note)}'
            '</header><main>'
            f'<div class="figures">{_figure(str(d.items), "steps")}{_figure(str(d.done), "decoded", "ok")}'
            f'{_figure(str(d.failed), "failed", "bad" if d.failed else "")}'
            f'{_figure(str(d.pending), "pending", "warn" if d.pending else "")}'
            f'{_figure(_duration(d.decode_seconds), "decode time")}</div>'
            f'<div class="layout"><div class="panel"><h2 style="margin-top:0">Progression</h2>{player}</div>'
            f'<div class="panel"><h2 style="margin-top:0">Latent statistics</h2>{charts}'
            f'<p class="meta">of the stored latents{stats_link}</p></div></div>'
            f'{sheet}{_side_by_side(base, sibling, is_x0) if entry.sheet else ""}'
            f'<h2>Steps</h2><div class="steps">{"".join(_step_card(s, base) for s in shown)}</div>{waiting}'
            '</main>')
    return _page(f"{base}: denoising", body)


def entries_in_order(entries: Iterable[VideoEntry]) -> list[VideoEntry]:
    return sorted(entries, key=lambda e: (e.prompt, e.video))
