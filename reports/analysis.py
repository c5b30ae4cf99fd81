"""Experiment analysis: per-unit metrics aggregated in SQL, then per-variant statistics.

Definitions (the platform's, shared by the CLI, the HTML report and the HTTP API)
------------------------------------------------------------------------------
Units
    The units of an experiment are the distinct ``exposures.unit_id`` of that
    experiment. A unit's variant is the variant of its exposures; a unit exposed
    to more than one variant is excluded from every metric and counted in
    ``excluded_units["multiple_variants"]``. A unit seen only in variants that
    are not in the experiment's config is excluded too and named in
    ``warnings``. A unit's first exposure time is ``MIN(exposures.ts)`` over its
    exposures in this experiment.
Per-unit aggregate of an event type (``EventCount(event, value)``)
    Over the unit's events of this experiment (``events.experiment_id``) with
    ``ts >= first exposure time``: ``count`` is the number of events, ``sum`` is
    the sum of ``events.value`` (NULL counts as 0). Units without events have 0.
    ``impression`` is special: impressions are not stored as events, a unit's
    impressions are ``SUM(exposures.slate_size)`` over its exposures, for both
    ``count`` and ``sum`` (an impression carries no value of its own).
Metrics
    *proportion*: per unit 1 if the count of the event is > 0 else 0;
    *mean*: per unit the count or the sum; *ratio*: per unit a numerator and a
    denominator aggregate, estimated as the ratio of the totals with the delta
    method. The unit of analysis is always the unit, never the impression.
Comparisons
    Every non-control variant against ``config.control_key`` (Welch t-test for
    proportion and mean metrics, delta-method z-test for ratios, see
    `reports.stats`); ``significant`` means ``p_value < alpha``.
Sample ratio mismatch (SRM)
    Chi-square goodness-of-fit of the units per variant against the configured
    weights, flagged at ``p < 0.001``. Variants with weight 0 are left out of
    the test; any unit in one of them is a mismatch by itself.
Ground truth
    ``simulation_runs.ground_truth["metrics"][metric][variant]`` of the
    experiment's latest simulation run, when there is one.

Everything per unit stays in the database: one SQL statement (see
`build_aggregate_query`) groups the exposures by unit, groups the events by
unit with conditional aggregates (``SUM(CASE WHEN type = :t ...)``), joins the
two and sums per variant into the sufficient statistics (``n``, sums, sums of
squares and cross-products). Python only ever sees one row per variant.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    CTE,
    ColumnElement,
    CompoundSelect,
    Connection,
    Engine,
    Float,
    Select,
    case,
    cast,
    distinct,
    func,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from abplatform.config.models import (
    ExperimentConfig,
    MeanMetric,
    ProportionMetric,
    RatioMetric,
)
from abplatform.errors import AbplatformError
from abplatform.storage import models as m
from abplatform.storage.db import transaction
from abplatform.storage.repository import get_experiment, latest_simulation
from reports.bandit import bandit_analysis, is_bandit
from reports.bayes import beta_binomial, normal_approximation
from reports.cuped import CovariateSums, CupedResult, cuped_adjust
from reports.multiple import adjust_pvalues
from reports.power import mde_at
from reports.sequential import always_valid
from reports.stats import Comparison, MeanStats, RatioStats, compare, estimate, srm_test

__all__ = [
    "IMPRESSION",
    "AnalysisResult",
    "ComparisonResult",
    "ExperimentAggregates",
    "MetricResult",
    "SrmSummary",
    "VariantEstimate",
    "aggregate_experiment",
    "analyze",
    "build_aggregate_query",
]

IMPRESSION = "impression"
"""The event type counted from ``exposures.slate_size`` instead of the events table."""

MetricType = Literal["proportion", "mean", "ratio"]
Aggregate = Literal["count", "sum", "any"]
"""How a unit's events of one type become a number: count, sum of values, or 0/1 'any'."""

_EXPOSURES = m.Exposure.__table__
_EVENTS = m.Event.__table__
_INTERACTIONS = m.Interaction.__table__
_PRE = "pre:"
"""Prefix of an event key that means the unit's pre-experiment history (CUPED covariate)."""


# ---------------------------------------------------------------------------
# Result objects
# ---------------------------------------------------------------------------


def _clean_float(value: float | None) -> float | None:
    """``value`` as a plain float, or None when missing or not finite (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _clean_pair(pair: tuple[float, float] | None) -> list[float] | None:
    if pair is None:
        return None
    lo, hi = _clean_float(pair[0]), _clean_float(pair[1])
    return None if lo is None or hi is None else [lo, hi]


@dataclass(frozen=True)
class VariantEstimate:
    """One variant's estimate of a metric: mean (or ratio of totals) with its CI."""

    variant: str
    units: int
    mean: float | None
    ci: tuple[float, float] | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        return {
            "variant": self.variant,
            "units": self.units,
            "mean": _clean_float(self.mean),
            "ci": _clean_pair(self.ci),
            "note": self.note,
        }


Decision = Literal["significant win", "significant loss", "inconclusive", "keep running"]


def _clean_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, tuple):
            out[key] = _clean_pair(value)
        elif isinstance(value, float):
            out[key] = _clean_float(value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class CupedInfo:
    """Whether CUPED was applied to a comparison and how much variance it removed."""

    applied: bool
    variance_reduction: float
    theta: float
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "applied": self.applied,
            "variance_reduction": _clean_float(self.variance_reduction),
            "theta": _clean_float(self.theta),
            "note": self.note,
        }


