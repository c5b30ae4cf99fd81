"""Render an `AnalysisResult` as one self-contained HTML page (Jinja2, inline CSS and SVG)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from reports.results import (
    AnalysisResult,
    BanditResult,
    ComparisonResult,
    MetricResult,
    RankingQuality,
    VariantEstimate,
    clean_float,
    clean_pair,
)

__all__ = [
    "DASH",
    "LiftChart",
    "LineChart",
    "format_diff",
    "format_interval",
    "format_lift",
    "format_number",
    "format_p_value",
    "format_percent",
    "format_value",
    "lift_chart",
    "line_chart",
    "p_text",
    "ranking_cells",
    "render_report",
]

DASH = "—"

# Geometry of the relative-lift charts, in SVG user units.
CHART_WIDTH = 420.0
CHART_HEIGHT = 64.0
CHART_MARGIN = 36.0
CHART_AXIS_Y = 26.0


# ---------------------------------------------------------------------------
# Number formatting for people
# ---------------------------------------------------------------------------


def format_number(value: float | None, significant: int = 4) -> str:
    """A number with about `significant` significant digits and thousands separators.

    Examples: ``1.3333 -> "1.333"``, ``20 -> "20.00"``, ``0.0321 -> "0.03210"``,
    ``12345.6 -> "12,346"``; None or non-finite gives an em dash.
    """
    if value is None or not math.isfinite(value):
        return DASH
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = min(max(significant - 1 - magnitude, 0), 8)
    return f"{value:,.{decimals}f}"


def format_percent(value: float | None, decimals: int = 2, signed: bool = False) -> str:
    """A fraction as a percentage: ``0.0345 -> "3.45%"`` (``"+3.45%"`` when signed)."""
    if value is None or not math.isfinite(value):
        return DASH
    sign = "+" if signed else ""
    return f"{100.0 * value:{sign},.{decimals}f}%"


def format_lift(value: float | None) -> str:
    """A relative lift as a signed percentage, with more digits when it is tiny."""
    if value is None or not math.isfinite(value):
        return DASH
    decimals = 1 if abs(value) >= 0.001 or value == 0 else 3
    return format_percent(value, decimals, signed=True)


def format_p_value(value: float | None) -> str:
    """A p-value as people read it: ``"< 0.001"``, ``"0.004"``, ``"0.049"``, ``"0.23"``."""
    if value is None or not math.isfinite(value):
        return DASH
    if value < 0.001:
        return "< 0.001"
    # Three decimals near the usual thresholds, so 0.049 never shows as 0.05.
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def p_text(value: float | None) -> str:
    """``"p < 0.001"`` or ``"p = 0.23"``."""
    shown = format_p_value(value)
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"


def format_value(metric_type: str, value: float | None) -> str:
    """A metric value: a percentage for proportions, else a number."""
    return format_percent(value) if metric_type == "proportion" else format_number(value)


def format_diff(metric_type: str, value: float | None) -> str:
    """A signed difference: percentage points for proportions, else a number."""
    if value is None or not math.isfinite(value):
        return DASH
    if metric_type == "proportion":
        return f"{100.0 * value:+.2f} pp"
    text = format_number(value)
    return text if text.startswith("-") or text == "0" else f"+{text}"


def format_interval(pair: tuple[float, float] | None, fmt: Callable[[float | None], str]) -> str:
    """``"lo to hi"`` with each end formatted by `fmt`; an em dash when missing."""
    if pair is None:
        return DASH
    return f"{fmt(pair[0])} to {fmt(pair[1])}"


# ---------------------------------------------------------------------------
# Relative-lift chart geometry (computed here, drawn by the template)
# ---------------------------------------------------------------------------


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


ARM_TONES = 8
"""Distinct arm colours in the stylesheet (arm0 ... arm7); more arms reuse them."""


def _bandit_view(bandit: BanditResult, confidence: str) -> dict[str, Any]:
    """The bandit section: per-context arm tables and allocation charts, and regret."""
    metric_type = "proportion" if bandit.reward == "binary" else "mean"

    def value(v: float | None) -> str:
        return format_value(metric_type, v)

    def interval(pair: tuple[float, float] | None) -> str:
        kept = clean_pair(pair)
        return "" if kept is None else format_interval((kept[0], kept[1]), value)

    arm_order = list(dict.fromkeys(row.arm for row in bandit.arms))
    tone = {arm: f"arm{i % ARM_TONES}" for i, arm in enumerate(arm_order)}
    contexts: dict[str, dict[str, Any]] = {}
    for row in bandit.arms:
        truth = clean_float(row.truth)
        view = contexts.setdefault(row.context, {"label": row.context or "all units", "rows": []})
        view["rows"].append(
            {
                "arm": row.arm,
                "tone": tone[row.arm],
                "units": f"{row.units:,}",
                "weight": format_percent(row.weight, 1),
                "p_best": format_percent(row.p_best, 1),
                "naive": value(row.naive_mean),
                "naive_ci": interval(row.naive_ci),
                "ipw": value(row.ipw_mean),
                "ipw_ci": interval(row.ipw_ci),
                "ht": value(row.ht_mean),
                "ht_ci": interval(row.ht_ci),
                "truth": None if truth is None else value(truth),
                "note": row.note,
            }
        )
    for context, view in contexts.items():
        points = [p for p in bandit.allocation if p.context == context]
        versions = [float(p.version) for p in points]
        series = [
            (arm, versions, [float(p.weights.get(arm, math.nan)) for p in points], tone[arm])
            for arm in arm_order
        ]
        where = "" if not context else f" ({context})"
        view["chart"] = line_chart(
            series,
            title=f"Allocation weight of each arm by weight version{where}",
            x_label="weight version (one per batched update)",
            y_format=lambda y: format_percent(y, 0),
            y_max=1.0,
        )
    regret_view = None
    regret = bandit.regret
    if regret is not None:
        # Both curves start at no units, no regret.
        units = [0.0] + [float(u) for u in regret.units]
        chart = line_chart(
            [
                ("Thompson sampling", units, [0.0, *regret.bandit], "regret-bandit"),
                ("fixed equal split", units, [0.0, *regret.fixed], "regret-fixed"),
            ],
            title="Cumulative regret against the best arm: Thompson sampling and a fixed "
            "equal split",
            x_label="bandit units",
            y_format=lambda y: format_number(y, 3),
        )
        fixed = regret.fixed_total
        saving = 1.0 - regret.total / fixed if fixed else None
        regret_view = {
            "chart": chart,
            "total": format_number(regret.total),
            "fixed_total": format_number(fixed),
            "saving": format_percent(saving, 0),
            "units": f"{regret.total_units:,}",
            "best": ", ".join(
                f"{arm}" if not context else f"{context}: {arm}"
                for context, arm in regret.best_arm.items()
            ),
        }
    check = bandit.allocation_check
    check_view = None
    if check.units_checked:
        check_view = {"mismatch": check.mismatch, "p_text": p_text(clean_float(check.p_value))}
    return {
        "check": check_view,
        "reward_metric": bandit.reward_metric,
        "unit": bandit.unit,
        "versions": bandit.versions,
        "update_every": f"{bandit.update_every:,}",
        "contexts": list(contexts.values()),
        "has_truth": any(clean_float(row.truth) is not None for row in bandit.arms),
        "regret": regret_view,
        "confidence": confidence,
    }


# ---------------------------------------------------------------------------
# View model
# ---------------------------------------------------------------------------


def _true_lift(truth: Mapping[str, float] | None, variant: str, baseline: str) -> float | None:
    """The simulator's relative lift of `variant` over `baseline`, when both are known."""
    if not truth or variant not in truth or baseline not in truth or truth[baseline] == 0:
        return None
    return truth[variant] / truth[baseline] - 1.0


