"""Inverse-propensity-weighted estimates of a bandit arm's mean reward (pure statistics).

See docs/statistics.md, section "Bandit experiments", for the estimators and their variances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["ArmSums", "IpwEstimate", "hajek", "horvitz_thompson"]


@dataclass(frozen=True)
class ArmSums:
    """Per (context, arm) sums over bandit units i with reward y_i and propensity p_i.

    ``inv_p = sum 1/p``, ``inv_p2 = sum 1/p^2``, ``y = sum y``, ``y2 = sum y^2``,
    ``y_p = sum y/p``, ``y_p2 = sum y/p^2``, ``y2_p2 = sum y^2/p^2``.
    """

    context: str
    arm: str
    units: int
    inv_p: float
    inv_p2: float
    y: float
    y2: float
    y_p: float
    y_p2: float
    y2_p2: float
    min_propensity: float

    @classmethod
    def empty(cls, context: str, arm: str) -> ArmSums:
        """The sums of an arm no bandit unit got."""
        return cls(context, arm, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, math.nan)

    @classmethod
    def from_values(
        cls, context: str, arm: str, rewards: Sequence[float], propensities: Sequence[float]
    ) -> ArmSums:
        """The sums of explicit rewards and propensities (tests, small data)."""
        y = np.asarray(rewards, dtype=np.float64)
        p = np.asarray(propensities, dtype=np.float64)
        return cls(
            context,
            arm,
            int(y.size),
            float(np.sum(1 / p)),
            float(np.sum(1 / p**2)),
            float(y.sum()),
            float(np.sum(y**2)),
            float(np.sum(y / p)),
            float(np.sum(y / p**2)),
            float(np.sum(y**2 / p**2)),
            float(p.min()) if p.size else math.nan,
        )


@dataclass(frozen=True)
class IpwEstimate:
    """An inverse-propensity-weighted mean with its standard error and confidence interval."""

    mean: float | None
    se: float | None
    ci: tuple[float, float] | None


def _interval(mean: float, se: float, alpha: float) -> tuple[float, float]:
    z = float(scipy_stats.norm.ppf(1.0 - alpha / 2.0))
    return (mean - z * se, mean + z * se)


def horvitz_thompson(sums: ArmSums, total_units: int, alpha: float = 0.05) -> IpwEstimate:
    """Horvitz-Thompson estimate of the arm's mean reward over all ``total_units`` units.

    Parameters
    ----------
    sums : ArmSums
        The arm's sums (units that got the arm).
    total_units : int
        Bandit units of the context, every arm included (N).
    alpha : float
        Two-sided level of the normal confidence interval.

    Notes
    -----
    ``mu = (1/N) sum_i D_i y_i / p_i`` over all N units, D_i = 1 when unit i got the arm.
    With ``z_i = D_i y_i / p_i`` the terms ``z_i - mu`` are martingale differences under
    adaptive allocation (p_i is fixed before unit i's draw), so
    ``Var = (1/N^2) sum_i (z_i - mu)^2``, which the sums give as
    ``(y2_p2 - 2 mu y_p + N mu^2) / N^2`` (the units of other arms have z_i = 0).
    """
    n = total_units
    if n < 2 or sums.units == 0:
        return IpwEstimate(None, None, None)
    mean = sums.y_p / n
    var = max(sums.y2_p2 - 2.0 * mean * sums.y_p + n * mean * mean, 0.0) / n**2
    se = math.sqrt(var)
    return IpwEstimate(mean, se, _interval(mean, se, alpha))


def hajek(sums: ArmSums, alpha: float = 0.05) -> IpwEstimate:
    """Hajek (self-normalised IPW) estimate of the arm's mean reward.

    Notes
    -----
    ``mu = sum_i D_i y_i / p_i / sum_i D_i / p_i``. Linearising the ratio gives
    ``Var = sum_i D_i (y_i - mu)^2 / p_i^2 / (sum_i D_i / p_i)^2``, from the sums
    ``(y2_p2 - 2 mu y_p2 + mu^2 inv_p2) / inv_p^2``.
    """
    if sums.units < 2 or sums.inv_p <= 0:
        return IpwEstimate(None, None, None)
    mean = sums.y_p / sums.inv_p
    var = max(sums.y2_p2 - 2.0 * mean * sums.y_p2 + mean * mean * sums.inv_p2, 0.0)
    se = math.sqrt(var) / sums.inv_p
    return IpwEstimate(mean, se, _interval(mean, se, alpha))
