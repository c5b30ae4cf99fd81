"""The order statistics of quantile metrics, per variant, in one set-based SQL statement.

Both databases run the same statement (SQLite has no percentile function): the analysed
units' per-unit values numbered per variant by ``ROW_NUMBER() OVER (PARTITION BY code ORDER
BY v)`` with ``COUNT(*) OVER (PARTITION BY code)``, of which only a band of ranks around
``n q`` comes back: ``(rank - n q)^2 <= 2 z^2 n q (1 - q) + 8``, which holds every rank
within ``z sqrt(n q (1 - q)) + 2`` of ``n q`` (all that `reports.quantiles` reads) with
arithmetic alone. The database sorts; Python receives ``O(sqrt(n))`` rows per variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, Float, cast, func, literal, select
from sqlalchemy.orm import Session

from abplatform.config.quantiles import QuantileMetric
from reports.quantiles import QuantileStats, _z, quantile_stats
from reports.units import unit_values, value_key
from reports.windows import closed_key, windowed_key

__all__ = ["quantile_variant_stats"]


def quantile_variant_stats(
    connection: Connection | Session,
    experiment_id: int,
    variants: Sequence[str],
    metric: QuantileMetric,
    alpha: float,
    as_of: datetime | None = None,
) -> dict[str, QuantileStats]:
    """Each configured variant's `QuantileStats` of `metric` (units exposed to one known
    variant; windowed metrics: the units whose window has closed by ``as_of``)."""
    key = windowed_key(value_key(metric.event, metric.value), metric.window)
    keys = [key]
    closed = None
    if metric.window is not None:
        if as_of is None:
            raise ValueError(f"metric {metric.name!r} has a window: quantiles need as_of")
        closed = closed_key(metric.window, as_of)
        keys.append(closed)
    values = unit_values(experiment_id, keys, variants=variants)
    table = values.table
    value = values.value(key)
    analysed = [table.c.code == table.c.code_max, table.c.code >= 0]
    if closed is not None:
        analysed.append(values.value(closed) > 0)
    ranked = (
        select(
            table.c.code.label("code"),
            value.label("v"),
            func.row_number().over(partition_by=table.c.code, order_by=value).label("r"),
            func.count().over(partition_by=table.c.code).label("n"),
        )
        .where(*analysed)
        .subquery("ranked")
    )
    q = metric.q
    n = cast(ranked.c.n, Float)
    offset = cast(ranked.c.r, Float) - n * literal(q, Float)
    band = n * literal(2.0 * _z(alpha) ** 2 * q * (1.0 - q), Float) + literal(8.0, Float)
    rows = connection.execute(
        select(ranked.c.code, ranked.c.n, ranked.c.r, ranked.c.v).where(offset * offset <= band)
    ).all()
    found: dict[int, tuple[int, dict[int, float]]] = {}
    for code, count, rank, v in rows:
        found.setdefault(int(code), (int(count), {}))[1][int(rank)] = float(v)
    out = {}
    for i, variant in enumerate(variants):
        count, order = found.get(i, (0, {}))
        out[variant] = quantile_stats(count, q, order, alpha)
    return out