@dataclass(frozen=True)
class ComparisonResult:
    """A non-control variant against the control on one metric."""

    variant: str
    baseline: str
    diff: float | None
    diff_ci: tuple[float, float] | None
    rel_lift: float | None
    rel_lift_ci: tuple[float, float] | None
    p_value: float | None
    significant: bool
    note: str | None
    p_value_adjusted: float | None = None
    """P-value behind the decision (always-valid when sequential), corrected for multiplicity."""
    decision: Decision = "keep running"
    chance_to_beat_control: float | None = None
    bayes: Mapping[str, Any] | None = None
    cuped: CupedInfo | None = None
    sequential: Mapping[str, Any] | None = None
    mde: float | None = None
    """Absolute difference detectable with the configured power at the current size."""
    mde_relative: float | None = None
    guardrail: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        cuped = self.cuped or CupedInfo(False, 0.0, 0.0, "not requested")
        return {
            "variant": self.variant,
            "baseline": self.baseline,
            "diff": _clean_float(self.diff),
            "diff_ci": _clean_pair(self.diff_ci),
            "rel_lift": _clean_float(self.rel_lift),
            "rel_lift_ci": _clean_pair(self.rel_lift_ci),
            "p_value": _clean_float(self.p_value),
            "significant": self.significant,
            "note": self.note,
            "p_value_adjusted": _clean_float(self.p_value_adjusted),
            "decision": self.decision,
            "chance_to_beat_control": _clean_float(self.chance_to_beat_control),
            "bayes": None if self.bayes is None else _clean_mapping(self.bayes),
            "cuped": cuped.to_dict(),
            "sequential": None if self.sequential is None else _clean_mapping(self.sequential),
            "mde": _clean_float(self.mde),
            "mde_relative": _clean_float(self.mde_relative),
            "guardrail": self.guardrail,
        }


@dataclass(frozen=True)
class MetricResult:
    """Per-variant estimates, comparisons with the control and ground truth of one metric."""

    metric: str
    type: MetricType
    variants: tuple[VariantEstimate, ...]
    comparisons: tuple[ComparisonResult, ...]
    ground_truth: Mapping[str, float] | None
    guardrail: bool = False
    cuped: CupedInfo | None = None
    """Pooled over variants; ``variance_reduction`` is 1 - var(adjusted) / var(raw)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        truth = None
        if self.ground_truth is not None:
            truth = {key: _clean_float(value) for key, value in self.ground_truth.items()}
        return {
            "metric": self.metric,
            "type": self.type,
            "variants": [v.to_dict() for v in self.variants],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "ground_truth": truth,
            "guardrail": self.guardrail,
            "cuped": (self.cuped or CupedInfo(False, 0.0, 0.0, "not requested")).to_dict(),
        }


@dataclass(frozen=True)
class SrmSummary:
    """Sample-ratio-mismatch check of the units per variant against the configured weights."""

    p_value: float
    chi2: float
    mismatch: bool
    observed: Mapping[str, int]
    expected: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        return {
            "p_value": _clean_float(self.p_value),
            "chi2": _clean_float(self.chi2),
            "mismatch": self.mismatch,
            "observed": dict(self.observed),
            "expected": {key: _clean_float(value) for key, value in self.expected.items()},
        }


@dataclass(frozen=True)
class AnalysisResult:
    """Everything `analyze` found out about an experiment; `to_dict` is the JSON contract."""

    experiment: str
    description: str
    control: str
    alpha: float
    units: Mapping[str, int]
    excluded_units: Mapping[str, int]
    srm: SrmSummary
    metrics: tuple[MetricResult, ...]
    run: Mapping[str, Any] | None
    warnings: tuple[str, ...] = ()
    correction: str = "none"
    sequential: bool = False
    cuped: bool = False
    power: float = 0.8
    guardrails: tuple[str, ...] = ()
    ranking: Mapping[str, Mapping[str, Any]] | None = None
    bandit: Mapping[str, Any] | None = None
    """Thompson-sampling experiments only: allocation, P(best), IPW estimates, regret."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of an analysis (floats or null; never NaN or infinity)."""
        return {
            "experiment": self.experiment,
            "description": self.description,
            "control": self.control,
            "alpha": self.alpha,
            "units": dict(self.units),
            "excluded_units": dict(self.excluded_units),
            "srm": self.srm.to_dict(),
            "metrics": [metric.to_dict() for metric in self.metrics],
            "run": None if self.run is None else dict(self.run),
            "warnings": list(self.warnings),
            "correction": self.correction,
            "sequential": self.sequential,
            "cuped": self.cuped,
            "mde": {
                "power": self.power,
                "alpha": self.alpha,
                "meaning": "per comparison, the absolute (mde) and relative (mde_relative) "
                "difference detectable with this power at the current number of units",
            },
            "guardrails": list(self.guardrails),
            "ranking": None
            if self.ranking is None
            else {variant: dict(values) for variant, values in self.ranking.items()},
            "bandit": None if self.bandit is None else dict(self.bandit),
        }


@dataclass(frozen=True)
class ExperimentAggregates:
    """What the SQL aggregation returns: units per variant and each metric's statistics.

    Attributes
    ----------
    units : mapping of str to int
        Analysed units per configured variant, in config order (0 when none).
    multiple_variants : int
        Units exposed to more than one variant (excluded everywhere).
    unknown_units : int
        Units whose exposures are all in variants missing from the config
        (excluded everywhere).
    unknown_variants : mapping of str to int
        Those variants with their numbers of units.
    stats : mapping of str to mapping of str to MeanStats or RatioStats
        ``stats[metric_name][variant]`` for every configured variant.
    """

    units: Mapping[str, int]
    multiple_variants: int = 0
    unknown_units: int = 0
    unknown_variants: Mapping[str, int] = field(default_factory=dict)
    stats: Mapping[str, Mapping[str, MeanStats | RatioStats]] = field(default_factory=dict)
    covariates: Mapping[str, Mapping[str, CovariateSums]] = field(default_factory=dict)
    """``covariates[metric_name][variant]``: CUPED sums of the metrics that asked for them."""

    @property
    def total_exposed(self) -> int:
        """All units with at least one exposure, excluded ones included."""
        return sum(self.units.values()) + self.multiple_variants + self.unknown_units


# ---------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------

_UNKNOWN_CODE = -1
"""Variant code of exposures in a variant that is not in the config."""
_MULTIPLE_CODE = -2
"""Row code of the units exposed to more than one variant."""


