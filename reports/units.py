"""Per-unit metric values of an experiment in SQL: the one definition, for A/B and bandit analysis.

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
Bandit units
    A Thompson-sampling experiment decides per unit (sticky, no context), per unit
    in one scene (sticky, ``context: scene``) or per request (``sticky: false``).
    A whole unit's values are as above; a unit in a scene or a request gets the
    events logged against those exposures (``events.exposure_id``).

`unit_values` is the one definition of these per-unit values: a subquery with one
row per unit (its variant or arm and propensity, and a column per per-unit value).
`reports.aggregate` sums it per variant (A/B) or per (context, arm) with the units'
propensities (bandit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    CTE,
    ColumnElement,
    DateTime,
    Float,
    String,
    Subquery,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    union_all,
)

from abplatform.config.models import MeanMetric, ProportionMetric, UnitKind
from abplatform.storage import models as m
from reports.windows import CLOSED, closed_cutoff, elapsed_seconds, parse_window

__all__ = [
    "IMPRESSION",
    "PRE",
    "UNKNOWN_CODE",
    "PrePeriod",
    "UnitValues",
    "float_constant",
    "metric_key",
    "unit_values",
    "value_key",
]

IMPRESSION = "impression"
"""The event type counted from ``exposures.slate_size`` instead of the events table."""
PRE = "pre:"
"""Prefix of an event key that means the unit's pre-experiment history (CUPED covariate)."""
UNKNOWN_CODE = -1
"""Variant code of exposures in a variant that is not in the config."""

Aggregate = Literal["count", "sum", "any"]
"""How a unit's events of one type become a number: count, sum of values, or 0/1 'any'."""
ValueKey = tuple[str, Aggregate]
"""(event type, aggregate) of one per-unit value; a ``pre:`` event is the pre-period one."""

_EXPOSURES = m.Exposure.__table__
_EVENTS = m.Event.__table__
_INTERACTIONS = m.Interaction.__table__


def float_constant(value: float) -> ColumnElement[float]:
    # A typed constant: PostgreSQL reads 1.0 as numeric, and SUM(numeric) is slow and Decimal.
    return cast(literal_column(repr(float(value))), Float)


def value_key(event: str, how: Literal["count", "sum"]) -> ValueKey:
    # Impressions carry no value: their "sum" is their count.
    return (event, "count") if event == IMPRESSION else (event, how)


def metric_key(metric: ProportionMetric | MeanMetric) -> ValueKey:
    """The per-unit value of a proportion or mean metric (a bandit unit's reward)."""
    if isinstance(metric, ProportionMetric):
        return (metric.event, "any")
    return value_key(metric.event, metric.value)


@dataclass(frozen=True)
class PrePeriod:
    """Where a unit's pre-period (CUPED) values come from.

    The unit's interactions in the history of ``catalog`` (``user_id = unit_id``) strictly
    before its first exposure; with a ``window`` [start, end) (`analysis.pre_period`) only
    those in it, together with the experiment's own events in it (ingested logs may carry
    events from before a unit's first exposure).
    """

    catalog: str
    window: tuple[datetime, datetime] | None = None
    hash_first_exposure: bool = False
    """Join the history to each unit's first exposure, grouped once (PostgreSQL), instead
    of an index look-up per history row (SQLite): see `_first_exposures`."""


@dataclass(frozen=True)
class UnitValues:
    """An experiment's per-unit values: `table` has one row per unit and a column per value.

    ``units`` is the grouped exposures: ``unit_key`` and, for an A/B analysis, ``code`` and
    ``code_max`` (the index of the unit's lowest and highest variant in the config, -1 when
    unknown); for a bandit analysis ``context``, ``arm``, ``arm_max``, ``propensity`` and
    ``version`` (the weight version behind the decision). ``table`` is ``units`` joined
    with its per-unit values, the columns named in ``labels``.
    """

    units: CTE
    table: Subquery
    labels: Mapping[ValueKey, str]

    def value(self, key: ValueKey) -> ColumnElement[float]:
        """The per-unit value column of ``key``."""
        return self.table.c[self.labels[key]]


