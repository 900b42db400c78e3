"""Latent statistics per step: ``latent_stats.json`` beside a video's steps, and the charts the gallery
draws from them (the noise leaving shows as std falling and channel norms settling): their geometry is
computed here, ``templates/charts.html`` lays it out as inline SVG."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
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
# Coordinates are formatted here as they appear in the SVG.

@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    colour: str
    width: float = 2.0


@dataclass(frozen=True)
class Tick:
    """A labelled position on an axis: a grid line at ``y`` for values, a step number at ``x`` for steps."""

    at: str
    label: str
    label_at: str = ""


@dataclass(frozen=True)
class Dot:
    x: str
    y: str
    title: str


@dataclass(frozen=True)
class Line:
    name: str
    colour: str
    width: float
    points: str  # the polyline's "x,y x,y ..."
    dots: list[Dot]  # a point with a tooltip each (only on charts of a few lines)


@dataclass(frozen=True)
class LegendKey:
    x: str
    text_x: str
    colour: str
    name: str


@dataclass(frozen=True)
class LineChart:
    """An SVG line chart over step numbers: the plot box, its ticks, one line per series, a legend."""

    title: str
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    lines: list[Line]
    legend: list[LegendKey]

    @property
    def x_tick_y(self) -> int:
        return self.height - 10


@dataclass(frozen=True)
class Sparkline:
    """The tiny std-per-step line of a gallery card."""

    width: int
    height: int
    points: str
    title: str


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
               legend: bool = True) -> LineChart | None:
    """A line chart over the step numbers ``steps`` (a missing step leaves a gap in x), one line per
    series, a tooltip per point; None when there is nothing to draw."""
    left, right, top, bottom = 52, 14, 26, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    if not values or not steps:
        return None
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

    y_ticks = [Tick(f"{y(t):.1f}", _fmt(t), f"{y(t) + 4:.1f}") for t in _ticks(low, high)]
    x_ticks = [Tick(f"{x(i):.1f}", str(steps[i])) for i in range(0, n, max(1, math.ceil(n / 10)))]
    few = len(series) <= 4
    lines = []
    for s in series:
        points = [(x(i), y(v), v, f"step {steps[i]}") for i, v in enumerate(s.values)
                  if v is not None and math.isfinite(v)]
        if not points:
            continue
        dots = [Dot(f"{px:.1f}", f"{py:.1f}", f"{label}: {s.name} {v:.4g}") for px, py, v, label in points] if few else []
        lines.append(Line(s.name, s.colour, s.width, " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points), dots))
    keys = []
    if legend and few:
        lx = left + plot_w
        for s in reversed(series):
            lx -= 7 * len(s.name) + 6 + 16
            keys.append(LegendKey(f"{lx:.0f}", f"{lx + 14:.0f}", s.colour, s.name))
    return LineChart(title, width, height, left, top, plot_w, plot_h, y_ticks, x_ticks, lines, keys)


def channel_colour(channel: int, channels: int) -> str:
    return f"hsl({round(360 * channel / max(1, channels))},70%,60%)"


def stats_charts(view: VideoView) -> list[LineChart]:
    """The video page's charts: std and mean per step, and every channel's L2 norm per step."""
    steps = [s for s in view.steps if s.stats]
    if not steps:
        return []
    numbers = [s.index for s in steps]
    charts = [line_chart("latent std and mean per step", numbers, [
        Series("std", [s.stats.get("std") for s in steps], "#5ea0ff"),
        Series("mean", [s.stats.get("mean") for s in steps], "#ffb454")])]
    norms_of = [list(s.stats.get("channel_norms") or []) for s in steps]
    channels = max(len(n) for n in norms_of)
    if channels:
        series = [Series(f"channel {c}", [n[c] if c < len(n) else None for n in norms_of],
                         channel_colour(c, channels), 1.4) for c in range(channels)]
        charts.append(line_chart(f"per-channel L2 norm per step ({channels} channels)", numbers, series, legend=False))
    return [c for c in charts if c is not None]


def sparkline(values: Sequence[float], width: int = 120, height: int = 28) -> Sparkline | None:
    """A tiny std-per-step line for the gallery's video cards; None for fewer than two values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    n = len(values)
    points = " ".join(f"{2 + (width - 4) * i / (n - 1):.1f},{2 + (height - 4) * (1 - (v - low) / span):.1f}"
                      for i, v in enumerate(values) if v is not None and math.isfinite(v))
    return Sparkline(width, height, points, f"latent std per step: {_fmt(finite[0])} to {_fmt(finite[-1])}")