def _float(value: float) -> ColumnElement[float]:
    # A typed constant: PostgreSQL reads 1.0 as numeric, and SUM(numeric) is slow and Decimal.
    return cast(literal_column(repr(float(value))), Float)


@dataclass(frozen=True)
class _Plan:
    """Column labels of the aggregation query and how metrics map onto them."""

    event_columns: dict[tuple[str, Aggregate], str]
    """(event type, count|sum) -> label of the per-unit column in the unit_events CTE."""
    pre_columns: dict[tuple[str, Aggregate], str]
    """(event type, count|sum) -> label of the per-unit column in the pre_events CTE."""
    sums: dict[tuple[tuple[str, Aggregate], ...], str]
    """Product of 1 or 2 per-unit values -> label of its per-variant SUM."""


def _value_key(event: str, how: Literal["count", "sum"]) -> tuple[str, Aggregate]:
    # Impressions carry no value: their "sum" is their count.
    return (event, "count") if event == IMPRESSION else (event, how)


def _metric_terms(
    metric: ProportionMetric | MeanMetric | RatioMetric,
) -> dict[str, tuple[tuple[str, Aggregate], ...]]:
    """The per-variant sums a metric needs, by sufficient-statistic field name."""
    if isinstance(metric, RatioMetric):
        x = _value_key(metric.numerator.event, metric.numerator.value)
        y = _value_key(metric.denominator.event, metric.denominator.value)
        return {"num": (x,), "den": (y,), "num_sq": (x, x), "den_sq": (y, y), "num_den": (x, y)}
    if isinstance(metric, ProportionMetric):
        flag: tuple[str, Aggregate] = (metric.event, "any")
        # A 0/1 value is its own square.
        return {"total": (flag,), "total_sq": (flag,)}
    v = _value_key(metric.event, metric.value)
    return {"total": (v,), "total_sq": (v, v)}


def cuped_eligible(metric: ProportionMetric | MeanMetric | RatioMetric) -> bool:
    """CUPED needs a pre-period value of the same event: not ratios, not impressions."""
    return not isinstance(metric, RatioMetric) and metric.event != IMPRESSION


def _covariate_terms(
    metric: ProportionMetric | MeanMetric | RatioMetric,
) -> dict[str, tuple[tuple[str, Aggregate], ...]]:
    """The extra per-variant sums CUPED needs (covariate x = same aggregate, pre-period)."""
    if not cuped_eligible(metric):
        return {}
    assert not isinstance(metric, RatioMetric)
    if isinstance(metric, ProportionMetric):
        y: tuple[str, Aggregate] = (metric.event, "any")
        x: tuple[str, Aggregate] = (_PRE + metric.event, "any")
        return {"x": (x,), "x_sq": (x,), "xy": (x, y)}
    y = _value_key(metric.event, metric.value)
    x = (_PRE + y[0], y[1])
    return {"x": (x,), "x_sq": (x, x), "xy": (x, y)}


def _plan(
    metrics: Sequence[ProportionMetric | MeanMetric | RatioMetric],
    covariates: Sequence[ProportionMetric | MeanMetric | RatioMetric] = (),
) -> _Plan:
    event_columns: dict[tuple[str, Aggregate], str] = {}
    pre_columns: dict[tuple[str, Aggregate], str] = {}
    sums: dict[tuple[tuple[str, Aggregate], ...], str] = {}
    products = [p for metric in metrics for p in _metric_terms(metric).values()]
    products += [p for metric in covariates for p in _covariate_terms(metric).values()]
    for product in products:
        key = tuple(sorted(product))
        if key not in sums:
            sums[key] = f"s{len(sums)}"
        for event, how in product:
            if event == IMPRESSION:
                continue
            # "any" (proportions) is derived from the count column.
            agg: Aggregate = "count" if how == "any" else how
            if event.startswith(_PRE):
                if (event[len(_PRE) :], agg) not in pre_columns:
                    pre_columns[(event[len(_PRE) :], agg)] = f"p{len(pre_columns)}"
            elif (event, agg) not in event_columns:
                event_columns[(event, agg)] = f"e{len(event_columns)}"
    return _Plan(event_columns, pre_columns, sums)