def _optional_interval(pair: tuple[float, float] | None, fmt: Callable[[float | None], str]) -> str:
    return "" if pair is None else format_interval(pair, fmt)


def _verdict(cmp: ComparisonResult) -> str:
    if cmp.p_value is None:
        return "not testable"
    return "significant" if cmp.significant else "not significant"


def _variant_row(
    mr: MetricResult,
    estimate: VariantEstimate,
    cmp: ComparisonResult | None,
    control: str,
) -> dict[str, Any]:
    def value(v: float | None) -> str:
        return format_value(mr.type, v)

    def diff(v: float | None) -> str:
        return format_diff(mr.type, v)

    truth = None
    if mr.ground_truth is not None and estimate.variant in mr.ground_truth:
        truth = value(mr.ground_truth[estimate.variant])
    notes = [n for n in (estimate.note, cmp.note if cmp else None) if n]
    row: dict[str, Any] = {
        "variant": estimate.variant,
        "is_control": estimate.variant == control,
        "units": f"{estimate.units:,}",
        "mean": value(estimate.mean),
        "ci": format_interval(estimate.ci, value),
        "truth": truth,
        "notes": notes,
        "diff": DASH,
        "diff_ci": "",
        "lift": DASH,
        "lift_ci": "",
        "p_value": DASH,
        "verdict": "baseline" if estimate.variant == control else "",
        "tone": "neutral",
        "p_adjusted": DASH,
        "chance": DASH,
        "decision": "",
        "decision_tone": "neutral",
    }
    if cmp is not None:
        verdict = _verdict(cmp)
        tone = "neutral"
        if cmp.significant and cmp.diff is not None:
            tone = "up" if cmp.diff > 0 else "down"
        row.update(
            diff=diff(cmp.diff),
            diff_ci=_optional_interval(cmp.diff_ci, diff),
            lift=format_lift(cmp.rel_lift),
            lift_ci=_optional_interval(cmp.rel_lift_ci, format_lift),
            p_value=format_p_value(cmp.p_value),
            verdict=verdict,
            tone=tone,
            p_adjusted=format_p_value(cmp.p_value_adjusted),
            chance=format_percent(cmp.chance_to_beat_control, 1),
            decision=cmp.decision,
            decision_tone=_decision_tone(cmp.decision),
        )
    return row


