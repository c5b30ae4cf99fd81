"""Quantile metrics: per-variant sample quantiles and their delta-method comparison.

Definition
----------
A ``type: quantile`` metric is the ``q`` quantile over a variant's analysed units of the
per-unit value ``v`` (a unit's count or sum of an event type, windowed as other metrics;
units without such events have ``v = 0``). With the ``n`` values sorted,
``v_(1) <= ... <= v_(n)`` (1-based ranks):

- point estimate: linear interpolation, NumPy's default ``numpy.quantile(v, q)``
  (``method="linear"``, PostgreSQL's ``percentile_cont``): ``x = q (n - 1)``,
  ``Q = v_(floor x + 1) + (x - floor x) (v_(floor x + 2) - v_(floor x + 1))``;
- interval of one variant's quantile (Deng, Knoblich and Lu 2018, section on quantile
  metrics): ``[v_(r), v_(s)]`` with ``r = floor(n q - z sqrt(n) sigma)`` and
  ``s = ceil(n q + z sqrt(n) sigma)`` (clamped to ``[1, n]``, and widened to the two ranks
  the point estimate interpolates when a handful of units puts them outside), ``z =
  z_(1 - alpha/2)``;
- standard error of ``Q`` by the delta method, ``sigma / (sqrt(n) f(Q))``, with the density
  ``f`` estimated by inverting that interval: ``f = ((s - r) / n) / (v_(s) - v_(r))``.

One unit is one observation here (the analysis unit is the randomisation unit and each unit
has one per-unit value), so the clustered form's ``sigma^2`` (the delta-method variance of
the share of observations below the quantile, per unit) is ``q (1 - q)``. The difference
``Q_t - Q_c`` has ``se = sqrt(se_t^2 + se_c^2)`` (independent arms), a z-test and a normal
interval; the relative lift ``Q_t / Q_c - 1`` the delta-method interval of `reports.stats`.
When ``v_(s) = v_(r)`` the quantile sits on a tie (a point mass, e.g. the zeros of
units without purchases): the density is infinite, the standard error 0, and a note says so.
Quantiles are not CUPED-adjusted and cannot be capped or a bandit reward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats as sps  # type: ignore[import-untyped, unused-ignore]

from reports.stats import Comparison, _relative_lift

__all__ = [
    "NOTE_TIE",
    "QuantileStats",
    "compare_quantiles",
    "interval_ranks",
    "method_text",
    "point_ranks",
    "quantile_label",
    "quantile_stats",
]

NOTE_TIE = "the quantile lies on a tie (a point mass): its density interval is empty, se 0"


def quantile_label(q: float) -> str:
    """``0.9`` -> ``"p90"``, ``0.995`` -> ``"p99.5"``."""
    return f"p{round(q * 100, 6):g}"


def method_text(q: float) -> str:
    """One line on how a quantile metric is estimated (for the reports)."""
    return (
        f"{quantile_label(q)} of the per-unit value (linear interpolation, numpy.quantile); "
        "interval: order statistics, difference by the delta method with the density "
        "from the interval (Deng, Knoblich and Lu 2018); not CUPED-adjusted"
    )


def _z(alpha: float) -> float:
    return float(sps.norm.isf(alpha / 2.0))


def point_ranks(n: int, q: float) -> tuple[int, int]:
    """The 1-based ranks of the two order statistics the linear quantile interpolates."""
    low = math.floor(q * (n - 1)) + 1
    return low, min(low + 1, n)


def interval_ranks(n: int, q: float, alpha: float) -> tuple[int, int]:
    """(r, s): the 1-based ranks of the order-statistic interval of the ``q`` quantile."""
    half = _z(alpha) * math.sqrt(n * q * (1.0 - q))
    low, high = point_ranks(n, q)
    # Widened (only for a handful of units) to hold the ranks the estimate interpolates.
    r = max(1, min(math.floor(n * q - half), low))
    s = min(n, max(math.ceil(n * q + half), high))
    return r, s


@dataclass(frozen=True)
class QuantileStats:
    """One variant's sample quantile: ``n``, the point estimate, the interval and its se.

    ``value`` is None without units; ``se`` and ``ci`` are None with fewer than 2 units.
    """

    n: int
    q: float
    value: float | None
    ci: tuple[float, float] | None
    se: float | None
    note: str | None = None


def quantile_stats(
    n: int, q: float, order_statistics: Mapping[int, float], alpha: float
) -> QuantileStats:
    """The quantile statistics from the order statistics (1-based rank -> value) that
    `point_ranks` and `interval_ranks` name (others may be present)."""
    if n == 0:
        return QuantileStats(0, q, None, None, None, "no units")
    low, high = point_ranks(n, q)
    x = q * (n - 1)
    below, above = order_statistics[low], order_statistics[high]
    value = below + (x - math.floor(x)) * (above - below)
    if n < 2:
        return QuantileStats(n, q, value, None, None, f"needs at least 2 units (got {n})")
    r, s = interval_ranks(n, q, alpha)
    lower, upper = order_statistics[r], order_statistics[s]
    if upper == lower:
        return QuantileStats(n, q, value, (lower, upper), 0.0, NOTE_TIE)
    density = ((s - r) / n) / (upper - lower)
    se = math.sqrt(q * (1.0 - q) / n) / density
    return QuantileStats(n, q, value, (lower, upper), se)


def compare_quantiles(
    treatment: QuantileStats, baseline: QuantileStats, alpha: float
) -> Comparison:
    """Treatment minus baseline quantile: z-test, normal interval, relative lift."""
    z = _z(alpha)
    notes = [note for note in (treatment.note, baseline.note) if note]
    note = "; ".join(dict.fromkeys(notes)) or None
    if treatment.value is None or baseline.value is None:
        return Comparison(None, None, None, None, None, note)
    diff = treatment.value - baseline.value
    var_t = None if treatment.se is None else treatment.se**2
    var_c = None if baseline.se is None else baseline.se**2
    lift, lift_ci, lift_note = _relative_lift(treatment.value, var_t, baseline.value, var_c, z)
    if lift_note:
        note = "; ".join(x for x in (note, lift_note) if x)
    if var_t is None or var_c is None:
        return Comparison(diff, None, lift, lift_ci, None, note)
    se = math.sqrt(var_t + var_c)
    lift_se = None if lift_ci is None else (lift_ci[1] - lift_ci[0]) / (2.0 * z)
    if se == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
        return Comparison(diff, (diff, diff), lift, lift_ci, p, note, 0.0, lift_se)
    p_value = float(2.0 * sps.norm.sf(abs(diff) / se))
    ci = (diff - z * se, diff + z * se)
    return Comparison(diff, ci, lift, lift_ci, p_value, note, se, lift_se)
