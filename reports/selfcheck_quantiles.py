"""Self-check of quantile metrics: A/A false-positive rate and CI coverage of the p90.

Vectorised over replications with the formulas of `reports.quantiles` (linear-interpolation
point estimate, order-statistic interval, delta-method standard error with the density from
the interval), on the zero-inflated lognormal revenue of `reports.selfcheck_methods`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special  # type: ignore[import-untyped, unused-ignore]

from reports.quantiles import _z, interval_ranks, point_ranks

__all__ = ["QUANTILE", "quantile_arrays", "quantile_truth"]

Array = NDArray[Any]
QUANTILE = 0.9
"""The self-checked quantile: the p90 of revenue per unit (in its continuous part)."""


def _arm(values: Array, q: float, alpha: float) -> tuple[Array, Array]:
    """Per replication (row): the sample quantile and its delta-method standard error."""
    ordered = np.sort(values, axis=1)
    n = ordered.shape[1]
    low, high = point_ranks(n, q)
    x = q * (n - 1)
    below, above = ordered[:, low - 1], ordered[:, high - 1]
    value = below + (x - math.floor(x)) * (above - below)
    r, s = interval_ranks(n, q, alpha)
    width = ordered[:, s - 1] - ordered[:, r - 1]
    se = math.sqrt(q * (1.0 - q) / n) * width / ((s - r) / n)
    return value, se


def quantile_arrays(t: Array, c: Array, q: float, alpha: float) -> dict[str, Array]:
    """Per replication: the difference of the ``q`` quantiles, its z-test and interval."""
    q_t, se_t = _arm(t, q, alpha)
    q_c, se_c = _arm(c, q, alpha)
    diff = q_t - q_c
    se = np.hypot(se_t, se_c)
    z = _z(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, special.erfc(np.abs(diff) / se / math.sqrt(2.0)), diff == 0)
    return {
        "diff": diff,
        "se": se,
        "p": p.astype(np.float64),
        "lo": diff - z * se,
        "hi": diff + z * se,
    }


def quantile_truth(conversion: float, log_mu: float, log_sigma: float, lift: float) -> float:
    """The true difference of the ``QUANTILE`` quantiles of the zero-inflated lognormal
    revenue with scales ``lift`` and 1: ``(lift - 1) exp(mu + sigma z)``, ``z`` the normal
    quantile at ``1 - (1 - q) / conversion`` (the share of buyers below it)."""
    share = 1.0 - (1.0 - QUANTILE) / conversion
    if not 0.0 < share < 1.0:
        raise ValueError(f"the p{QUANTILE * 100:g} lies on the zeros (conversion {conversion})")
    control = math.exp(log_mu + log_sigma * float(special.ndtri(share)))
    return (lift - 1.0) * control
