"""Breakdowns of an experiment by `analysis.dimensions`: per slice units, SRM and every metric.

A unit's value of a dimension is taken at its first exposure (``MIN(exposures.ts)``):

scene
    The scene of its first exposure (the smallest on a tie; ``(none)`` without a scene).
new_vs_returning
    ``returning`` when the unit has pre-period history (`reports.units.PrePeriod`: an
    interaction of the experiment's catalogue, of any type, strictly before its first
    exposure; with ``analysis.pre_period`` only those in that window, together with the
    experiment's own events in it), else ``new``.
first_exposure_day
    The calendar day (UTC, ``YYYY-MM-DD``) of its first exposure.
any other name
    That column of the users profile table (``users.features``, what ``users.csv``
    ingests) for the unit's user in the catalogue; ``(missing)`` without one.

The per-unit values are the analysis's own (`reports.units.unit_values`, same caps and
windows); one statement per dimension sums them per (variant, value) in the database.
The 20 values with the most units are kept and the rest pooled as ``other`` (sums add).
Each slice's metrics go through `reports.metric_result.metric_result`, as the overall
analysis does, and are corrected for multiplicity over slices x metrics x variants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    String,
    case,
    cast,
    func,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from abplatform.config.dimensions import BUILTIN_DIMENSIONS, MAX_SLICES
from abplatform.config.models import ExperimentConfig, RatioMetric
from abplatform.errors import AbplatformError
from abplatform.storage import models as m
from reports.breakdown_results import Breakdown, Breakdowns, BreakdownSlice
from reports.capping import Cap
from reports.cuped import CovariateSums, RatioCovariateSums
from reports.metric_result import Options, metric_result
from reports.quantile_result import standard_metrics
from reports.results import MetricResult, SrmSummary
from reports.stats import srm_test
from reports.terms import (
    Shape,
    covariate_terms,
    cuped_eligible,
    metric_terms,
    plan_sums,
    product_of,
    statistics_of,
    thresholds_of,
)
from reports.units import PrePeriod, UnitValues, unit_values

__all__ = ["OTHER", "breakdowns", "profile_columns"]

OTHER = "other"
"""The slice that pools the values beyond the 20 with the most units."""
_NO_SCENE = "(none)"
_MISSING = "(missing)"
_EXPOSURES = m.Exposure.__table__
_EVENTS = m.Event.__table__
_INTERACTIONS = m.Interaction.__table__
_USERS = m.User.__table__

_DEFINITIONS = {
    "scene": "scene of the unit's first exposure",
    "new_vs_returning": "returning: the unit has pre-period history before its first exposure",
    "first_exposure_day": "calendar day (UTC) of the unit's first exposure",
}

Correct = Callable[[Sequence[MetricResult]], tuple[MetricResult, ...]]
"""The overall analysis's multiple-testing correction (and decisions) over a family."""


def profile_columns(session: Session, catalog: str) -> list[str]:
    """The profile columns (``users.features`` keys) of the catalogue's users, sorted."""
    if session.get_bind().dialect.name == "postgresql":
        query = "SELECT DISTINCT json_object_keys(features) FROM users WHERE catalog = :c"
    else:
        query = (
            "SELECT DISTINCT j.key FROM users, json_each(users.features) AS j WHERE catalog = :c"
        )
    return sorted(str(row[0]) for row in session.execute(text(query), {"c": catalog}))


def _check_dimensions(session: Session, names: Sequence[str], catalog: str) -> None:
    """An analysis error naming the first unknown dimension and every valid one."""
    unknown = [name for name in names if name not in BUILTIN_DIMENSIONS]
    if not unknown:
        return
    columns = profile_columns(session, catalog)
    for i, name in enumerate(names):
        if name not in BUILTIN_DIMENSIONS and name not in columns:
            valid = ", ".join([*BUILTIN_DIMENSIONS, *columns])
            raise AbplatformError(
                f"analysis.dimensions.{i}: unknown dimension (got {name!r}); valid: {valid}",
                hint="a dimension is built in or a column of the users profile of catalogue "
                f"{catalog!r} (`abplatform ingest` of a users.csv)",
            )