def _decision_tone(decision: str) -> str:
    return {"significant win": "up", "significant loss": "down"}.get(decision, "neutral")


def _details(mr: MetricResult, cmp: ComparisonResult, confidence: str) -> list[str]:
    """Plain-language lines under a comparison: sequential CI, MDE, Bayes, CUPED."""

    def diff(v: float | None) -> str:
        return format_diff(mr.type, v)

    lines = []
    if cmp.sequential is not None:
        seq = cmp.sequential
        ci = seq.diff_ci
        lift_ci = seq.rel_lift_ci
        text = f"Always-valid {confidence} interval (safe to check at any time): "
        text += format_interval(ci, diff) if ci is not None else DASH
        if lift_ci is not None:
            text += f", relative lift {format_interval(lift_ci, format_lift)}"
        text += (
            f"; it excludes zero once |difference| / standard error exceeds "
            f"{format_number(seq.boundary_z, 3)}"
            f" (now {format_number(seq.z, 3)}), always-valid {p_text(seq.p_value)}"
        )
        lines.append(text)
    if cmp.mde is not None:
        text = f"Smallest effect detectable now: {diff(cmp.mde).lstrip('+')}"
        if cmp.mde_relative is not None:
            text += f" ({format_percent(cmp.mde_relative, 1)} of the control's value)"
        lines.append(text + ".")
    if cmp.bayes is not None and cmp.chance_to_beat_control is not None:
        interval = cmp.bayes.lift_interval
        text = f"Chance to beat control: {format_percent(cmp.chance_to_beat_control, 1)}"
        if interval is not None:
            text += f"; credible interval of the lift {format_interval(interval, format_lift)}"
        method = "Beta-Binomial" if cmp.bayes.method == "beta-binomial" else "normal"
        lines.append(f"{text} ({method} posterior, flat prior).")
    if cmp.cuped is not None and cmp.cuped.applied:
        lines.append(
            "CUPED on: pre-experiment behaviour removed "
            f"{format_percent(cmp.cuped.variance_reduction, 1)} of the variance of the difference."
        )
    return lines


def _cuped_text(mr: MetricResult) -> str:
    info = mr.cuped
    if info is None:
        return "CUPED off."
    if info.applied:
        return (
            "CUPED on: adjusted with each unit's pre-experiment value of this metric "
            f"(variance reduced by {format_percent(info.variance_reduction, 1)})."
        )
    return f"CUPED off ({info.note})." if info.note else "CUPED off."


def _chart(mr: MetricResult, cmp: ComparisonResult, confidence: str) -> dict[str, Any]:
    truth = _true_lift(mr.ground_truth, cmp.variant, cmp.baseline)
    title = f"{mr.metric}: relative lift of {cmp.variant} vs {cmp.baseline} "
    title += format_lift(cmp.rel_lift)
    if cmp.rel_lift_ci is not None:
        title += f" ({confidence} CI {format_interval(cmp.rel_lift_ci, format_lift)})"
    if truth is not None:
        title += f"; true lift {format_lift(truth)}"
    chart = lift_chart(cmp.rel_lift, cmp.rel_lift_ci, truth, cmp.significant, title)
    return {
        "variant": cmp.variant,
        "baseline": cmp.baseline,
        "chart": chart,
        "lift": format_lift(cmp.rel_lift),
        "lift_ci": _optional_interval(cmp.rel_lift_ci, format_lift),
        "truth": format_lift(truth) if truth is not None else None,
        "verdict": _verdict(cmp),
        "decision": cmp.decision,
        "decision_tone": _decision_tone(cmp.decision),
        "details": _details(mr, cmp, confidence),
    }