def _units_cte(
    experiment_id: int, kind: UnitKind, variants: Sequence[str] | None, materialized: bool
) -> CTE:
    """One row per unit (A/B: with variant codes; bandit: with arm and propensity)."""
    x = _EXPOSURES
    context = (
        func.coalesce(x.c.scene, literal_column("''", String))
        if kind == "unit and scene"
        else literal_column("''", String)
    )
    if kind == "request":
        columns: list[ColumnElement[Any]] = [
            x.c.id.label("unit_key"),
            context.label("context"),
            x.c.variant.label("arm"),
            x.c.variant.label("arm_max"),
            x.c.propensity.label("propensity"),
            x.c.weight_version.label("version"),
            cast(x.c.slate_size, Float).label("impressions"),
            x.c.ts.label("first_ts"),
        ]
        query = select(*columns).where(x.c.experiment_id == experiment_id)
    else:
        if variants is not None:
            code_of_variant = case(
                {key: literal_column(str(i)) for i, key in enumerate(variants)},
                value=x.c.variant,
                else_=literal_column(str(UNKNOWN_CODE)),
            )
            columns = [
                func.min(code_of_variant).label("code"),
                func.max(code_of_variant).label("code_max"),
            ]
        else:
            columns = [
                context.label("context"),
                func.min(x.c.variant).label("arm"),
                func.max(x.c.variant).label("arm_max"),
                func.min(x.c.propensity).label("propensity"),
                func.min(x.c.weight_version).label("version"),
            ]
        # PostgreSQL refuses a constant in GROUP BY: group by the scene only when it is a key.
        keys = [x.c.unit_id] if kind == "unit" else [x.c.unit_id, context]
        query = (
            select(
                x.c.unit_id.label("unit_key"),
                *columns,
                cast(func.sum(x.c.slate_size), Float).label("impressions"),
                func.min(x.c.ts).label("first_ts"),
            )
            .where(x.c.experiment_id == experiment_id)
            .group_by(*keys)
        )
    units = query.cte("units")
    # Computed once: right after a bulk load the planner's row estimates are stale, and an
    # inlined CTE under a nested loop would be re-run for every unit.
    return units.prefix_with("MATERIALIZED", dialect="postgresql") if materialized else units


def _conditional_sums(
    columns: Mapping[tuple[str, Aggregate], str],
    type_: ColumnElement[str],
    value: ColumnElement[float],
    elapsed: ColumnElement[float] | None = None,
) -> list[ColumnElement[float]]:
    """``SUM(CASE WHEN type = :t THEN 1.0 | COALESCE(value, 0.0) ELSE 0.0 END)`` per column
    (a windowed column also needs ``start <= elapsed < end``, see `reports.windows`)."""
    out: list[ColumnElement[float]] = []
    for (event, how), label in columns.items():
        amount = (
            float_constant(1.0) if how == "count" else func.coalesce(value, float_constant(0.0))
        )
        window = parse_window(event)
        if window is None:
            condition = type_ == event
        else:
            assert elapsed is not None, "a windowed value needs the events' elapsed time"
            start, end, name = window
            condition = (
                (type_ == name)
                & (elapsed >= float_constant(start))
                & (elapsed < float_constant(end))
            )
        out.append(func.sum(case((condition, amount), else_=float_constant(0.0))).label(label))
    return out


def _event_name(event: str) -> str:
    """The stored event type behind a (possibly windowed) value key event."""
    window = parse_window(event)
    return event if window is None else window[2]


