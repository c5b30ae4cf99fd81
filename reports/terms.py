"""Which per-unit values, and which products of them, each metric's sufficient statistics need.

A metric needs sums per variant of its per-unit values and of their squares and products
(`reports.sufficient`), and CUPED the same of the pre-period values (`reports.cuped`).
Each factor is a `Term`: a value key of `reports.units` (windowed as the metric is,
`reports.windows`) and the threshold it is capped at (`reports.capping`). `plan_sums`
labels every distinct product once; `reports.aggregate` sums them in one statement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, case

from abplatform.config.models import MeanMetric, ProportionMetric, RatioMetric
from reports.capping import Cap
from reports.sufficient import MeanStats, RatioStats
from reports.units import (
    IMPRESSION,
    PRE,
    UnitValues,
    ValueKey,
    float_constant,
    metric_key,
    value_key,
)
from reports.windows import closed_key, windowed_key

__all__ = [
    "NO_SHAPE",
    "Metric",
    "Shape",
    "Term",
    "Thresholds",
    "covariate_terms",
    "cuped_eligible",
    "metric_terms",
    "plan_sums",
    "product_of",
    "statistics_of",
    "thresholds_of",
]

Metric = ProportionMetric | MeanMetric | RatioMetric

Term = tuple[ValueKey, float]
"""A per-unit value and the threshold it is capped at (``inf``: not capped)."""
Thresholds = Mapping[tuple[str, str], float]
"""Cap thresholds by (metric name, role) (`reports.capping`)."""


def thresholds_of(caps: Sequence[Cap]) -> dict[tuple[str, str], float]:
    """The thresholds of the caps that have one, by (metric name, role)."""
    return {(c.metric, c.role): c.threshold for c in caps if c.threshold is not None}


@dataclass(frozen=True)
class Shape:
    """How the metrics' per-unit values are shaped before they are summed: the cap
    thresholds (`reports.capping`) and the analysis time that closes windows
    (`reports.windows`)."""

    thresholds: Thresholds = field(default_factory=dict)
    as_of: datetime | None = None

    def term(self, key: ValueKey, metric: Metric, role: str) -> Term:
        """The metric's per-unit value `key` (windowed as the metric is), with its cap."""
        return (
            windowed_key(key, metric.window),
            self.thresholds.get((metric.name, role), math.inf),
        )

    def closed(self, metric: Metric) -> Term | None:
        """The closed-window indicator of a windowed metric (None without a window)."""
        if metric.window is None:
            return None
        if self.as_of is None:
            raise ValueError(f"metric {metric.name!r} has a window: the analysis needs as_of")
        return (closed_key(metric.window, self.as_of), math.inf)


NO_SHAPE = Shape()


def restricted(
    terms: Mapping[str, tuple[Term, ...]], closed: Term | None, *, count: bool
) -> dict[str, tuple[Term, ...]]:
    """Each product times the closed-window indicator, and ``n`` its sum (windowed metrics)."""
    if closed is None:
        return dict(terms)
    out = {name: (*product, closed) for name, product in terms.items()}
    if count:
        out["n"] = (closed,)
    return out


def metric_terms(metric: Metric, shape: Shape) -> dict[str, tuple[Term, ...]]:
    """The per-variant sums a metric needs, by sufficient-statistic field name (and ``n``, the
    units whose window has closed, for a windowed metric)."""
    if isinstance(metric, RatioMetric):
        num, den = metric.numerator, metric.denominator
        x = shape.term(value_key(num.event, num.value), metric, "numerator")
        y = shape.term(value_key(den.event, den.value), metric, "denominator")
        terms = {"num": (x,), "den": (y,), "num_sq": (x, x), "den_sq": (y, y), "num_den": (x, y)}
    else:
        v = shape.term(metric_key(metric), metric, "value")
        # A 0/1 value is its own square.
        terms = {"total": (v,), "total_sq": (v,) if v[0][1] == "any" else (v, v)}
    return restricted(terms, shape.closed(metric), count=True)


