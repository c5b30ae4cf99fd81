"""Always-valid inference under continuous monitoring: mSPRT p-values, confidence sequences."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reports.stats import Comparison

__all__ = [
    "DEFAULT_TUNING_UNITS",
    "SequentialResult",
    "always_valid",
    "always_valid_arrays",
    "mixture_ratio",
]

DEFAULT_TUNING_UNITS: int = 5000
"""Units per variant at which the confidence sequence is tightest (GrowthBook's default)."""


def mixture_ratio(
    units_per_variant: ArrayLike, alpha: float, tuning_units: float
) -> NDArray[np.float64]:
    """``r = tau^2 / V``: prior variance of the effect over the estimate's variance.

    ``tau^2 = rho^2 * V * n`` with ``n`` the mean units per variant, so ``tau``
    is fixed in units of the per-unit standard deviation and ``r = rho^2 n``
    grows with the data. ``rho^2 = (-2 log alpha + log(1 - 2 log alpha)) / n*``
    makes the boundary tightest at ``n*`` units per variant (Howard et al. 2021,
    eq. (3.8); the GrowthBook parametrisation).
    """
    two_log = -2.0 * math.log(alpha)
    rho_sq = (two_log + math.log1p(two_log)) / float(tuning_units)
    return rho_sq * np.asarray(units_per_variant, dtype=np.float64)


def always_valid_arrays(
    diff: ArrayLike,
    se: ArrayLike,
    units_per_variant: ArrayLike,
    alpha: float = 0.05,
    tuning_units: float = DEFAULT_TUNING_UNITS,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Vectorised always-valid p-value and confidence-sequence half-width.

    Returns
    -------
    p_value, half_width : ndarray
        ``p = min(1, 1 / Lambda)`` and the half-width ``h`` of the
        ``1 - alpha`` confidence sequence ``diff +- h``; ``p < alpha`` exactly
        when ``0`` is outside ``diff +- h``.

    Notes
    -----
    Normal-mixture likelihood ratio of :math:`H_0: \\Delta = 0` against
    :math:`\\Delta \\sim N(0, \\tau^2)` for an estimate
    :math:`\\hat\\Delta \\sim N(\\Delta, V)`, with :math:`r = \\tau^2/V`,
    :math:`z = \\hat\\Delta/\\sqrt V` (Johari et al. 2017):

    .. math::

        \\Lambda = \\frac{1}{\\sqrt{1 + r}}
            \\exp\\Big(\\frac{r}{1 + r}\\,\\frac{z^2}{2}\\Big),\\qquad
        h = \\sqrt{V}\\,\\sqrt{\\frac{1 + r}{r}\\,\\log\\frac{1 + r}{\\alpha^2}}.

    :math:`1/\\Lambda_n` is a nonnegative supermartingale under the null, so by
    Ville's inequality :math:`P(\\exists n: \\Lambda_n \\ge 1/\\alpha) \\le \\alpha`:
    peeking at any time keeps the error rate (asymptotically, with the
    plug-in variance).
    """
    d = np.asarray(diff, dtype=np.float64)
    v = np.square(np.asarray(se, dtype=np.float64))
    r = np.maximum(mixture_ratio(units_per_variant, alpha, tuning_units), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_sq = np.where(v > 0, d * d / v, np.where(d == 0, 0.0, np.inf))
    log_lambda = -0.5 * np.log1p(r) + 0.5 * (r / (1.0 + r)) * z_sq
    p = np.minimum(1.0, np.exp(-np.minimum(log_lambda, 745.0)))
    p = np.where(np.isinf(z_sq), 0.0, p)
    half = np.sqrt(v) * np.sqrt((1.0 + r) / r * (np.log1p(r) - 2.0 * math.log(alpha)))
    return p, half


@dataclass(frozen=True)
class SequentialResult:
    """Always-valid view of one comparison.

    Attributes
    ----------
    p_value : float
        Always-valid p-value at the current look.
    diff_ci : tuple of float
        ``1 - alpha`` confidence sequence of the difference at this look.
    rel_lift_ci : tuple of float or None
        The same width factor applied to the delta-method standard error of the
        relative lift (``None`` when the lift is undefined).
    boundary : float
        ``|diff| / se`` needed to stop now: the z-statistic boundary.
    tuning_units : float
        Units per variant at which the sequence is tightest.
    """

    p_value: float
    diff_ci: tuple[float, float]
    rel_lift_ci: tuple[float, float] | None
    boundary: float
    tuning_units: float


def always_valid(
    comparison: Comparison,
    units_per_variant: float,
    alpha: float = 0.05,
    tuning_units: float = DEFAULT_TUNING_UNITS,
) -> SequentialResult:
    """Always-valid p-value and confidence sequence of one comparison (`always_valid_arrays`).

    Its relative lift gets the same width factor on its delta-method standard error.
    """
    diff, se = comparison.diff, comparison.se
    rel_lift, rel_lift_se = comparison.rel_lift, comparison.rel_lift_se
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not tuning_units > 0:
        raise ValueError(f"tuning_units must be > 0, got {tuning_units!r}")
    if diff is None or se is None or se < 0 or not math.isfinite(se) or not math.isfinite(diff):
        raise ValueError("diff and se must be finite, se >= 0")
    n = max(float(units_per_variant), 1.0)
    p, _ = always_valid_arrays(diff, se, n, alpha, tuning_units)
    r = float(mixture_ratio(n, alpha, tuning_units))
    factor = math.sqrt((1.0 + r) / r * (math.log1p(r) - 2.0 * math.log(alpha)))
    h = factor * se
    lift_ci = None
    if rel_lift is not None and rel_lift_se is not None:
        lift_ci = (rel_lift - factor * rel_lift_se, rel_lift + factor * rel_lift_se)
    return SequentialResult(
        p_value=float(p),
        diff_ci=(diff - h, diff + h),
        rel_lift_ci=lift_ci,
        boundary=factor,
        tuning_units=float(tuning_units),
    )