def _events_cte(
    experiment_id: int,
    kind: UnitKind,
    columns: Mapping[tuple[str, Aggregate], str],
    materialized: bool,
) -> CTE:
    """Per-unit aggregates of the unit's events (keyed like the units)."""
    ev = _EVENTS
    types = ev.c.type.in_(sorted({_event_name(event) for event, _ in columns}))
    windowed = any(parse_window(event) is not None for event, _ in columns)
    if windowed and kind != "unit":
        raise ValueError("metric windows need whole units (an A/B analysis)")
    aggregates = [] if windowed else _conditional_sums(columns, ev.c.type, ev.c.value)
    if kind == "unit":
        earlier = _EXPOSURES.alias("earlier")
        # i.e. ts >= first exposure, without joining every event to the units.
        exposed_before = (
            select(literal_column("1"))
            .where(
                earlier.c.experiment_id == experiment_id,
                earlier.c.unit_id == ev.c.unit_id,
                earlier.c.ts <= ev.c.ts,
            )
            .exists()
        )
        query = (
            select(ev.c.unit_id.label("unit_key"), *aggregates)
            .where(ev.c.experiment_id == experiment_id, types, exposed_before)
            .group_by(ev.c.unit_id)
        )
        if windowed:
            # Each event's time since its unit's first exposure, worked out once per event.
            first = _first_exposure(experiment_id, ev.c.unit_id)
            timed = (
                select(
                    ev.c.unit_id,
                    ev.c.type,
                    ev.c.value,
                    elapsed_seconds(ev.c.ts, first).label("elapsed"),
                )
                .where(ev.c.experiment_id == experiment_id, types, exposed_before)
                .subquery("timed_events")
            )
            sums = _conditional_sums(columns, timed.c.type, timed.c.value, timed.c.elapsed)
            query = select(timed.c.unit_id.label("unit_key"), *sums).group_by(timed.c.unit_id)
    elif kind == "request":
        query = (
            select(ev.c.exposure_id.label("unit_key"), *aggregates)
            .where(ev.c.experiment_id == experiment_id, types, ev.c.exposure_id.is_not(None))
            .group_by(ev.c.exposure_id)
        )
    else:
        x = _EXPOSURES
        scene = func.coalesce(x.c.scene, literal_column("''", String))
        query = (
            select(x.c.unit_id.label("unit_key"), scene.label("context"), *aggregates)
            .select_from(ev.join(x, x.c.id == ev.c.exposure_id))
            .where(ev.c.experiment_id == experiment_id, types, x.c.experiment_id == experiment_id)
            .group_by(x.c.unit_id, scene)
        )
    events = query.cte("unit_events")
    return events.prefix_with("MATERIALIZED", dialect="postgresql") if materialized else events


def _first_exposure(experiment_id: int, unit: ColumnElement[str]) -> ColumnElement[datetime]:
    """``MIN(exposures.ts)`` of ``unit`` in the experiment (NULL if never exposed).

    An index lookup (``ix_exposures_experiment_unit_ts``) per history row. Looking the
    unit up in the ``units`` CTE instead scans the whole CTE per row on PostgreSQL, which
    cannot index a CTE: 122,158 history rows x 38,000 units ran for more than 10 minutes.
    Joining ``units`` lets SQLite scan the history once per unit.
    """
    x = _EXPOSURES.alias("first_exposure")
    return (
        select(func.min(x.c.ts))
        .where(x.c.experiment_id == experiment_id, x.c.unit_id == unit)
        .scalar_subquery()
    )


def _windowed_impressions_cte(experiment_id: int, columns: Mapping[str, str]) -> CTE:
    """Per unit, the slate sizes of its exposures inside each window (`reports.windows`)."""
    x = _EXPOSURES
    timed = (
        select(
            x.c.unit_id,
            cast(x.c.slate_size, Float).label("slate_size"),
            elapsed_seconds(x.c.ts, _first_exposure(experiment_id, x.c.unit_id)).label("elapsed"),
        )
        .where(x.c.experiment_id == experiment_id)
        .subquery("timed_exposures")
    )
    sums = []
    for event, label in columns.items():
        window = parse_window(event)
        assert window is not None
        start, end, _ = window
        inside = (timed.c.elapsed >= float_constant(start)) & (
            timed.c.elapsed < float_constant(end)
        )
        sums.append(
            func.sum(case((inside, timed.c.slate_size), else_=float_constant(0.0))).label(label)
        )
    return (
        select(timed.c.unit_id.label("unit_key"), *sums)
        .group_by(timed.c.unit_id)
        .cte("unit_impressions")
    )


def _first_exposures(experiment_id: int) -> Subquery:
    """``(unit_id, first_ts)`` of every unit of the experiment: a derived table, not a CTE.

    On PostgreSQL the planner hashes it (38,000 rows for 40,000 users) and joins the
    history to it in one pass; the look-up per history row (`_first_exposure`) took 3.1 s
    of a 7.8 s analysis for 1.2M history rows (examples/multi_scene.yaml, 40,000 users).
    """
    x = _EXPOSURES.alias("first_exposure")
    return (
        select(x.c.unit_id.label("unit_id"), func.min(x.c.ts).label("first_ts"))
        .where(x.c.experiment_id == experiment_id)
        .group_by(x.c.unit_id)
        .subquery("first_exposures")
    )


