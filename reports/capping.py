"""Capping (winsorisation) of per-unit values: the thresholds, computed in SQL on both databases.

Definition
----------
A metric's ``cap`` (a mean metric's value, or a ratio's numerator or denominator) replaces
each analysed unit's per-unit value ``v`` by ``min(v, t)`` before anything is summed. ``t``
is one threshold for all variants:

- ``{type: absolute, value: a}``: ``t = a``;
- ``{type: percentile, value: p}``: the ``p`` quantile of ``v`` over every analysed unit of
  every variant (units exposed to several variants or to unknown variants left out; with
  ``ignore_zeros: true`` only the units with ``v > 0``),
  interpolated linearly between order statistics (``percentile_cont``, NumPy's default
  ``linear`` method): with the values sorted, ``v_(0) <= ... <= v_(n-1)``, ``x = p (n - 1)``,
  ``t = v_(floor x) + (x - floor x) (v_(floor x + 1) - v_(floor x))``.

SQLite has no percentile function, so both databases run the same set-based statement: the
per-unit values numbered by a window function (``ROW_NUMBER() OVER (ORDER BY v)``, with
``COUNT(*) OVER ()``), of which only the two order statistics around ``x`` come back. A
CUPED covariate of a capped metric is capped at the metric's threshold (same event, same
scale). Units whose value was above the threshold are counted per variant
(``capped_units``) by the aggregate statement itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, Float, cast, func, literal, select
from sqlalchemy.orm import Session

from abplatform.config.models import (
    CapConfig,
    EventCount,
    MeanMetric,
    ProportionMetric,
    RatioMetric,
)
from reports.units import ValueKey, unit_values, value_key
from reports.windows import closed_key, windowed_key

__all__ = ["CAPPED_ROLES", "Cap", "CapRole", "cap_thresholds", "capped_values", "percentile"]

CapRole = Literal["value", "numerator", "denominator"]
"""Which per-unit value of a metric a cap applies to."""
CAPPED_ROLES: tuple[CapRole, ...] = ("value", "numerator", "denominator")

Metric = ProportionMetric | MeanMetric | RatioMetric


@dataclass(frozen=True)
class Cap:
    """One capped per-unit value of a metric and the threshold it is cut at.

    ``threshold`` is None when a percentile cap had no analysed unit to compute it from
    (nothing is capped then).
    """

    metric: str
    role: CapRole
    key: ValueKey
    config: CapConfig
    threshold: float | None
    closed: ValueKey | None = None
    """A windowed metric's closed-window indicator: only those units are counted."""


def capped_values(metric: Metric) -> list[tuple[CapRole, ValueKey, CapConfig]]:
    """The metric's capped per-unit values: (role, value key, cap) in role order; the keys
    are windowed as the metric is (`reports.windows`)."""
    window = metric.window
    if isinstance(metric, MeanMetric) and metric.cap is not None:
        return [("value", windowed_key(value_key(metric.event, metric.value), window), metric.cap)]
    if isinstance(metric, RatioMetric):
        parts: list[tuple[CapRole, EventCount]] = [
            ("numerator", metric.numerator),
            ("denominator", metric.denominator),
        ]
        return [
            (role, windowed_key(value_key(part.event, part.value), window), part.cap)
            for role, part in parts
            if part.cap is not None
        ]
    return []


def percentile(order_statistics: Sequence[tuple[int, float]], n: int, share: float) -> float:
    """The linear-interpolation quantile from the order statistics around ``share * (n - 1)``.

    ``order_statistics`` holds (0-based rank, value) pairs, at least the one at
    ``floor(share * (n - 1))``.
    """
    x = share * (n - 1)
    low = math.floor(x)
    by_rank = dict(order_statistics)
    below = by_rank[low]
    above = by_rank.get(low + 1, below)
    return below + (x - low) * (above - below)


def _pooled_percentile(
    connection: Connection | Session,
    experiment_id: int,
    variants: Sequence[str],
    key: ValueKey,
    config: CapConfig,
    closed: ValueKey | None,
) -> float | None:
    """The quantile of the per-unit value ``key`` over the analysed units (over those with
    a positive value when the cap ignores zeros; whose window has closed when windowed)."""
    share = config.value
    values = unit_values(
        experiment_id, [key] if closed is None else [key, closed], variants=variants
    )
    table = values.table
    value = values.value(key)
    analysed = [table.c.code == table.c.code_max, table.c.code >= 0]
    if config.ignore_zeros:
        analysed.append(value > 0)
    if closed is not None:
        analysed.append(values.value(closed) > 0)
    ranked = (
        select(
            value.label("v"),
            func.row_number().over(order_by=value).label("r"),
            func.count().over().label("n"),
        )
        .where(*analysed)
        .subquery("ranked")
    )
    # x = share * (n - 1), computed in double precision as Python does below.
    x = cast(ranked.c.n - 1, Float) * literal(share, Float)
    rank = ranked.c.r - 1
    rows = connection.execute(
        select(rank, ranked.c.n, ranked.c.v).where(rank > x - 1, rank <= x + 1).order_by(ranked.c.r)
    ).all()
    if not rows:
        return None
    n = int(rows[0][1])
    return percentile([(int(r), float(v)) for r, _, v in rows], n, share)


def cap_thresholds(
    connection: Connection | Session,
    experiment_id: int,
    variants: Sequence[str],
    metrics: Sequence[Metric],
    as_of: datetime | None = None,
) -> list[Cap]:
    """Every capped value of `metrics` with its threshold (one statement per percentile cap).

    ``as_of`` (naive UTC) closes the windows of windowed metrics (`reports.windows`).
    """
    caps: list[Cap] = []
    for metric in metrics:
        closed: ValueKey | None = None
        if metric.window is not None:
            if as_of is None:
                raise ValueError(f"metric {metric.name!r} has a window: thresholds need as_of")
            closed = closed_key(metric.window, as_of)
        for role, key, config in capped_values(metric):
            threshold: float | None = config.value
            if config.type == "percentile":
                threshold = _pooled_percentile(
                    connection, experiment_id, variants, key, config, closed
                )
            caps.append(Cap(metric.name, role, key, config, threshold, closed))
    return caps