def build_aggregate_query(
    experiment_id: int,
    variants: Sequence[str],
    metrics: Sequence[ProportionMetric | MeanMetric | RatioMetric],
    covariates: Sequence[ProportionMetric | MeanMetric | RatioMetric] = (),
    catalog: str | None = None,
    pre_period: tuple[datetime, datetime] | None = None,
) -> CompoundSelect[*tuple[Any, ...]]:
    """The one SQL statement that turns exposures and events into per-variant sums.

    Parameters
    ----------
    experiment_id : int
        Primary key of the experiment (a bound parameter, as are variant keys
        and event types).
    variants : sequence of str
        The configured variant keys; row ``code`` ``i`` is ``variants[i]``.
    metrics : sequence of metric configs
        The metrics whose sufficient statistics are needed.
    covariates : sequence of metric configs, optional
        Metrics that also need CUPED sums (``x``, ``x*x``, ``x*y``), where ``x``
        is the unit's same aggregate of the same event type in the
        ``interactions`` history of ``catalog`` (``user_id = unit_id``) strictly
        before its first exposure; units without history have ``x = 0``.
    catalog : str, optional
        The experiment's catalogue; required with ``covariates``.

    Returns
    -------
    CompoundSelect
        Rows ``(code, n, s0, s1, ...)``: one per configured variant (``code``
        0, 1, ...), one with code -1 counting the units seen only in variants
        missing from the config and one with code -2 counting the units exposed
        to several variants (their sums are NULL). ``s*`` are floats, NULL when
        no unit contributed.

    Notes
    -----
    Shape of the statement (``c(variant)`` maps a variant key to its index in
    `variants`, -1 when unknown)::

        WITH units AS (        -- one row per unit, via ix_exposures_experiment_unit
          SELECT unit_id, MIN(c(variant)) AS code, MAX(c(variant)) AS code_max,
                 CAST(SUM(slate_size) AS FLOAT) AS impressions, MIN(ts) AS first_ts
          FROM exposures WHERE experiment_id = :id GROUP BY unit_id),
        unit_events AS (       -- one row per unit with events, via ix_events_experiment_unit
          SELECT unit_id, SUM(CASE WHEN type = :t0 THEN 1.0 ELSE 0.0 END) AS e0, ...
          FROM events ev
          WHERE experiment_id = :id AND type IN (:t0, ...)
            AND EXISTS (SELECT 1 FROM exposures x  -- i.e. ts >= first exposure
                        WHERE x.experiment_id = :id AND x.unit_id = ev.unit_id
                          AND x.ts <= ev.ts)
          GROUP BY unit_id),
        pre_events AS (        -- only with covariates: CUPED history before first exposure
          SELECT user_id AS unit_id, SUM(CASE WHEN type = :t0 THEN 1.0 ELSE 0.0 END) AS p0, ...
          FROM interactions i
          WHERE catalog = :catalog AND type IN (:t0, ...)
            AND ts < (SELECT first_ts FROM units WHERE units.unit_id = i.user_id)
          GROUP BY user_id)
        SELECT 0, COUNT(*), SUM(x), SUM(x * x), SUM(x * y), ...
          FROM units LEFT JOIN unit_events USING (unit_id) [LEFT JOIN pre_events USING (unit_id)]
          WHERE code = 0 AND code_max = 0
        UNION ALL ... one branch per variant ...
        UNION ALL SELECT -1, COUNT(*), NULL, ... WHERE code = -1 AND code_max = -1
        UNION ALL SELECT -2, COUNT(*), NULL, ... WHERE code <> code_max

    Why this shape: SQLite has no hash aggregation, so ``GROUP BY variant``
    over a million units sorts them; one filtered scan of the materialised
    ``units`` per variant is cheaper. Integer variant codes make ``MIN``/``MAX``
    cheaper than on strings, and the ``EXISTS`` probe spares joining every
    event to the million-row ``units``. Units without events get NULL from the
    left join, which ``SUM`` skips: the same as adding 0. Values are floats
    before they are squared or summed, so integers cannot overflow and
    PostgreSQL returns floats, not numerics.
    """
    plan = _plan(metrics, covariates)
    if plan.pre_columns and catalog is None:
        raise ValueError("CUPED covariates need the experiment's catalog")
    code_of_variant = case(
        {key: literal_column(str(i)) for i, key in enumerate(variants)},
        value=_EXPOSURES.c.variant,
        else_=literal_column(str(_UNKNOWN_CODE)),
    )
    units = (
        select(
            _EXPOSURES.c.unit_id.label("unit_id"),
            func.min(code_of_variant).label("code"),
            func.max(code_of_variant).label("code_max"),
            cast(func.sum(_EXPOSURES.c.slate_size), Float).label("impressions"),
            func.min(_EXPOSURES.c.ts).label("first_ts"),
        )
        .where(_EXPOSURES.c.experiment_id == experiment_id)
        .group_by(_EXPOSURES.c.unit_id)
        .cte("units")
    )

    unit_events: CTE | None = None
    if plan.event_columns:
        earlier = _EXPOSURES.alias("earlier")
        exposed_before = (
            select(literal_column("1"))
            .where(
                earlier.c.experiment_id == experiment_id,
                earlier.c.unit_id == _EVENTS.c.unit_id,
                earlier.c.ts <= _EVENTS.c.ts,
            )
            .exists()
        )
        event_aggregates = []
        for (event, how), label in plan.event_columns.items():
            amount = _float(1.0) if how == "count" else func.coalesce(_EVENTS.c.value, _float(0.0))
            event_aggregates.append(
                func.sum(case((_EVENTS.c.type == event, amount), else_=_float(0.0))).label(label)
            )
        unit_events = (
            select(_EVENTS.c.unit_id.label("unit_id"), *event_aggregates)
            .where(
                _EVENTS.c.experiment_id == experiment_id,
                _EVENTS.c.type.in_(sorted({event for event, _ in plan.event_columns})),
                exposed_before,
            )
            .group_by(_EVENTS.c.unit_id)
            .cte("unit_events")
        )

    pre_events: CTE | None = None
    if plan.pre_columns:
        pre_aggregates = []
        for (event, how), label in plan.pre_columns.items():
            amount = (
                _float(1.0) if how == "count" else func.coalesce(_INTERACTIONS.c.value, _float(0.0))
            )
            pre_aggregates.append(
                func.sum(case((_INTERACTIONS.c.type == event, amount), else_=_float(0.0))).label(
                    label
                )
            )
        # The unit's first exposure, looked up per history row in the materialised units
        # CTE; NULL for users never exposed, whose rows then drop out. Joining units
        # instead lets SQLite scan the history once per unit.
        first_exposure = (
            select(units.c.first_ts)
            .where(units.c.unit_id == _INTERACTIONS.c.user_id)
            .scalar_subquery()
        )
        pre_events = (
            select(_INTERACTIONS.c.user_id.label("unit_id"), *pre_aggregates)
            .where(
                _INTERACTIONS.c.catalog == catalog,
                _INTERACTIONS.c.type.in_(sorted({event for event, _ in plan.pre_columns})),
                _INTERACTIONS.c.ts < first_exposure,
            )
            .group_by(_INTERACTIONS.c.user_id)
            .cte("pre_events")
        )
        if pre_period is not None:
            pre_events = _windowed_pre_events(
                plan.pre_columns, units, experiment_id, catalog, pre_period
            )

    def per_unit(key: tuple[str, Aggregate]) -> ColumnElement[float]:
        event, how = key
        if event == IMPRESSION:
            value: ColumnElement[float] = units.c.impressions
        elif event.startswith(_PRE):
            assert pre_events is not None
            label = plan.pre_columns[(event[len(_PRE) :], "count" if how == "any" else how)]
            # No history: NULL from the left join, i.e. 0 (SUM skips it; "any" gives 0).
            value = pre_events.c[label]
        else:
            assert unit_events is not None
            value = unit_events.c[plan.event_columns[(event, "count" if how == "any" else how)]]
        if how == "any":
            # NULL (no events) > 0 is not true: the ELSE branch gives 0.
            return case((value > _float(0.0), _float(1.0)), else_=_float(0.0))
        return value

    def product(factors: tuple[tuple[str, Aggregate], ...]) -> ColumnElement[float]:
        term = per_unit(factors[0])
        for factor in factors[1:]:
            term = term * per_unit(factor)
        return term

    joined: Any = units
    if unit_events is not None:
        joined = joined.outerjoin(unit_events, unit_events.c.unit_id == units.c.unit_id)
    if pre_events is not None:
        joined = joined.outerjoin(pre_events, pre_events.c.unit_id == units.c.unit_id)
    sums = [func.sum(product(factors)).label(label) for factors, label in plan.sums.items()]
    branches: list[Select[*tuple[Any, ...]]] = []
    for i in range(len(variants)):
        code: ColumnElement[int] = literal_column(str(i))
        branches.append(
            select(code.label("code"), func.count().label("n"), *sums)
            .select_from(joined)
            .where(units.c.code == code, units.c.code_max == code)
        )
    no_sums = [cast(null(), Float).label(label) for label in plan.sums.values()]
    unknown: ColumnElement[int] = literal_column(str(_UNKNOWN_CODE))
    branches.append(
        select(unknown.label("code"), func.count().label("n"), *no_sums)
        .select_from(units)
        .where(units.c.code == unknown, units.c.code_max == unknown)
    )
    branches.append(
        select(literal_column(str(_MULTIPLE_CODE)).label("code"), func.count().label("n"), *no_sums)
        .select_from(units)
        .where(units.c.code != units.c.code_max)
    )
    return union_all(*branches)