def _pre_events_cte(
    columns: Mapping[tuple[str, Aggregate], str],
    experiment_id: int,
    pre_period: PrePeriod,
) -> CTE:
    """Per-unit aggregates of each unit's pre-period history (see `PrePeriod`)."""
    catalog, window = pre_period.catalog, pre_period.window
    types = sorted({event for event, _ in columns})
    i = _INTERACTIONS
    if window is None:
        sums = select(
            i.c.user_id.label("unit_key"), *_conditional_sums(columns, i.c.type, i.c.value)
        )
        if pre_period.hash_first_exposure:
            first = _first_exposures(experiment_id)
            sums = sums.join_from(i, first, first.c.unit_id == i.c.user_id)
            before: ColumnElement[bool] = i.c.ts < first.c.first_ts
        else:
            before = i.c.ts < _first_exposure(experiment_id, i.c.user_id)
        return (
            sums.where(i.c.catalog == catalog, i.c.type.in_(types), before)
            .group_by(i.c.user_id)
            .cte("pre_events")
        )
    start, end = window
    ev = _EVENTS
    history = union_all(
        select(
            i.c.user_id.label("unit_key"),
            i.c.type.label("type"),
            i.c.value.label("value"),
            i.c.ts.label("ts"),
        ).where(i.c.catalog == catalog, i.c.type.in_(types), i.c.ts >= start, i.c.ts < end),
        select(
            ev.c.unit_id.label("unit_key"),
            ev.c.type.label("type"),
            ev.c.value.label("value"),
            ev.c.ts.label("ts"),
        ).where(
            ev.c.experiment_id == experiment_id,
            ev.c.type.in_(types),
            ev.c.ts >= start,
            ev.c.ts < end,
        ),
    ).subquery("history")
    windowed = select(
        history.c.unit_key.label("unit_key"),
        *_conditional_sums(columns, history.c.type, history.c.value),
    )
    if pre_period.hash_first_exposure:
        first = _first_exposures(experiment_id)
        windowed = windowed.join_from(history, first, first.c.unit_id == history.c.unit_key)
        before = history.c.ts < first.c.first_ts
    else:
        before = history.c.ts < _first_exposure(experiment_id, history.c.unit_key)
    return windowed.where(before).group_by(history.c.unit_key).cte("pre_events")


