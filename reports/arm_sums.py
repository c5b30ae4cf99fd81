"""Per (context, arm) inverse-propensity sums of a bandit's units, summed in SQL (`reports.ipw`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, select

from abplatform.config.models import MeanMetric, ProportionMetric, UnitKind
from reports.ipw import ArmSums
from reports.units import float_constant, metric_key, unit_values

__all__ = ["arm_sums", "arm_version_counts"]


def _as_float(value: Any) -> float:
    # SUM over no values is NULL.
    return 0.0 if value is None else float(value)


def arm_sums(
    conn: Connection,
    experiment_id: int,
    metric: ProportionMetric | MeanMetric,
    kind: UnitKind,
) -> tuple[list[ArmSums], int]:
    """Per (context, arm) IPW sums of the bandit units' rewards, and the units excluded.

    A unit's reward is its per-unit value of the reward metric (`unit_values`). Units whose
    exposures carry more than one arm (only possible with logs from elsewhere) or no
    positive propensity are excluded and counted.
    """
    values = unit_values(experiment_id, [metric_key(metric)], kind=kind)
    u = values.table
    y, p = values.value(metric_key(metric)), u.c.propensity
    one = float_constant(1.0)
    rows = conn.execute(
        select(
            u.c.context,
            u.c.arm,
            func.count(),
            func.sum(one / p),
            func.sum(one / (p * p)),
            func.sum(y),
            func.sum(y * y),
            func.sum(y / p),
            func.sum(y / (p * p)),
            func.sum(y * y / (p * p)),
            func.min(p),
        )
        .where(u.c.arm == u.c.arm_max, p > 0)
        .group_by(u.c.context, u.c.arm)
        .order_by(u.c.context, u.c.arm)
    ).all()
    out = [
        ArmSums(str(row[0]), str(row[1]), int(row[2]), *(_as_float(v) for v in row[3:11]))
        for row in rows
    ]
    units = values.units
    excluded = conn.execute(
        select(func.count())
        .select_from(units)
        .where((units.c.arm != units.c.arm_max) | (units.c.propensity <= 0))
    ).scalar_one()
    return out, int(excluded)


def arm_version_counts(
    conn: Connection, experiment_id: int, kind: UnitKind
) -> list[tuple[str, int | None, str, int]]:
    """Bandit units per (context, weight version, arm); units with several arms left out."""
    units = unit_values(experiment_id, (), kind=kind, materialized=False).units
    rows = conn.execute(
        select(units.c.context, units.c.version, units.c.arm, func.count())
        .where(units.c.arm == units.c.arm_max)
        .group_by(units.c.context, units.c.version, units.c.arm)
    ).all()
    return [
        (str(c), None if version is None else int(version), str(arm), int(n))
        for c, version, arm, n in rows
    ]