def _metric_view(mr: MetricResult, control: str, alpha: float) -> dict[str, Any]:
    by_variant = {cmp.variant: cmp for cmp in mr.comparisons}
    confidence = _confidence(alpha)
    return {
        "name": mr.metric,
        "type": mr.type,
        "value_label": {"proportion": "Rate", "mean": "Mean", "ratio": "Ratio"}[mr.type],
        "diff_label": "Difference" + (" (pp)" if mr.type == "proportion" else ""),
        "has_truth": mr.ground_truth is not None,
        "rows": [
            _variant_row(mr, est, by_variant.get(est.variant), control) for est in mr.variants
        ],
        "charts": [_chart(mr, cmp, confidence) for cmp in mr.comparisons],
        "guardrail": mr.guardrail,
        "cuped": _cuped_text(mr),
    }


def _confidence(alpha: float) -> str:
    level = 100.0 * (1.0 - alpha)
    return f"{level:.0f}%" if level == round(level) else f"{level:g}%"


def ranking_cells(values: RankingQuality) -> dict[str, str]:
    """One variant's ranking quality, formatted: slates, hit rate, NDCG, coverage, ..."""
    return {
        "slates": f"{values.slates:,}",
        "hit_rate": format_percent(values.hit_rate, 1),
        "ndcg": format_number(values.ndcg),
        "coverage": format_percent(values.coverage, 1),
        "diversity": format_number(values.intra_list_diversity),
        "novelty": format_number(values.novelty),
    }


def _ranking_view(result: AnalysisResult) -> list[dict[str, str]]:
    """Rows of the ranking-quality table (empty when there were no slates)."""
    return [
        {"variant": variant, **ranking_cells(values)}
        for variant, values in (result.ranking or {}).items()
    ]


def _view(result: AnalysisResult) -> dict[str, Any]:
    total = sum(result.units.values())
    srm = result.srm
    units = [
        {
            "variant": variant,
            "units": f"{n:,}",
            "share": format_percent(n / total if total else None, 1),
            "expected": f"{srm.expected.get(variant, 0.0):,.1f}",
        }
        for variant, n in result.units.items()
    ]
    return {
        "experiment": result.experiment,
        "description": result.description,
        "control": result.control,
        "alpha": f"{result.alpha:g}",
        "confidence": _confidence(result.alpha),
        "units": units,
        "total_units": f"{total:,} unit" if total == 1 else f"{total:,} units",
        "excluded": result.excluded_units.get("multiple_variants", 0),
        "srm": {
            "mismatch": srm.mismatch,
            "p_text": p_text(srm.p_value),
            "chi2": format_number(srm.chi2),
        },
        "metrics": [_metric_view(mr, result.control, result.alpha) for mr in result.metrics],
        "any_charts": any(mr.comparisons for mr in result.metrics),
        "any_truth": any(mr.ground_truth is not None for mr in result.metrics),
        "run": result.run,
        "warnings": list(result.warnings),
        "ranking": _ranking_view(result),
        "correction": _CORRECTION_TEXT.get(result.correction, result.correction),
        "sequential": result.sequential,
        "power": format_percent(result.power, 0),
        "family_size": sum(len(mr.comparisons) for mr in result.metrics if not mr.guardrail),
        "bandit": None
        if result.bandit is None
        else _bandit_view(result.bandit, _confidence(result.alpha)),
    }


_CORRECTION_TEXT = {
    "none": "no correction for multiple comparisons",
    "holm": "Holm-Bonferroni correction",
    "bh": "Benjamini-Hochberg (false discovery rate) correction",
}


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(result: AnalysisResult) -> str:
    """Render the analysis as one self-contained HTML page.

    Parameters
    ----------
    result : AnalysisResult
        The output of `reports.analysis.analyze`.

    Returns
    -------
    str
        An HTML5 document with inline CSS and inline SVG charts: no scripts,
        no external stylesheets, fonts or images. Every value coming from the
        experiment (key, description, variant and metric names) is escaped.
    """
    return _environment().get_template("report.html").render(**_view(result))