def cuped_eligible(metric: Metric) -> bool:
    """CUPED needs a pre-period value of an event the metric counts (impressions have no
    history): a mean or proportion of another event, a ratio with one such side."""
    if isinstance(metric, RatioMetric):
        return metric.numerator.event != IMPRESSION or metric.denominator.event != IMPRESSION
    return metric.event != IMPRESSION


def pre_value(term: Term) -> Term:
    """The pre-period value of a (not windowed) per-unit value, with the same cap."""
    (event, how), cap = term
    return ((PRE + event, how), cap)


def covariate_terms(metric: Metric, shape: Shape) -> dict[str, tuple[Term, ...]]:
    """The extra per-variant sums CUPED needs (covariate x = same aggregate, pre-period,
    capped at the metric's threshold; over the closed-window units of a windowed metric)."""
    if not cuped_eligible(metric):
        return {}
    if isinstance(metric, RatioMetric):
        return restricted(ratio_covariate_terms(metric, shape), shape.closed(metric), count=False)
    key = metric_key(metric)
    y = shape.term(key, metric, "value")
    x: Term = ((PRE + key[0], key[1]), y[1])
    terms = {"x": (x,), "x_sq": (x,) if x[0][1] == "any" else (x, x), "xy": (x, y)}
    return restricted(terms, shape.closed(metric), count=False)


def ratio_covariate_terms(metric: RatioMetric, shape: Shape) -> dict[str, tuple[Term, ...]]:
    """A ratio's CUPED sums: its pre-period numerator ``a`` and denominator ``b`` (each only
    when it is not impressions), their squares and products with ``x``, ``y`` and each other."""
    num, den = metric.numerator, metric.denominator
    num_key, den_key = value_key(num.event, num.value), value_key(den.event, den.value)
    x = shape.term(num_key, metric, "numerator")
    y = shape.term(den_key, metric, "denominator")
    covariates = {}
    if num.event != IMPRESSION:
        covariates["a"] = pre_value((num_key, x[1]))
    if den.event != IMPRESSION:
        covariates["b"] = pre_value((den_key, y[1]))
    terms: dict[str, tuple[Term, ...]] = {}
    for name, c in covariates.items():
        square = (c,) if c[0][1] == "any" else (c, c)
        terms |= {name: (c,), name * 2: square, f"x{name}": (x, c), f"y{name}": (y, c)}
    if len(covariates) == 2:
        terms["ab"] = (covariates["a"], covariates["b"])
    return terms


def plan_sums(
    metrics: Sequence[Metric], covariates: Sequence[Metric] = (), shape: Shape = NO_SHAPE
) -> dict[tuple[Term, ...], str]:
    """Product of (capped, windowed) per-unit values -> label of its per-variant SUM."""
    products = [p for metric in metrics for p in metric_terms(metric, shape).values()]
    products += [p for metric in covariates for p in covariate_terms(metric, shape).values()]
    sums: dict[tuple[Term, ...], str] = {}
    for product in products:
        sums.setdefault(tuple(sorted(product)), f"s{len(sums)}")
    return sums


def statistics_of(metric: Metric, n: int, sums: Mapping[str, float]) -> MeanStats | RatioStats:
    """A metric's sufficient statistics from its sums (a windowed metric brings its own n)."""
    fields = dict(sums)
    count = round(fields.pop("n")) if "n" in fields else n
    kind = RatioStats if isinstance(metric, RatioMetric) else MeanStats
    return kind(n=count, **fields)


def capped(values: UnitValues, term: Term) -> ColumnElement[float]:
    """A per-unit value, cut at its threshold: ``CASE WHEN v > t THEN t ELSE v END``."""
    key, threshold = term
    value = values.value(key)
    if math.isinf(threshold):
        return value
    cut = float_constant(threshold)
    return case((value > cut, cut), else_=value)


def product_of(values: UnitValues, factors: Sequence[Term]) -> ColumnElement[float]:
    """The product of (capped) per-unit values (a square when a factor repeats)."""
    out = capped(values, factors[0])
    for factor in factors[1:]:
        out = out * capped(values, factor)
    return out
