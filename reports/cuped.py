"""CUPED: regression adjustment of a per-unit metric with its pre-experiment value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reports.sufficient import MeanStats

__all__ = ["CovariateSums", "CupedResult", "cuped_adjust"]


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
