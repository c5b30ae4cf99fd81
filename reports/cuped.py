"""CUPED: regression adjustment of a per-unit metric (or of a ratio's delta-method
linearisation) with its pre-experiment values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from reports.sufficient import MeanStats, RatioStats

__all__ = [
    "CovariateSums",
    "CupedResult",
    "RatioCovariateSums",
    "cuped_adjust",
    "cuped_adjust_ratio",
]


@dataclass(frozen=True)
class CovariateSums:
    """Per-variant sums of the pre-period covariate ``x`` next to the outcome ``y``.

    ``x = sum x_i``, ``x_sq = sum x_i^2``, ``xy = sum x_i y_i``; the outcome's
    own sums live in the variant's :class:`~reports.stats.MeanStats`.
    """

    x: float
    x_sq: float
    xy: float


@dataclass(frozen=True)
class CupedResult:
    """Adjusted statistics, the pooled slope and the variance reduction achieved.

    Attributes
    ----------
    applied : bool
        False when there is nothing to adjust with (no covariate variance or
        fewer than 2 units in a variant); ``stats`` are then the raw ones.
    theta : float
        Pooled within-variant regression slope of ``y`` on ``x``.
    variance_reduction : float
        ``1 - var(y - theta x) / var(y)``, pooled within variants (0 when not
        applied); in expectation the squared correlation ``rho^2``.
    stats : mapping of str to MeanStats
        Per variant, sufficient statistics of the adjusted per-unit values
        ``y_i - theta (x_i - xbar)`` (``xbar`` the pooled covariate mean).
    note : str or None
        Why it was not applied.
    """

    applied: bool
    theta: float
    variance_reduction: float
    stats: Mapping[str, MeanStats]
    note: str | None
    theta_denominator: float | None = None
    """A ratio's slope on the pre-period denominator (None: that covariate was not used)."""


def cuped_adjust(
    outcome: Mapping[str, MeanStats], covariate: Mapping[str, CovariateSums]
) -> CupedResult:
    """Adjust each variant's outcome statistics with the pooled CUPED slope.

    Notes
    -----
    With within-variant centred sums :math:`S^{(k)}_{xx}, S^{(k)}_{xy},
    S^{(k)}_{yy}` (e.g. :math:`S_{xy} = \\sum xy - \\sum x \\sum y / n`),

    .. math::

        \\theta = \\frac{\\sum_k S^{(k)}_{xy}}{\\sum_k S^{(k)}_{xx}},\\qquad
        \\bar y^{\\mathrm{cv}}_k = \\bar y_k - \\theta(\\bar x_k - \\bar x),\\qquad
        s^2_{\\mathrm{cv},k} = \\frac{S^{(k)}_{yy} - 2\\theta S^{(k)}_{xy}
            + \\theta^2 S^{(k)}_{xx}}{n_k - 1}.

    Pooling the slope across variants (Deng et al. 2013) keeps the estimator
    unbiased for the difference, because the covariate is measured before
    assignment; the adjusted statistics then go through the usual Welch test.
    The estimation of ``theta`` costs one degree of freedom overall, which is
    negligible at experiment sizes.
    """
    keys = list(outcome)
    pooled_n = sum(outcome[k].n for k in keys)
    if any(outcome[k].n < 2 for k in keys):
        return CupedResult(False, 0.0, 0.0, dict(outcome), "needs at least 2 units per variant")
    sxx = sxy = syy = 0.0
    centred: dict[str, tuple[float, float, float]] = {}
    for k in keys:
        y, c = outcome[k], covariate[k]
        kxx = max(c.x_sq - c.x * (c.x / y.n), 0.0)
        kxy = c.xy - c.x * (y.total / y.n)
        kyy = max(y.total_sq - y.total * (y.total / y.n), 0.0)
        centred[k] = (kxx, kxy, kyy)
        sxx, sxy, syy = sxx + kxx, sxy + kxy, syy + kyy
    # Rounding noise in a constant covariate must not produce a huge slope.
    x_scale = sum(covariate[k].x_sq for k in keys)
    if sxx <= 1e-11 * x_scale or sxx == 0.0:
        return CupedResult(
            False, 0.0, 0.0, dict(outcome), "no variation in the pre-experiment covariate"
        )
    theta = sxy / sxx
    x_bar = sum(covariate[k].x for k in keys) / pooled_n
    adjusted: dict[str, MeanStats] = {}
    adj_ss = 0.0
    for k in keys:
        y, c = outcome[k], covariate[k]
        kxx, kxy, kyy = centred[k]
        ss = max(kyy - 2.0 * theta * kxy + theta * theta * kxx, 0.0)
        adj_ss += ss
        mean = y.total / y.n - theta * (c.x / y.n - x_bar)
        adjusted[k] = MeanStats(n=y.n, total=mean * y.n, total_sq=ss + y.n * mean * mean)
    reduction = 1.0 - adj_ss / syy if syy > 0 else 0.0
    return CupedResult(True, theta, reduction, adjusted, None)