def _windowed_pre_events(
    pre_columns: Mapping[tuple[str, Aggregate], str],
    units: CTE,
    experiment_id: int,
    catalog: str | None,
    window: tuple[datetime, datetime],
) -> CTE:
    """CUPED history in a configured window: catalogue history plus the experiment's events.

    Ingested logs may carry events from before a unit's first exposure; with
    `analysis.pre_period` those count as the unit's pre-period value, together with
    the catalogue's interactions, if both fall in [start, end) and before the unit's
    first exposure.
    """
    start, end = window
    types = sorted({event for event, _ in pre_columns})
    history = union_all(
        select(
            _INTERACTIONS.c.user_id.label("unit_id"),
            _INTERACTIONS.c.type.label("type"),
            _INTERACTIONS.c.value.label("value"),
            _INTERACTIONS.c.ts.label("ts"),
        ).where(
            _INTERACTIONS.c.catalog == catalog,
            _INTERACTIONS.c.type.in_(types),
            _INTERACTIONS.c.ts >= start,
            _INTERACTIONS.c.ts < end,
        ),
        select(
            _EVENTS.c.unit_id.label("unit_id"),
            _EVENTS.c.type.label("type"),
            _EVENTS.c.value.label("value"),
            _EVENTS.c.ts.label("ts"),
        ).where(
            _EVENTS.c.experiment_id == experiment_id,
            _EVENTS.c.type.in_(types),
            _EVENTS.c.ts >= start,
            _EVENTS.c.ts < end,
        ),
    ).subquery("history")
    aggregates = []
    for (event, how), label in pre_columns.items():
        amount = _float(1.0) if how == "count" else func.coalesce(history.c.value, _float(0.0))
        aggregates.append(
            func.sum(case((history.c.type == event, amount), else_=_float(0.0))).label(label)
        )
    first_exposure = (
        select(units.c.first_ts).where(units.c.unit_id == history.c.unit_id).scalar_subquery()
    )
    return (
        select(history.c.unit_id.label("unit_id"), *aggregates)
        .where(history.c.ts < first_exposure)
        .group_by(history.c.unit_id)
        .cte("pre_events")
    )


def _as_float(value: Any) -> float:
    # SUM over no values is NULL; be lenient about Decimal from other drivers.
    return 0.0 if value is None else float(value)


def _unknown_variants(
    connection: Connection | Session, experiment_id: int, variants: Sequence[str]
) -> dict[str, int]:
    """Units per variant key that is not in the config (only run when there are some)."""
    query = (
        select(_EXPOSURES.c.variant, func.count(distinct(_EXPOSURES.c.unit_id)))
        .where(
            _EXPOSURES.c.experiment_id == experiment_id,
            _EXPOSURES.c.variant.not_in(list(variants)),
        )
        .group_by(_EXPOSURES.c.variant)
        .order_by(_EXPOSURES.c.variant)
    )
    return {str(variant): int(n) for variant, n in connection.execute(query).all()}


