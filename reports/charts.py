"""Geometry of the HTML report's SVG charts: relative-lift bars and line charts."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from reports.formatting import format_lift

__all__ = ["LiftChart", "LineChart", "LineSeries", "lift_chart", "line_chart"]

# ---------------------------------------------------------------------------
# Relative-lift chart geometry (computed here, drawn by the template)
# ---------------------------------------------------------------------------

# Geometry of the relative-lift charts, in SVG user units.
CHART_WIDTH = 420.0
CHART_HEIGHT = 64.0
CHART_MARGIN = 36.0
CHART_AXIS_Y = 26.0


@dataclass(frozen=True)
class LiftChart:
    """Coordinates of one relative-lift chart: interval, point, zero line, ground truth.

    All ``x_*`` values are SVG x coordinates (None when the quantity is missing);
    the labels are already formatted for display.
    """

    width: float
    height: float
    axis_y: float
    x_min: float
    x_max: float
    x_zero: float | None
    x_lo: float | None
    x_hi: float | None
    x_point: float | None
    x_truth: float | None
    label_min: str | None
    label_max: str | None
    tone: str
    title: str


def lift_chart(
    lift: float | None,
    interval: tuple[float, float] | None,
    truth: float | None,
    significant: bool,
    title: str,
) -> LiftChart:
    """Lay out a horizontal relative-lift interval on a scale that includes 0.

    Parameters
    ----------
    lift : float or None
        Estimated relative lift (the point).
    interval : (float, float) or None
        Its confidence interval.
    truth : float or None
        The simulator's true relative lift, drawn as a diamond.
    significant : bool
        Colours the interval: green (up) / red (down) when significant, grey otherwise.
    title : str
        Accessible description of the chart (SVG ``<title>``).

    Returns
    -------
    LiftChart
    """
    values = [0.0] + [v for v in (lift, truth) if v is not None and math.isfinite(v)]
    if interval is not None:
        values += [v for v in interval if math.isfinite(v)]
    lo, hi = min(values), max(values)
    span = hi - lo
    if span == 0:
        span = max(abs(hi), 0.01)
        lo, hi = lo - span / 2, hi + span / 2
    else:
        lo, hi = lo - 0.08 * span, hi + 0.08 * span
    left, right = CHART_MARGIN, CHART_WIDTH - CHART_MARGIN

    def x(value: float | None) -> float | None:
        if value is None or not math.isfinite(value):
            return None
        return round(left + (value - lo) / (hi - lo) * (right - left), 1)

    tone = "neutral"
    if significant and lift is not None:
        tone = "up" if lift > 0 else "down"
    x_zero = x(0.0)

    def end_label(value: float, at: float) -> str | None:
        # Skip an end label that would overlap the "0%" label.
        return None if x_zero is not None and abs(at - x_zero) < 48 else format_lift(value)

    return LiftChart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        axis_y=CHART_AXIS_Y,
        x_min=left,
        x_max=right,
        x_zero=x_zero,
        x_lo=x(interval[0]) if interval is not None else None,
        x_hi=x(interval[1]) if interval is not None else None,
        x_point=x(lift),
        x_truth=x(truth),
        label_min=end_label(lo, left),
        label_max=end_label(hi, right),
        tone=tone,
        title=title,
    )


# ---------------------------------------------------------------------------
# Line charts (bandit allocation over time, cumulative regret)
# ---------------------------------------------------------------------------

LINE_WIDTH = 520.0
LINE_HEIGHT = 220.0
LINE_LEFT = 56.0
LINE_RIGHT = 16.0
LINE_TOP = 12.0
LINE_BOTTOM = 40.0


@dataclass(frozen=True)
class LineSeries:
    """One polyline: its name, SVG points ``"x,y x,y ..."`` and a CSS class."""

    name: str
    points: str
    tone: str


@dataclass(frozen=True)
class LineChart:
    """Coordinates of a line chart with a 0-based y axis; labels already formatted."""

    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    series: tuple[LineSeries, ...]
    x_ticks: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    x_label: str
    title: str


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / count for i in range(count + 1)]


def line_chart(
    series: list[tuple[str, list[float], list[float], str]],
    *,
    title: str,
    x_label: str,
    y_format: Callable[[float | None], str],
    y_max: float | None = None,
    x_format: Callable[[float], str] = lambda x: f"{x:,.0f}",
) -> LineChart:
    """Lay out polylines (name, xs, ys, css class) on shared axes; y starts at 0.

    Parameters
    ----------
    series : list of (name, xs, ys, tone)
        Points of each line; non-finite points are dropped.
    title : str
        Accessible description (SVG ``<title>``).
    x_label : str
        What the x axis counts.
    y_format : callable
        Formats the y tick labels.
    y_max : float, optional
        Top of the y axis (default: the largest y, or 1 when every y is 0).
    x_format : callable
        Formats the x tick labels (default: whole numbers with thousands separators).
    """
    xs = [x for _, values, _, _ in series for x in values if math.isfinite(x)]
    ys = [y for _, _, values, _ in series for y in values if math.isfinite(y)]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    top = y_max if y_max is not None else max(ys, default=0.0)
    top = top if top > 0 else 1.0
    width_px = LINE_WIDTH - LINE_LEFT - LINE_RIGHT
    height_px = LINE_HEIGHT - LINE_TOP - LINE_BOTTOM

    def px(x: float) -> float:
        return round(LINE_LEFT + (x - x_lo) / (x_hi - x_lo) * width_px, 1)

    def py(y: float) -> float:
        return round(LINE_TOP + (1.0 - min(max(y / top, 0.0), 1.0)) * height_px, 1)

    lines = []
    for name, x_values, y_values, tone in series:
        points = " ".join(
            f"{px(x)},{py(y)}"
            for x, y in zip(x_values, y_values, strict=True)
            if math.isfinite(x) and math.isfinite(y)
        )
        lines.append(LineSeries(name, points, tone))
    x_values = _ticks(x_lo, x_hi)
    if x_hi - x_lo >= 4:  # whole-number ticks, so a label sits where its value is
        x_values = sorted({float(round(x)) for x in x_values})
    x_ticks = tuple((px(x), x_format(x)) for x in x_values)
    y_ticks = tuple((py(y), y_format(y)) for y in _ticks(0.0, top))
    return LineChart(
        width=LINE_WIDTH,
        height=LINE_HEIGHT,
        left=LINE_LEFT,
        right=LINE_WIDTH - LINE_RIGHT,
        top=LINE_TOP,
        bottom=LINE_HEIGHT - LINE_BOTTOM,
        series=tuple(lines),
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        x_label=x_label,
        title=title,
    )