@dataclass(frozen=True)
class RatioCovariateSums:
    """Per-variant sums of a ratio's pre-period numerator ``a`` and denominator ``b`` next to
    its numerator ``x`` and denominator ``y`` (``xa = sum x_i a_i``, ...).

    ``present`` names the covariates that exist: ``"a"`` unless the numerator counts
    impressions (which have no history), ``"b"`` likewise for the denominator.
    """

    present: tuple[str, ...]
    a: float = 0.0
    aa: float = 0.0
    xa: float = 0.0
    ya: float = 0.0
    b: float = 0.0
    bb: float = 0.0
    xb: float = 0.0
    yb: float = 0.0
    ab: float = 0.0


def _not_applied(outcome: Mapping[str, RatioStats], note: str) -> CupedResult:
    return CupedResult(False, 0.0, 0.0, {}, note)


def cuped_adjust_ratio(
    outcome: Mapping[str, RatioStats], covariate: Mapping[str, RatioCovariateSums]
) -> CupedResult:
    """Adjust a ratio metric with its pre-period numerator and denominator (pooled slopes).

    Notes
    -----
    Each unit's delta-method linearisation in variant ``k``,
    :math:`z_i = R_k + (x_i - R_k y_i)/\bar y_k`, has mean :math:`R_k` and the ratio's
    delta-method variance (``s_z^2 / n`` equals ``Var(R_k)`` of `RatioStats`). CUPED is
    the regression of ``z`` on the covariates ``c = (a, b)`` (pre-period numerator and
    denominator) with slopes pooled within variants, as for means:

    .. math::

        \theta = \\Big(\\sum_k S^{(k)}_{cc}\\Big)^{-1} \\sum_k S^{(k)}_{cz},\\quad
        S^{(k)}_{cz} = (\textstyle\\sum x c - R_k \\sum y c)/\bar y_k,\\quad
        \bar z^{\\mathrm{cv}}_k = R_k - \theta^\top(\bar c_k - \bar c).

    The adjusted per-unit pseudo-values ``z_i - θᵀ(c_i - c̄)`` are returned as `MeanStats`
    (so Welch's test and the lift's delta method apply unchanged); their variance is
    :math:`(S_{zz} - 2\theta^\top S_{cz} + \theta^\top S_{cc}\theta)/(n_k - 1)`.
    """
    keys = list(outcome)
    if any(outcome[k].n < 2 for k in keys):
        return _not_applied(outcome, "needs at least 2 units per variant")
    if any(outcome[k].den == 0 for k in keys):
        return _not_applied(outcome, "a variant's denominator is 0")
    names = covariate[keys[0]].present
    if not names:
        return _not_applied(outcome, "impressions have no history")
    p = len(names)
    s_cc = np.zeros((p, p))
    s_cz = np.zeros(p)
    s_zz = 0.0
    per_variant: dict[str, tuple[float, np.ndarray, np.ndarray, np.ndarray, float]] = {}
    pooled_n = sum(outcome[k].n for k in keys)
    for k in keys:
        r, c = outcome[k], covariate[k]
        ratio, y_bar = r.num / r.den, r.den / r.n
        sums = {"a": c.a, "b": c.b}
        squares = {("a", "a"): c.aa, ("b", "b"): c.bb, ("a", "b"): c.ab, ("b", "a"): c.ab}
        with_x = {"a": c.xa, "b": c.xb}
        with_y = {"a": c.ya, "b": c.yb}
        total = np.array([sums[name] for name in names])
        k_cc = np.array([[squares[(u, v)] - sums[u] * sums[v] / r.n for v in names] for u in names])
        k_cz = np.array([(with_x[u] - ratio * with_y[u]) / y_bar for u in names])
        k_zz = max(r.num_sq - 2.0 * ratio * r.num_den + ratio * ratio * r.den_sq, 0.0) / y_bar**2
        per_variant[k] = (ratio, total, k_cc, k_cz, k_zz)
        s_cc += k_cc
        s_cz += k_cz
        s_zz += k_zz
    # Rounding noise in a constant covariate must not produce a huge slope.
    raw = {"a": sum(covariate[k].aa for k in keys), "b": sum(covariate[k].bb for k in keys)}
    flat = [s_cc[i, i] <= 1e-11 * raw[name] or s_cc[i, i] == 0.0 for i, name in enumerate(names)]
    if any(flat) or np.linalg.cond(s_cc) > 1e12:
        return _not_applied(outcome, "no variation in the pre-experiment covariates")
    theta = np.linalg.solve(s_cc, s_cz)
    c_bar = sum(per_variant[k][1] for k in keys) / pooled_n
    adjusted: dict[str, MeanStats] = {}
    adj_ss = 0.0
    for k in keys:
        ratio, total, k_cc, k_cz, k_zz = per_variant[k]
        n = outcome[k].n
        ss = max(k_zz - 2.0 * float(theta @ k_cz) + float(theta @ k_cc @ theta), 0.0)
        adj_ss += ss
        mean = ratio - float(theta @ (total / n - c_bar))
        adjusted[k] = MeanStats(n=n, total=mean * n, total_sq=ss + n * mean * mean)
    reduction = 1.0 - adj_ss / s_zz if s_zz > 0 else 0.0
    slopes = dict(zip(names, (float(t) for t in theta), strict=True))
    return CupedResult(True, slopes.get("a", 0.0), reduction, adjusted, None, slopes.get("b"))