def aggregate_experiment(
    connection: Connection | Session,
    experiment_id: int,
    variants: Sequence[str],
    metrics: Sequence[ProportionMetric | MeanMetric | RatioMetric],
    covariates: Sequence[ProportionMetric | MeanMetric | RatioMetric] = (),
    catalog: str | None = None,
    pre_period: tuple[datetime, datetime] | None = None,
) -> ExperimentAggregates:
    """Run the aggregation query and build each metric's per-variant statistics.

    Parameters
    ----------
    connection : Connection or Session
        Where to run the query.
    experiment_id : int
        Primary key of the experiment.
    variants : sequence of str
        The configured variant keys.
    metrics : sequence of metric configs
        The metrics to aggregate.
    covariates, catalog
        Metrics that also get CUPED covariate sums, from the history of
        ``catalog`` (see `build_aggregate_query`); ratio and impression
        metrics are skipped.

    Returns
    -------
    ExperimentAggregates
        Units per configured variant, the excluded units and, for every metric,
        `MeanStats` (proportion, mean) or `RatioStats` (ratio) per variant.
        ``total_exposed == 0`` when the experiment has no exposures.
    """
    variants = list(variants)
    covariates = [metric for metric in covariates if cuped_eligible(metric)]
    plan = _plan(metrics, covariates)
    query = build_aggregate_query(
        experiment_id, variants, metrics, covariates, catalog, pre_period=pre_period
    )
    rows = connection.execute(query).mappings()
    by_code = {int(row["code"]): row for row in rows}
    units = {key: int(by_code[i]["n"]) for i, key in enumerate(variants)}
    sums = {
        key: {label: _as_float(by_code[i][label]) for label in plan.sums.values()}
        for i, key in enumerate(variants)
    }
    unknown_units = int(by_code[_UNKNOWN_CODE]["n"])
    unknown: dict[str, int] = {}
    if unknown_units:
        unknown = _unknown_variants(connection, experiment_id, variants)
    stats: dict[str, dict[str, MeanStats | RatioStats]] = {}
    for metric in metrics:
        fields = {
            name: plan.sums[tuple(sorted(factors))]
            for name, factors in _metric_terms(metric).items()
        }
        per_variant: dict[str, MeanStats | RatioStats] = {}
        for key, n in units.items():
            values = {name: sums[key][label] for name, label in fields.items()}
            if isinstance(metric, RatioMetric):
                per_variant[key] = RatioStats(n=n, **values)
            else:
                per_variant[key] = MeanStats(n=n, **values)
        stats[metric.name] = per_variant
    covariate_sums: dict[str, dict[str, CovariateSums]] = {}
    for metric in covariates:
        labels = {
            name: plan.sums[tuple(sorted(factors))]
            for name, factors in _covariate_terms(metric).items()
        }
        covariate_sums[metric.name] = {
            key: CovariateSums(**{name: sums[key][label] for name, label in labels.items()})
            for key in units
        }
    return ExperimentAggregates(
        units=units,
        multiple_variants=int(by_code[_MULTIPLE_CODE]["n"]),
        unknown_units=unknown_units,
        unknown_variants=unknown,
        stats=stats,
        covariates=covariate_sums,
    )


# ---------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------


def _srm(config: ExperimentConfig, units: Mapping[str, int]) -> tuple[SrmSummary, list[str]]:
    """SRM test over the variants with positive weight; units in a weight-0 variant are a mismatch.

    The p-value and chi-square are those of the variants with positive weight.
    With fewer than two of them there is nothing to test (p = 1) and a warning
    says so.
    """
    warnings: list[str] = []
    observed = {variant.key: units.get(variant.key, 0) for variant in config.variants}
    tested = [variant for variant in config.variants if variant.weight > 0]
    expected = dict.fromkeys(observed, 0.0)
    if len(tested) >= 2:
        result = srm_test(
            [observed[variant.key] for variant in tested], [variant.weight for variant in tested]
        )
        expected.update({v.key: e for v, e in zip(tested, result.expected, strict=True)})
        p_value, chi2, mismatch = result.p_value, result.chi2, result.mismatch
    else:
        p_value, chi2, mismatch = 1.0, 0.0, False
        if len(tested) == 1:
            expected[tested[0].key] = float(sum(observed.values()))
        warnings.append("the SRM check needs at least two variants with traffic; skipped")
    unplanned = {
        variant.key: observed[variant.key]
        for variant in config.variants
        if variant.weight == 0 and observed[variant.key] > 0
    }
    if unplanned:
        mismatch = True
        listed = ", ".join(f"{key} ({_units(n)})" for key, n in unplanned.items())
        warnings.append(f"sample ratio mismatch: units in variants with weight 0: {listed}")
    return SrmSummary(p_value, chi2, mismatch, observed, expected), warnings


def _units(n: int) -> str:
    return f"{n:,} unit" if n == 1 else f"{n:,} units"


def _ground_truth(document: Any, metric: str) -> dict[str, float] | None:
    """``document["metrics"][metric]`` as {variant: float}, or None when absent."""
    if not isinstance(document, Mapping):
        return None
    metrics = document.get("metrics")
    if not isinstance(metrics, Mapping):
        return None
    values = metrics.get(metric)
    if not isinstance(values, Mapping):
        return None
    truth = {
        str(variant): float(value)
        for variant, value in values.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }
    return truth or None


def _metric_type(metric: ProportionMetric | MeanMetric | RatioMetric) -> MetricType:
    return metric.type


@dataclass(frozen=True)
class _Options:
    """The analysis settings in force (from the config's ``analysis:`` block)."""

    alpha: float
    cuped: bool
    sequential: bool
    sequential_tuning: int
    correction: str
    power: float
    guardrails: frozenset[str]


def _cuped_info(result: CupedResult) -> CupedInfo:
    return CupedInfo(result.applied, result.variance_reduction, result.theta, result.note)


def _comparison_variance_reduction(raw: Comparison, adjusted: Comparison) -> float:
    """``1 - Var(adjusted diff) / Var(raw diff)`` of one comparison (0 when undefined)."""
    if raw.se is None or adjusted.se is None or raw.se == 0.0:
        return 0.0
    return 1.0 - (adjusted.se / raw.se) ** 2


def _bayes(
    metric: ProportionMetric | MeanMetric | RatioMetric,
    treatment: MeanStats | RatioStats,
    baseline: MeanStats | RatioStats,
    cmp: Comparison,
    alpha: float,
) -> dict[str, Any] | None:
    if isinstance(metric, ProportionMetric) and isinstance(treatment, MeanStats):
        assert isinstance(baseline, MeanStats)
        if treatment.n == 0 or baseline.n == 0:
            return None
        # Per-unit 0/1 flags: the totals are the numbers of converted units.
        result = beta_binomial(
            round(treatment.total), treatment.n, round(baseline.total), baseline.n, alpha
        )
    else:
        if cmp.diff is None or cmp.se is None:
            return None
        result = normal_approximation(cmp.diff, cmp.se, cmp.rel_lift, cmp.rel_lift_se, alpha)
    return {
        "method": result.method,
        "chance_to_beat_control": result.chance_to_beat_control,
        "lift_mean": result.lift_mean,
        "lift_interval": result.lift_interval,
    }


