"""Self-check of capping, CUPED for ratios and quantiles: A/A false-positive rates, coverage.

Vectorised over replications like `reports.selfcheck`, with the formulas of
`reports.capping` (a pooled linear-interpolation percentile, ``numpy.percentile``) and of
`reports.cuped.cuped_adjust_ratio` (the linearisation regressed on the pre-period
numerator), followed by Welch's test. Its own generator (``[seed, 16]``) leaves the draws
of the other checks unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special  # type: ignore[import-untyped, unused-ignore]

from reports.selfcheck_quantiles import QUANTILE, quantile_arrays, quantile_truth

__all__ = [
    "CAP_PERCENTILE",
    "capped_arrays",
    "capped_truth",
    "method_checks",
    "ratio_cuped_arrays",
]

Array = NDArray[Any]
CAP_PERCENTILE = 0.99
"""The capped revenue metric is cut at the pooled 99th percentile."""
# Revenue per unit: zero-inflated lognormal (as `reports.selfcheck`), lift in scale.
CONVERSION, LOG_MU, LOG_SIGMA, REVENUE_LIFT = 0.3, 3.0, 1.0, 1.05
# CTR per unit: impressions 1 + Poisson(9), each unit's click probability ctr * w with
# w ~ Uniform(0.5, 1.5), shared by its pre-period (the covariate) and its experiment.
CTR_CONTROL, CTR_TREATMENT, IMPRESSIONS_MEAN = 0.05, 0.055, 9.0


def _dot(a: Array, b: Array) -> Array:
    out: Array = np.einsum("ij,ij->i", a, b)
    return out


def _welch(
    t: tuple[Array, Array, Array], c: tuple[Array, Array, Array], alpha: float
) -> dict[str, Array]:
    """Welch's test and interval on per-replication (n, sum, sum of squares)."""
    from reports.selfcheck import welch_arrays

    return welch_arrays(*t, *c, alpha)


def _revenue(rng: np.random.Generator, reps: int, n: int, scale: float) -> Array:
    y = rng.lognormal(LOG_MU, LOG_SIGMA, size=(reps, n)) * scale
    out: Array = y * (rng.random((reps, n)) < CONVERSION)
    return out


def capped_arrays(t: Array, c: Array, alpha: float) -> dict[str, Array]:
    """Per replication: both variants cut at the pooled `CAP_PERCENTILE`, then Welch."""
    threshold = np.percentile(np.concatenate([t, c], axis=1), CAP_PERCENTILE * 100, axis=1)
    sums = []
    for values in (t, c):
        cut = np.minimum(values, threshold[:, None])
        sums.append((np.full(len(cut), float(cut.shape[1])), cut.sum(1), _dot(cut, cut)))
    return _welch(sums[0], sums[1], alpha)


def _capped_mean(scale: float, tau: float) -> float:
    """``E[min(Y, tau)]`` of the zero-inflated lognormal revenue with scale `scale`."""
    mu = LOG_MU + math.log(scale)
    z = (math.log(tau) - mu) / LOG_SIGMA
    below = math.exp(mu + LOG_SIGMA**2 / 2.0) * float(special.ndtr(z - LOG_SIGMA))
    return CONVERSION * (below + tau * float(special.ndtr(-z)))


def capped_truth() -> float:
    """The true difference of capped means at the population threshold: the pooled
    (half treatment, half control) `CAP_PERCENTILE` quantile of the two revenue laws."""

    def share_below(tau: float) -> float:
        parts = [
            1.0
            - CONVERSION * float(special.ndtr((LOG_MU + math.log(s) - math.log(tau)) / LOG_SIGMA))
            for s in (REVENUE_LIFT, 1.0)
        ]
        return sum(parts) / 2.0 - CAP_PERCENTILE

    tau = float(optimize.brentq(share_below, 1e-6, 1e7))
    return _capped_mean(REVENUE_LIFT, tau) - _capped_mean(1.0, tau)


def _ctr_units(
    rng: np.random.Generator, reps: int, n: int, ctr: float
) -> tuple[Array, Array, Array]:
    """(clicks, impressions, pre-period clicks) per unit."""
    w = rng.uniform(0.5, 1.5, size=(reps, n))
    impressions = 1.0 + rng.poisson(IMPRESSIONS_MEAN, size=(reps, n))
    pre_impressions = 1 + rng.poisson(IMPRESSIONS_MEAN, size=(reps, n))
    clicks = rng.binomial(impressions.astype(np.int64), ctr * w).astype(np.float64)
    pre_clicks = rng.binomial(pre_impressions, CTR_CONTROL * w).astype(np.float64)
    return clicks, impressions, pre_clicks