def _slice_of(
    name: str,
    experiment_id: int,
    table: FromClause,
    pre_period: PrePeriod,
    dialect: str,
) -> tuple[ColumnElement[str], FromClause]:
    """Each unit's value of dimension `name` and what to select it from (joined to `table`)."""
    unit, first_ts = table.c.unit_key, table.c.first_ts
    if name == "scene":
        x = _EXPOSURES.alias("first_scene")
        scene = (
            select(func.min(func.coalesce(x.c.scene, literal(_NO_SCENE, String))))
            .where(x.c.experiment_id == experiment_id, x.c.unit_id == unit, x.c.ts == first_ts)
            .scalar_subquery()
        )
        return scene, table
    if name == "first_exposure_day":
        if dialect == "postgresql":
            return func.to_char(first_ts, literal("YYYY-MM-DD", String)), table
        return func.strftime(literal("%Y-%m-%d", String), first_ts), table
    if name == "new_vs_returning":
        since = _history_since(experiment_id, pre_period)
        joined = table.outerjoin(since, since.c.unit_key == unit)
        returning = case(
            (since.c.since < first_ts, literal("returning", String)),
            else_=literal("new", String),
        )
        return returning, joined
    u = _USERS
    joined = table.outerjoin(u, (u.c.catalog == pre_period.catalog) & (u.c.user_id == unit))
    value = cast(u.c.features[name].as_string(), String)
    return func.coalesce(value, literal(_MISSING, String)), joined


def _history_since(experiment_id: int, pre_period: PrePeriod) -> Any:
    """``(unit_key, since)``: each user's earliest pre-period history row (see the module)."""
    i = _INTERACTIONS
    interactions = select(i.c.user_id.label("unit_key"), i.c.ts.label("ts")).where(
        i.c.catalog == pre_period.catalog
    )
    history: Any = interactions
    if pre_period.window is not None:
        start, end = pre_period.window
        ev = _EVENTS
        history = union_all(
            interactions.where(i.c.ts >= start, i.c.ts < end),
            select(ev.c.unit_id.label("unit_key"), ev.c.ts.label("ts")).where(
                ev.c.experiment_id == experiment_id, ev.c.ts >= start, ev.c.ts < end
            ),
        )
    rows = history.subquery("history_rows")
    return (
        select(rows.c.unit_key, func.min(rows.c.ts).label("since"))
        .group_by(rows.c.unit_key)
        .subquery("history_since")
    )


@dataclasses.dataclass(frozen=True)
class _SliceSums:
    """Units and per-variant sums of one dimension value (before or after pooling)."""

    value: str
    units: dict[str, int]
    sums: dict[str, dict[str, float]]
    """``sums[variant][label]``."""
    pooled_values: int = 1

    @property
    def total(self) -> int:
        return sum(self.units.values())


def _slice_sums(
    session: Session,
    experiment_id: int,
    name: str,
    variants: Sequence[str],
    values: UnitValues,
    labels: Mapping[Any, str],
    pre_period: PrePeriod,
) -> list[_SliceSums]:
    """Per value of the dimension, the units and sums per variant: one grouped statement."""
    dialect = session.get_bind().dialect.name
    value, source = _slice_of(name, experiment_id, values.table, pre_period, dialect)
    sliced = select(*values.table.c, value.label("slice_value")).select_from(source)
    table = sliced.subquery("sliced_units")
    view = UnitValues(values.units, table, values.labels)
    totals = [func.sum(product_of(view, f)).label(label) for f, label in labels.items()]
    query = (
        select(table.c.code, table.c.slice_value, func.count().label("n"), *totals)
        .where(table.c.code == table.c.code_max, table.c.code >= 0)
        .group_by(table.c.code, table.c.slice_value)
    )
    by_value: dict[str, _SliceSums] = {}
    for row in session.execute(query).mappings():
        key = str(row["slice_value"])
        entry = by_value.setdefault(key, _SliceSums(key, dict.fromkeys(variants, 0), {}))
        variant = variants[int(row["code"])]
        entry.units[variant] = int(row["n"])
        entry.sums[variant] = {label: _as_float(row[label]) for label in labels.values()}
    return list(by_value.values())


def _as_float(value: Any) -> float:
    return 0.0 if value is None else float(value)


def _pooled(slices: list[_SliceSums], variants: Sequence[str], by_day: bool) -> list[_SliceSums]:
    """The 20 values with the most units (ties: by value), then ``other`` pooling the rest."""
    ranked = sorted(slices, key=lambda s: (-s.total, s.value))
    kept, rest = ranked[:MAX_SLICES], ranked[MAX_SLICES:]
    if by_day:
        kept.sort(key=lambda s: s.value)
    if not rest:
        return kept
    units = {v: sum(s.units[v] for s in rest) for v in variants}
    sums: dict[str, dict[str, float]] = {}
    for v in variants:
        present = [s.sums[v] for s in rest if v in s.sums]
        if present:
            sums[v] = {label: sum(p[label] for p in present) for label in present[0]}
    return [*kept, _SliceSums(OTHER, units, sums, len(rest))]