def _metric_result(
    metric: ProportionMetric | MeanMetric | RatioMetric,
    stats: Mapping[str, MeanStats | RatioStats],
    config: ExperimentConfig,
    options: _Options,
    ground_truth: Any,
    covariates: Mapping[str, CovariateSums] | None = None,
) -> MetricResult:
    alpha = options.alpha
    control = config.control_key
    keys = [variant.key for variant in config.variants]
    empty: MeanStats | RatioStats = (
        RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        if isinstance(metric, RatioMetric)
        else MeanStats(0, 0.0, 0.0)
    )
    per_variant = {key: stats.get(key, empty) for key in keys}
    variants = []
    for key in keys:
        est = estimate(per_variant[key], alpha)
        variants.append(VariantEstimate(key, est.n, est.value, est.ci, est.note))

    cuped: CupedResult | None = None
    if not options.cuped:
        metric_cuped = CupedInfo(False, 0.0, 0.0, "CUPED is off (analysis.cuped: false)")
    elif not cuped_eligible(metric):
        why = "ratio metric" if isinstance(metric, RatioMetric) else "impressions have no history"
        metric_cuped = CupedInfo(False, 0.0, 0.0, f"not applied: {why}")
    elif covariates is None:
        metric_cuped = CupedInfo(False, 0.0, 0.0, "not applied: no pre-period data")
    else:
        outcome = {key: per_variant[key] for key in keys}
        assert all(isinstance(v, MeanStats) for v in outcome.values())
        cuped = cuped_adjust(
            {k: v for k, v in outcome.items() if isinstance(v, MeanStats)},
            {key: covariates.get(key, CovariateSums(0.0, 0.0, 0.0)) for key in keys},
        )
        metric_cuped = _cuped_info(cuped)
        if not cuped.applied:
            metric_cuped = CupedInfo(False, 0.0, 0.0, f"not applied: {cuped.note}")

    comparisons = []
    for key in keys:
        if key == control:
            continue
        raw = compare(per_variant[key], per_variant[control], alpha)
        cmp, info = raw, metric_cuped
        if cuped is not None and cuped.applied:
            cmp = compare(cuped.stats[key], cuped.stats[control], alpha)
            info = dataclasses.replace(
                metric_cuped, variance_reduction=_comparison_variance_reduction(raw, cmp)
            )
        significant = cmp.p_value is not None and cmp.p_value < alpha
        sequential: dict[str, Any] | None = None
        if options.sequential and cmp.diff is not None and cmp.se is not None:
            units = (per_variant[key].n + per_variant[control].n) / 2.0
            seq = always_valid(
                cmp.diff,
                cmp.se,
                units,
                alpha,
                options.sequential_tuning,
                cmp.rel_lift,
                cmp.rel_lift_se,
            )
            sequential = {
                "p_value": seq.p_value,
                "diff_ci": seq.diff_ci,
                "rel_lift_ci": seq.rel_lift_ci,
                "boundary_z": seq.boundary,
                "z": None if cmp.se == 0 else cmp.diff / cmp.se,
                "tuning_units": seq.tuning_units,
            }
        bayes = _bayes(metric, per_variant[key], per_variant[control], cmp, alpha)
        mde = mde_relative = None
        if cmp.se is not None:
            mde = mde_at(cmp.se, alpha, options.power)
            base = per_variant[control]
            base_value = base.mean if isinstance(base, MeanStats) else base.ratio
            if base_value:
                mde_relative = mde / abs(base_value)
        comparisons.append(
            ComparisonResult(
                variant=key,
                baseline=control,
                diff=cmp.diff,
                diff_ci=cmp.diff_ci,
                rel_lift=cmp.rel_lift,
                rel_lift_ci=cmp.rel_lift_ci,
                p_value=cmp.p_value,
                significant=significant,
                note=cmp.note,
                chance_to_beat_control=None if bayes is None else bayes["chance_to_beat_control"],
                bayes=bayes,
                cuped=info,
                sequential=sequential,
                mde=mde,
                mde_relative=mde_relative,
                guardrail=metric.name in options.guardrails,
            )
        )
    return MetricResult(
        metric=metric.name,
        type=_metric_type(metric),
        variants=tuple(variants),
        comparisons=tuple(comparisons),
        ground_truth=_ground_truth(ground_truth, metric.name),
        guardrail=metric.name in options.guardrails,
        cuped=metric_cuped,
    )


def _decision_p(cmp: ComparisonResult) -> float | None:
    """The p-value a decision rests on: always-valid when sequential, else fixed-horizon."""
    if cmp.sequential is not None:
        value = cmp.sequential.get("p_value")
        return None if value is None else float(value)
    return cmp.p_value


def _decide(p_adjusted: float | None, diff: float | None, options: _Options) -> Decision:
    """Decision line; larger is taken to be better for every metric."""
    if p_adjusted is None or diff is None:
        return "keep running"  # not enough data for a test yet
    if p_adjusted < options.alpha and diff != 0.0:
        return "significant win" if diff > 0 else "significant loss"
    # A sequential test may be looked at again later; a fixed-horizon one is over.
    return "keep running" if options.sequential else "inconclusive"


def _apply_correction(
    metrics: Sequence[MetricResult], options: _Options
) -> tuple[MetricResult, ...]:
    """Correct the p-values within two families: primary metrics, and guardrails.

    Each family is every (non-control variant, metric) comparison with a p-value.
    """
    adjusted: dict[tuple[int, int], float] = {}
    for guardrail in (False, True):
        members = [
            (i, j, p)
            for i, metric in enumerate(metrics)
            if metric.guardrail == guardrail
            for j, cmp in enumerate(metric.comparisons)
            if (p := _decision_p(cmp)) is not None
        ]
        if members:
            values = adjust_pvalues([p for _, _, p in members], options.correction)
            adjusted.update(
                {(i, j): float(v) for (i, j, _), v in zip(members, values, strict=True)}
            )
    out = []
    for i, metric in enumerate(metrics):
        comparisons = []
        for j, cmp in enumerate(metric.comparisons):
            p_adj = adjusted.get((i, j))
            comparisons.append(
                dataclasses.replace(
                    cmp, p_value_adjusted=p_adj, decision=_decide(p_adj, cmp.diff, options)
                )
            )
        out.append(dataclasses.replace(metric, comparisons=tuple(comparisons)))
    return tuple(out)