def ratio_cuped_arrays(
    t: tuple[Array, Array, Array], c: tuple[Array, Array, Array], alpha: float
) -> dict[str, Array]:
    """`cuped_adjust_ratio` with one covariate (the pre-period numerator), then Welch."""
    parts = []
    for x, y, a in (t, c):
        n = float(x.shape[1])
        ratio = x.sum(1) / y.sum(1)
        y_bar = y.mean(1)
        k_zz = (_dot(x, x) - 2 * ratio * _dot(x, y) + ratio**2 * _dot(y, y)) / y_bar**2
        k_cz = (_dot(x, a) - ratio * _dot(y, a)) / y_bar
        k_cc = _dot(a, a) - a.sum(1) ** 2 / n
        parts.append((n, ratio, a.sum(1), k_zz, k_cz, k_cc))
    theta = (parts[0][4] + parts[1][4]) / (parts[0][5] + parts[1][5])
    c_bar = (parts[0][2] + parts[1][2]) / (parts[0][0] + parts[1][0])
    sums = []
    for n, ratio, a_sum, k_zz, k_cz, k_cc in parts:
        ss = np.maximum(k_zz - 2 * theta * k_cz + theta**2 * k_cc, 0.0)
        mean = ratio - theta * (a_sum / n - c_bar)
        sums.append((np.full(len(mean), n), mean * n, ss + n * mean * mean))
    return _welch(sums[0], sums[1], alpha)


def method_checks(
    seed: int,
    replications: int,
    units_per_variant: int,
    alpha: float,
    collect: Callable[[int, Callable[[int], dict[str, Array]]], dict[str, Array]],
    rate_check: Callable[..., Any],
) -> list[Any]:
    """The capping, ratio-CUPED and quantile checks (A/A false-positive rate, 95% coverage).

    The quantile revenue comes from its own generator (``[seed, 17]``), so the draws of the
    other checks are those they had before it was added."""
    rng = np.random.default_rng([seed, 16])
    rng_quantile = np.random.default_rng([seed, 17])
    n = units_per_variant
    true_capped = capped_truth()
    true_ctr = CTR_TREATMENT - CTR_CONTROL  # E[w] = 1: the ratio of expectations is ctr
    true_quantile = quantile_truth(CONVERSION, LOG_MU, LOG_SIGMA, REVENUE_LIFT)

    def covers(r: dict[str, Array], truth: float) -> Array:
        out: Array = (r["lo"] <= truth) & (truth <= r["hi"])
        return out

    def draw(size: int) -> dict[str, Array]:
        aa_cap = capped_arrays(_revenue(rng, size, n, 1.0), _revenue(rng, size, n, 1.0), alpha)
        ab_cap = capped_arrays(
            _revenue(rng, size, n, REVENUE_LIFT), _revenue(rng, size, n, 1.0), alpha
        )
        aa_ratio = ratio_cuped_arrays(
            _ctr_units(rng, size, n, CTR_CONTROL), _ctr_units(rng, size, n, CTR_CONTROL), alpha
        )
        ab_ratio = ratio_cuped_arrays(
            _ctr_units(rng, size, n, CTR_TREATMENT), _ctr_units(rng, size, n, CTR_CONTROL), alpha
        )
        aa_q = quantile_arrays(
            _revenue(rng_quantile, size, n, 1.0),
            _revenue(rng_quantile, size, n, 1.0),
            QUANTILE,
            alpha,
        )
        ab_q = quantile_arrays(
            _revenue(rng_quantile, size, n, REVENUE_LIFT),
            _revenue(rng_quantile, size, n, 1.0),
            QUANTILE,
            alpha,
        )
        return {
            "quantile_aa": aa_q["p"] < alpha,
            "quantile_cover": covers(ab_q, true_quantile),
            "cap_aa": aa_cap["p"] < alpha,
            "cap_cover": covers(ab_cap, true_capped),
            "ratio_aa": aa_ratio["p"] < alpha,
            "ratio_cover": covers(ab_ratio, true_ctr),
        }

    res = collect(replications, draw)
    capped = f"revenue capped at the pooled p{CAP_PERCENTILE * 100:g}"
    ratio = "ratio (CTR), CUPED with pre-period clicks"
    quantile = f"revenue p{QUANTILE * 100:g} (quantile metric)"
    return [
        rate_check("A/A false-positive rate", f"{capped}: Welch t", res["cap_aa"], alpha, "="),
        rate_check("A/A false-positive rate", f"{ratio}: Welch t", res["ratio_aa"], alpha, "="),
        rate_check("95% CI coverage", f"{capped}: difference", res["cap_cover"], 1 - alpha, "="),
        rate_check("95% CI coverage", f"{ratio}: difference", res["ratio_cover"], 1 - alpha, "="),
        rate_check(
            "A/A false-positive rate", f"{quantile}: delta method", res["quantile_aa"], alpha, "="
        ),
        rate_check(
            "95% CI coverage", f"{quantile}: difference", res["quantile_cover"], 1 - alpha, "="
        ),
    ]