def unit_values(
    experiment_id: int,
    keys: Iterable[ValueKey],
    *,
    kind: UnitKind = "unit",
    variants: Sequence[str] | None = None,
    pre_period: PrePeriod | None = None,
    materialized: bool = True,
) -> UnitValues:
    """The per-unit values of an experiment: one row per unit, one column per value key.

    Parameters
    ----------
    experiment_id : int
        Primary key of the experiment (a bound parameter, as are event types).
    keys : iterable of (event, aggregate)
        The per-unit values wanted; ``(event, "any")`` is 1 when the unit has such an
        event, else 0; ``("pre:" + event, aggregate)`` is the unit's same value in its
        pre-period history (`PrePeriod`).
    kind : {"unit", "unit and scene", "request"}
        What a unit is (see the module docstring); pre-period values need ``"unit"``.
    variants : sequence of str, optional
        The configured variant keys: an A/B analysis, with ``code`` ``i`` for
        ``variants[i]``. Without: a bandit analysis, with each unit's arm and propensity.
    pre_period : PrePeriod, optional
        Where the pre-period values come from (required for them).
    materialized : bool
        Bandit analysis only: have PostgreSQL compute the CTEs once (``MATERIALIZED``),
        for a statement that joins them; a single scan of ``units`` does without.

    Notes
    -----
    Shape (A/B analysis; ``c(variant)`` maps a variant key to its index, -1 when unknown)::

        WITH units AS (        -- one row per unit, via ix_exposures_experiment_unit
          SELECT unit_id AS unit_key, MIN(c(variant)) AS code, MAX(c(variant)) AS code_max,
                 CAST(SUM(slate_size) AS FLOAT) AS impressions, MIN(ts) AS first_ts
          FROM exposures WHERE experiment_id = :id GROUP BY unit_id),
        unit_events AS (       -- one row per unit with events, via ix_events_experiment_unit
          SELECT unit_id AS unit_key, SUM(CASE WHEN type = :t0 THEN 1.0 ELSE 0.0 END) AS e0, ...
          FROM events ev
          WHERE experiment_id = :id AND type IN (:t0, ...)
            AND EXISTS (SELECT 1 FROM exposures x  -- i.e. ts >= first exposure
                        WHERE x.experiment_id = :id AND x.unit_id = ev.unit_id
                          AND x.ts <= ev.ts)
          GROUP BY unit_id),
        pre_events AS (...)    -- only with pre-period values: history before first exposure
        SELECT units.*, COALESCE(e0, 0.0) AS v0, CASE WHEN e1 > 0 THEN 1.0 ELSE 0.0 END AS v1
        FROM units LEFT JOIN unit_events USING (unit_key) [LEFT JOIN pre_events USING ...]

    The ``EXISTS`` probe spares joining every event to the million-row ``units``.
    Values are floats before they are squared or summed, so integers cannot overflow
    and PostgreSQL returns floats, not numerics.
    """
    keys = list(dict.fromkeys(keys))
    event_columns: dict[tuple[str, Aggregate], str] = {}
    pre_columns: dict[tuple[str, Aggregate], str] = {}
    impression_columns: dict[str, str] = {}
    for event, how in keys:
        if event == IMPRESSION or event.startswith(CLOSED):
            continue
        if _event_name(event) == IMPRESSION:
            impression_columns.setdefault(event, f"i{len(impression_columns)}")
            continue
        # "any" (proportions) is derived from the count column.
        agg: Aggregate = "count" if how == "any" else how
        if event.startswith(PRE):
            pre_columns.setdefault((event[len(PRE) :], agg), f"p{len(pre_columns)}")
        else:
            event_columns.setdefault((event, agg), f"e{len(event_columns)}")
    if pre_columns and (pre_period is None or kind != "unit"):
        raise ValueError("pre-period values need whole units and their pre-period history")
    bandit = variants is None and materialized
    units = _units_cte(experiment_id, kind, variants, materialized=bandit)
    joined: Any = units
    events: CTE | None = None
    if event_columns:
        events = _events_cte(experiment_id, kind, event_columns, materialized=bandit)
        on = events.c.unit_key == units.c.unit_key
        if kind == "unit and scene":
            on = on & (events.c.context == units.c.context)
        joined = joined.outerjoin(events, on)
    impressions: CTE | None = None
    if impression_columns:
        if kind != "unit":
            raise ValueError("metric windows need whole units (an A/B analysis)")
        impressions = _windowed_impressions_cte(experiment_id, impression_columns)
        joined = joined.outerjoin(impressions, impressions.c.unit_key == units.c.unit_key)
    pre: CTE | None = None
    if pre_columns and pre_period is not None:
        pre = _pre_events_cte(pre_columns, experiment_id, pre_period)
        joined = joined.outerjoin(pre, pre.c.unit_key == units.c.unit_key)

    def per_unit(event: str, how: Aggregate) -> ColumnElement[float]:
        agg = "count" if how == "any" else how
        cutoff = closed_cutoff(event)
        if cutoff is not None:
            closed = units.c.first_ts <= literal(cutoff, DateTime)
            return case((closed, float_constant(1.0)), else_=float_constant(0.0))
        if event == IMPRESSION:
            value: ColumnElement[float] = units.c.impressions
        elif event in impression_columns:
            assert impressions is not None
            value = func.coalesce(impressions.c[impression_columns[event]], float_constant(0.0))
        elif event.startswith(PRE):
            assert pre is not None
            value = func.coalesce(pre.c[pre_columns[(event[len(PRE) :], agg)]], float_constant(0.0))
        else:
            assert events is not None
            value = func.coalesce(events.c[event_columns[(event, agg)]], float_constant(0.0))
        if how == "any":
            return case(
                (value > float_constant(0.0), float_constant(1.0)), else_=float_constant(0.0)
            )
        return value

    labels = {key: f"v{i}" for i, key in enumerate(keys)}
    # Sums over units in one order whatever the join plan (PostgreSQL keeps a subquery's
    # order for the aggregate above it): the same floats on every run.
    table = (
        select(*units.c, *(per_unit(*key).label(labels[key]) for key in keys))
        .select_from(joined)
        .order_by(units.c.unit_key)
        .subquery("unit_values")
    )
    return UnitValues(units, table, labels)