def _no_data_error(key: str) -> AbplatformError:
    return AbplatformError(
        f"experiment {key!r} has no exposures yet, so there is no data to analyse",
        hint=f"simulate traffic with `abplatform simulate FILE` (the YAML of {key!r}), "
        "or load real exposures and events with `abplatform ingest FILE`",
    )


def analyze(
    engine: Engine, key: str, alpha: float | None = None, *, ranking: bool = True
) -> AnalysisResult:
    """Analyse an experiment: units, SRM check, and every metric against the control.

    Parameters
    ----------
    engine : Engine
        Database holding the experiment, its exposures and events.
    key : str
        The experiment's key.
    alpha : float, optional
        Two-sided significance level of the confidence intervals and tests;
        defaults to the config's ``analysis.alpha`` (0.05).

    Returns
    -------
    AnalysisResult
        Call ``to_dict()`` for the JSON form.

    Raises
    ------
    NotFoundError
        If there is no experiment with this key.
    AbplatformError
        If the experiment has no exposures (nothing to analyse yet).
    ValueError
        If `alpha` is not strictly between 0 and 1.

    Notes
    -----
    See the module docstring for the definitions of units, per-unit aggregates,
    metrics, SRM and ground truth.
    """
    if alpha is not None and not (
        isinstance(alpha, int | float) and not isinstance(alpha, bool) and 0.0 < float(alpha) < 1.0
    ):
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
    with transaction(engine) as session:
        stored = get_experiment(session, key)
        config = stored.config
        settings = config.analysis
        options = _Options(
            alpha=float(alpha) if alpha is not None else settings.alpha,
            cuped=settings.cuped,
            sequential=settings.sequential,
            sequential_tuning=settings.sequential_tuning,
            correction=settings.correction,
            power=settings.power,
            guardrails=frozenset(settings.guardrails),
        )
        variant_keys = [variant.key for variant in config.variants]
        aggregates = aggregate_experiment(
            session,
            stored.id,
            variant_keys,
            config.metrics,
            covariates=config.metrics if options.cuped else (),
            catalog=stored.catalog,
            pre_period=settings.pre_period.naive_utc() if settings.pre_period else None,
        )
        run = latest_simulation(session, stored.id)
        run_info: dict[str, Any] | None = None
        ground_truth: Any = None
        if run is not None:
            run_info = {"id": run.id, "seed": int(run.seed), "status": run.status}
            ground_truth = run.ground_truth
        bandit = None
        if is_bandit(config):
            bandit = bandit_analysis(
                session.connection(),
                stored.id,
                config,
                options.alpha,
                run.summary if run is not None else None,
                ground_truth,
            )
    if aggregates.total_exposed == 0:
        raise _no_data_error(key)

    warnings: list[str] = []
    units = dict(aggregates.units)
    if aggregates.unknown_units:
        listed = ", ".join(f"{k} ({_units(n)})" for k, n in aggregates.unknown_variants.items())
        warnings.append(
            f"left out of every metric: {_units(aggregates.unknown_units)} exposed only to "
            f"variants that are not in the config ({listed})"
        )
    if aggregates.multiple_variants:
        warnings.append(
            f"left out of every metric: {_units(aggregates.multiple_variants)} exposed to "
            "more than one variant"
        )
    empty = [k for k, n in units.items() if n == 0]
    if empty:
        warnings.append(f"no units in variant(s): {', '.join(empty)}")
    if run_info is not None and run_info["status"] != "completed":
        warnings.append(
            f"the latest simulation run (id {run_info['id']}) has status "
            f"{run_info['status']!r}, not 'completed': its data may be partial"
        )
    if bandit is None:
        srm, srm_warnings = _srm(config, units)
    else:
        srm, srm_warnings = _bandit_srm(units)
        if bandit["allocation_check"]["mismatch"]:
            srm_warnings.append(
                "allocation mismatch: the units per arm do not match the logged bandit weights "
                f"(p = {bandit['allocation_check']['p_value']:.2g}); see bandit.allocation_check"
            )
    warnings.extend(srm_warnings)
    metrics = _apply_correction(
        [
            _metric_result(
                metric,
                aggregates.stats[metric.name],
                config,
                options,
                ground_truth,
                aggregates.covariates.get(metric.name),
            )
            for metric in config.metrics
        ],
        options,
    )
    return AnalysisResult(
        experiment=stored.key,
        description=config.description,
        control=config.control_key,
        alpha=options.alpha,
        units=units,
        excluded_units={"multiple_variants": aggregates.multiple_variants},
        srm=srm,
        metrics=metrics,
        run=run_info,
        warnings=tuple(warnings),
        correction=options.correction,
        sequential=options.sequential,
        cuped=options.cuped,
        power=options.power,
        guardrails=tuple(settings.guardrails),
        ranking=_ranking(engine, stored.id, stored.catalog) if ranking else None,
        bandit=bandit,
    )


def _bandit_srm(units: Mapping[str, int]) -> tuple[SrmSummary, list[str]]:
    """No fixed split to test under adaptive allocation: the SRM check is skipped, and said so."""
    observed = dict(units)
    expected = {key: float(n) for key, n in observed.items()}
    return SrmSummary(1.0, 0.0, False, observed, expected), [
        "adaptive allocation (thompson): the SRM check against fixed weights does not apply, "
        "and the per-variant means and comparisons below ignore the propensities, so they can "
        "be biased; read the bandit section's inverse-propensity-weighted estimates"
    ]


def _ranking(engine: Engine, experiment_id: int, catalog: str) -> dict[str, dict[str, Any]]:
    """Online ranking quality per variant (see reports.ranking)."""
    from reports.ranking import ranking_quality

    quality = ranking_quality(engine, experiment_id, catalog)
    return {variant: values.to_dict() for variant, values in quality.items()}
