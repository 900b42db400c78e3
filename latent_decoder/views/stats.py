"""Latent statistics per step: ``latent_stats.json`` beside a video's steps, and the inline SVG charts
the gallery draws from them (the noise leaving shows as std falling and channel norms settling)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from html import escape
from typing import Any, Sequence

from .collect import VideoView

STATS_NAME = "latent_stats.json"


def stats_document(view: VideoView) -> dict[str, Any]:
    """What ``latent_stats.json`` holds: per step with statistics, the journal's figures as they are."""
    steps = []
    for s in view.steps:
        if not s.stats:
            continue
        steps.append({"step": s.step, "step_index": s.index, "timestep": s.timestep, "sigma": s.sigma,
                      "mean": s.stats.get("mean"), "std": s.stats.get("std"),
                      "channel_norms": s.stats.get("channel_norms")})
    return {"prompt": view.digest.prompt, "video": view.digest.video, "prompt_text": view.prompt_text,
            "steps": steps}


def stats_bytes(view: VideoView) -> bytes:
    return (json.dumps(stats_document(view), indent=1) + "\n").encode()


# ---------------------------------------------------------------------------------------- charts

@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    colour: str
    width: float = 2.0


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values spanning [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= step * factor:
            step *= factor
            break
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def line_chart(title: str, steps: Sequence[int], series: Sequence[Series], width: int = 560, height: int = 210,
               legend: bool = True) -> str:
    """An inline SVG line chart over the step numbers ``steps`` (a missing step leaves a gap in x), one
    line per series, a tooltip per point."""
    left, right, top, bottom = 52, 14, 26, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    if not values or not steps:
        return ""
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.06
    low, high = low - pad, high + pad
    n = len(steps)
    first, span = steps[0], (steps[-1] - steps[0]) or 1

    def x(i: int) -> float:
        return left + (plot_w * (steps[i] - first) / span if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot"/>']
    for tick in _ticks(low, high):
        ty = y(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{ty + 4:.1f}" class="tick" text-anchor="end">{_fmt(tick)}</text>')
    every = max(1, math.ceil(n / 10))
    for i in range(0, n, every):
        parts.append(f'<text x="{x(i):.1f}" y="{height - 10}" class="tick" text-anchor="middle">{steps[i]}</text>')
    for s in series:
        points = [(x(i), y(v), v, f"step {steps[i]}") for i, v in enumerate(s.values)
                  if v is not None and math.isfinite(v)]
        if not points:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="{s.width}">'
                     f'<title>{escape(s.name)}</title></polyline>')
        if len(series) <= 4:
            parts.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{s.colour}"><title>{escape(label)}: '
                         f'{escape(s.name)} {v:.4g}</title></circle>' for px, py, v, label in points)
    if legend and len(series) <= 4:
        lx = left + plot_w
        for s in reversed(series):
            text_w = 7 * len(s.name) + 6
            lx -= text_w + 16
            parts.append(f'<rect x="{lx:.0f}" y="8" width="10" height="10" fill="{s.colour}"/>'
                         f'<text x="{lx + 14:.0f}" y="17" class="tick">{escape(s.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def channel_colour(channel: int, channels: int) -> str:
    return f"hsl({round(360 * channel / max(1, channels))},70%,60%)"


def stats_charts(view: VideoView) -> str:
    """The video page's charts: std and mean per step, and every channel's L2 norm per step."""
    steps = [s for s in view.steps if s.stats]
    if not steps:
        return ""
    numbers = [s.index for s in steps]
    moments = line_chart("latent std and mean per step", numbers, [
        Series("std", [s.stats.get("std") for s in steps], "#5ea0ff"),
        Series("mean", [s.stats.get("mean") for s in steps], "#ffb454")])
    norms_of = [list(s.stats.get("channel_norms") or []) for s in steps]
    channels = max(len(n) for n in norms_of)
    norms = ""
    if channels:
        series = [Series(f"channel {c}", [n[c] if c < len(n) else None for n in norms_of],
                         channel_colour(c, channels), 1.4) for c in range(channels)]
        norms = line_chart(f"per-channel L2 norm per step ({channels} channels)", numbers, series, legend=False)
    return moments + norms


def sparkline(values: Sequence[float], width: int = 120, height: int = 28) -> str:
    """A tiny std-per-step line for the gallery's video cards."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    n = len(values)
    points = " ".join(f"{2 + (width - 4) * i / (n - 1):.1f},{2 + (height - 4) * (1 - (v - low) / span):.1f}"
                      for i, v in enumerate(values) if v is not None and math.isfinite(v))
    return (f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="latent std per step"><title>latent std per step: {_fmt(finite[0])} to {_fmt(finite[-1])}'
            f'</title><polyline points="{points}" fill="none" stroke="#5ea0ff" stroke-width="1.6"/></svg>')