def _slice_srm(config: ExperimentConfig, units: Mapping[str, int]) -> SrmSummary:
    """The overall SRM check on one slice's units (variants with positive weight)."""
    observed = {v.key: units.get(v.key, 0) for v in config.variants}
    tested = [v for v in config.variants if v.weight > 0]
    expected = dict.fromkeys(observed, 0.0)
    unplanned = any(observed[v.key] > 0 for v in config.variants if v.weight == 0)
    if len(tested) < 2 or sum(observed[v.key] for v in tested) == 0:
        return SrmSummary(1.0, 0.0, unplanned, observed, expected)
    result = srm_test([observed[v.key] for v in tested], [v.weight for v in tested])
    expected.update({v.key: e for v, e in zip(tested, result.expected, strict=True)})
    return SrmSummary(result.p_value, result.chi2, result.mismatch or unplanned, observed, expected)


def breakdowns(
    session: Session,
    experiment_id: int,
    config: ExperimentConfig,
    options: Options,
    pre_period: PrePeriod,
    correct: Correct,
    caps: Sequence[Cap] = (),
    as_of: datetime | None = None,
) -> Breakdowns | None:
    """Every dimension of ``analysis.dimensions`` broken down; None when there are none.

    Raises
    ------
    AbplatformError
        For a dimension that is neither built in nor a profile column of the catalogue.
    """
    names = config.analysis.dimensions
    if not names:
        return None
    _check_dimensions(session, names, pre_period.catalog)
    variants = [v.key for v in config.variants]
    summed = standard_metrics(config.metrics)  # quantile metrics are not broken down
    covariates = [metric for metric in summed if options.cuped and cuped_eligible(metric)]
    shape = Shape(thresholds_of(caps), as_of)
    labels = plan_sums(summed, covariates, shape)
    if session.get_bind().dialect.name == "postgresql":
        pre_period = dataclasses.replace(pre_period, hash_first_exposure=True)
    values = unit_values(
        experiment_id,
        [key for product in labels for key, _ in product],
        variants=variants,
        pre_period=pre_period if covariates else None,
    )
    out = []
    for name in names:
        raw = _slice_sums(session, experiment_id, name, variants, values, labels, pre_period)
        slices = _pooled(raw, variants, by_day=name == "first_exposure_day")
        metrics = [_slice_metrics(s, config, options, labels, covariates, shape) for s in slices]
        flat = correct([metric for per_slice in metrics for metric in per_slice])
        width = len(summed)
        built = tuple(
            BreakdownSlice(
                value=s.value,
                pooled_values=s.pooled_values,
                units=s.units,
                srm=_slice_srm(config, s.units),
                metrics=flat[k * width : (k + 1) * width],
            )
            for k, s in enumerate(slices)
        )
        family = sum(
            1
            for metric in flat
            if not metric.guardrail
            for cmp in metric.comparisons
            if cmp.p_value_adjusted is not None
        )
        definition = _DEFINITIONS.get(name, f"users profile column {name!r} of the unit's user")
        out.append(Breakdown(name, definition, len(raw), family, built))
    return Breakdowns(
        correction=options.correction,
        family="per dimension: slices x metrics x variants (guardrails a family of their own)",
        dimensions=tuple(out),
    )


def _slice_metrics(
    piece: _SliceSums,
    config: ExperimentConfig,
    options: Options,
    labels: Mapping[Any, str],
    covariates: Sequence[Any],
    shape: Shape,
) -> list[MetricResult]:
    """Each metric of one slice, as `metric_result` computes it overall (not yet corrected)."""

    def sums_of(terms: Mapping[str, Any], variant: str) -> dict[str, float]:
        row = piece.sums.get(variant, {})
        return {field: row.get(labels[tuple(sorted(f))], 0.0) for field, f in terms.items()}

    results = []
    for metric in standard_metrics(config.metrics):
        terms = metric_terms(metric, shape)
        stats = {v: statistics_of(metric, n, sums_of(terms, v)) for v, n in piece.units.items()}
        cov: dict[str, CovariateSums | RatioCovariateSums] | None = None
        if metric in covariates:
            cterms = covariate_terms(metric, shape)
            if isinstance(metric, RatioMetric):
                present = tuple(name for name in ("a", "b") if name in cterms)
                cov = {v: RatioCovariateSums(present, **sums_of(cterms, v)) for v in piece.units}
            else:
                cov = {v: CovariateSums(**sums_of(cterms, v)) for v in piece.units}
        results.append(metric_result(metric, stats, config, options, None, cov))
    return results
