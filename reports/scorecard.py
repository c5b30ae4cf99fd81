"""The report's scorecard: one row per metric and treatment variant, lift bar and decision."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from reports.formatting import DASH, format_interval, format_lift, format_p_value
from reports.results import AnalysisResult, ComparisonResult, MetricResult, Verdict

__all__ = [
    "LiftBar",
    "Scorecard",
    "ScorecardRow",
    "build_scorecard",
    "scorecard_decision",
]

SCALE_PADDING = 0.05
"""Share of the common lift scale left blank on each side of the widest interval."""
EMPTY_SPAN = 0.01
"""Half-width of the scale (a relative lift of 1%) when every value is zero or missing."""

_PRIMARY: dict[Verdict, tuple[str, str]] = {
    "significant win": ("ship", "up"),
    "significant loss": ("harm", "down"),
    "inconclusive": ("no difference", "neutral"),
    "keep running": ("keep running", "neutral"),
}
_GUARDRAIL: dict[Verdict, tuple[str, str]] = {
    "significant win": ("guardrail improved", "up"),
    "significant loss": ("guardrail breach", "down"),
    "inconclusive": ("guardrail OK", "neutral"),
    "keep running": ("keep running", "neutral"),
}


@dataclass(frozen=True)
class LiftBar:
    """A relative-lift interval on the scorecard's common scale, in percent of the bar width.

    ``zero`` is where a lift of 0 sits; ``left`` and ``width`` place the interval and
    ``point`` the estimate; each is None when the quantity is missing.
    """

    zero: float
    left: float | None
    width: float | None
    point: float | None


@dataclass(frozen=True)
class ScorecardRow:
    """One comparison (a treatment variant against the control on one metric), formatted."""

    metric: str
    metric_type: str
    description: str
    guardrail: bool
    variant: str
    baseline: str
    lift: str
    lift_ci: str
    p_adjusted: str
    decision: str
    """The decision in an analyst's words (`scorecard_decision`)."""
    verdict: Verdict
    """The analysis' own decision it was derived from."""
    tone: str
    """``up`` (good), ``down`` (bad) or ``neutral``: colours the bar and the decision."""
    bar: LiftBar
    anchor: str
    """The id of the metric's detail section below the scorecard."""


@dataclass(frozen=True)
class Scorecard:
    """The scorecard's rows and the common scale their bars are drawn on."""

    rows: tuple[ScorecardRow, ...]
    scale_min: str
    scale_max: str
    zero: float
    """Where a lift of 0 sits on the scale, in percent of the bar width."""
    confidence: str


def scorecard_decision(verdict: Verdict, guardrail: bool) -> tuple[str, str]:
    """The decision of a comparison in an analyst's words, and its tone.

    Parameters
    ----------
    verdict : {"significant win", "significant loss", "inconclusive", "keep running"}
        The analysis' decision (adjusted p-value, larger is better).
    guardrail : bool
        Whether the metric is a guardrail: a significant loss then reads "guardrail breach".

    Returns
    -------
    (str, str)
        The label (``ship``, ``harm``, ``no difference``, ``keep running``, ``guardrail
        breach``, ``guardrail OK``, ``guardrail improved``) and its tone (``up``, ``down``,
        ``neutral``).
    """
    table = _GUARDRAIL if guardrail else _PRIMARY
    if verdict not in table:
        raise ValueError(f"verdict: unknown decision (got {verdict!r})")
    return table[verdict]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _scale(comparisons: Iterable[ComparisonResult]) -> tuple[float, float]:
    """The common lift scale: 0, every estimate and every interval, with a margin."""
    values = [0.0]
    for cmp in comparisons:
        values += [v for v in (cmp.rel_lift, *(cmp.rel_lift_ci or ())) if _finite(v) is not None]
    lo, hi = min(values), max(values)
    if hi - lo == 0:
        return -EMPTY_SPAN, EMPTY_SPAN
    pad = SCALE_PADDING * (hi - lo)
    return lo - pad, hi + pad


def _bar(cmp: ComparisonResult | None, lo: float, hi: float) -> LiftBar:
    def at(value: float) -> float:
        return round(100.0 * (value - lo) / (hi - lo), 2)

    zero = at(0.0)
    if cmp is None:
        return LiftBar(zero, None, None, None)
    point = _finite(cmp.rel_lift)
    left = width = None
    if cmp.rel_lift_ci is not None:
        a, b = (_finite(v) for v in cmp.rel_lift_ci)
        if a is not None and b is not None:
            left, width = at(a), round(at(b) - at(a), 2)
    return LiftBar(zero, left, width, None if point is None else at(point))


def _rows(
    mr: MetricResult, control: str, description: str, lo: float, hi: float
) -> list[ScorecardRow]:
    anchor = f"metric-{mr.metric}"
    if not mr.comparisons:  # a single variant: nothing to compare, the metric still shows
        label, tone = scorecard_decision("keep running", mr.guardrail)
        return [
            ScorecardRow(
                mr.metric, mr.type, description, mr.guardrail, DASH, control, DASH, "",
                DASH, label, "keep running", tone, _bar(None, lo, hi), anchor,
            )
        ]  # fmt: skip
    rows = []
    for cmp in mr.comparisons:
        label, tone = scorecard_decision(cmp.decision, mr.guardrail)
        ci = "" if cmp.rel_lift_ci is None else format_interval(cmp.rel_lift_ci, format_lift)
        rows.append(
            ScorecardRow(
                metric=mr.metric,
                metric_type=mr.type,
                description=description,
                guardrail=mr.guardrail,
                variant=cmp.variant,
                baseline=cmp.baseline,
                lift=format_lift(cmp.rel_lift),
                lift_ci=ci,
                p_adjusted=format_p_value(cmp.p_value_adjusted),
                decision=label,
                verdict=cmp.decision,
                tone=tone,
                bar=_bar(cmp, lo, hi),
                anchor=anchor,
            )
        )
    return rows


def build_scorecard(result: AnalysisResult, confidence: str) -> Scorecard:
    """The scorecard of an analysis: primary metrics first, then guardrails.

    Parameters
    ----------
    result : AnalysisResult
        The output of `reports.analysis.analyze`.
    confidence : str
        The confidence level as shown (``"95%"``), for the interval column's header.

    Returns
    -------
    Scorecard
        One row per (metric, treatment variant); a metric without a comparison (a single
        variant) still has one row. All bars share one scale that includes zero.
    """
    lo, hi = _scale(cmp for mr in result.metrics for cmp in mr.comparisons)
    ordered = sorted(result.metrics, key=lambda mr: mr.guardrail)  # stable: YAML order kept
    rows = [
        row
        for mr in ordered
        for row in _rows(
            mr, result.control, result.descriptions.get(f"metric:{mr.metric}", ""), lo, hi
        )
    ]
    zero = _bar(None, lo, hi).zero
    return Scorecard(tuple(rows), format_lift(lo), format_lift(hi), zero, confidence)
