"""Per-variant sufficient statistics of a metric (counts, sums, sums of squares), checked.

`MeanStats` (proportion and mean metrics) and `RatioStats` (ratio metrics) are what the
SQL aggregation returns and what every estimate and test in `reports.stats` starts from.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "MIN_UNITS",
    "ROUNDING_RTOL",
    "MeanStats",
    "RatioStats",
    "as_count",
    "as_finite",
    "finite_or_none",
    "mean_stats_from_values",
    "ratio_stats_from_values",
    "ratio_variance",
]

#: Relative tolerance used to tell rounding noise from inconsistent sums:
#: a centred sum of squares below ``-_CONSISTENCY_RTOL * sum_sq`` is an error.
_CONSISTENCY_RTOL: float = 1e-9

#: Relative resolving power of the one-pass (sufficient-statistics) formulas.
#: A centred sum of squares within ``ROUNDING_RTOL`` of the raw sum of squares
#: it was computed from (a coefficient of variation below ~3e-6) cannot be told
#: apart from rounding noise and is treated as exactly 0; likewise two
#: zero-variance arms whose values agree to this relative precision are equal.
ROUNDING_RTOL: float = 1e-11

MIN_UNITS: int = 2


# ---------------------------------------------------------------------------
# Small numerical helpers
# ---------------------------------------------------------------------------


def as_count(value: Any, name: str) -> int:
    """Coerce ``value`` to a non-negative ``int`` or raise."""
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be an integer count, got bool")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer count, got {type(value).__name__}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
    return int(count)


def as_finite(value: Any, name: str) -> float:
    """Coerce ``value`` to a finite ``float`` or raise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _centered(sum_ab: float, sum_a: float, sum_b: float, n: int) -> float:
    """Return the centred cross-product ``sum (a - mean_a)(b - mean_b)``.

    Computed as ``sum_ab - sum_a * (sum_b / n)``; dividing before multiplying
    keeps the intermediate from overflowing as long as the sums themselves
    are finite.
    """
    return sum_ab - sum_a * (sum_b / n)


def _check_sum_of_squares(centred: float, sum_sq: float, name: str) -> None:
    """Reject a centred sum of squares that is negative beyond rounding noise."""
    if centred < -_CONSISTENCY_RTOL * abs(sum_sq):
        raise ValueError(
            f"inconsistent sufficient statistics: {name} implies a negative "
            f"variance (centred sum of squares {centred!r})"
        )


def _denoise(centred: float, scale: float) -> float:
    """Clamp a centred sum of squares that is rounding noise (or negative) to 0."""
    return 0.0 if centred <= ROUNDING_RTOL * abs(scale) else centred


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ---------------------------------------------------------------------------
# Sufficient statistics
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanStats:
    """Per-variant sufficient statistics of a per-unit value.

    Used for both *mean* metrics (per-unit sums such as revenue per user)
    and *proportion* metrics (per-unit 0/1 flags, for which
    ``total_sq == total``).

    Parameters
    ----------
    n : int
        Number of units (users) in the variant.
    total : float
        Sum of the per-unit values, ``sum_i v_i``.
    total_sq : float
        Sum of the squared per-unit values, ``sum_i v_i**2``.

    Raises
    ------
    TypeError
        If a field is not a number (``n`` must be an integer).
    ValueError
        If a field is not finite, ``n`` is negative, ``n == 0`` with non-zero
        sums, or ``total_sq`` is smaller than ``total**2 / n`` by more than
        rounding noise (which would mean a negative variance).

    Notes
    -----
    With :math:`S_1 = \\sum_i v_i` and :math:`S_2 = \\sum_i v_i^2`,

    .. math::

        \\bar v = S_1 / n, \\qquad
        s^2 = \\frac{S_2 - S_1^2 / n}{n - 1}, \\qquad
        \\widehat{\\mathrm{se}}(\\bar v) = \\sqrt{s^2 / n}.

    The one-pass formula for :math:`s^2` suffers from cancellation when the
    mean is large compared with the standard deviation: a centred sum of
    squares :math:`S_2 - S_1^2/n` that is negative, or positive but below
    ``1e-11 * S_2`` (coefficient of variation under ~3e-6, beyond what the
    formula can resolve in double precision), is rounding noise and is
    clamped to 0.  Clearly negative values (below ``-1e-9 * S_2``) cannot come
    from rounding and are rejected as inconsistent.
    """

    n: int
    total: float
    total_sq: float

    def __post_init__(self) -> None:
        n = as_count(self.n, "n")
        total = as_finite(self.total, "total")
        total_sq = as_finite(self.total_sq, "total_sq")
        if total_sq < 0:
            raise ValueError(f"total_sq must be >= 0, got {total_sq}")
        if n == 0 and (total != 0 or total_sq != 0):
            raise ValueError("n == 0 requires total == 0 and total_sq == 0")
        if n > 0:
            _check_sum_of_squares(_centered(total_sq, total, total, n), total_sq, "total_sq")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "total_sq", total_sq)

    @property
    def mean(self) -> float | None:
        """Sample mean, or ``None`` when there are no units."""
        if self.n == 0:
            return None
        return self.total / self.n

    @property
    def variance(self) -> float | None:
        """Sample variance (ddof=1), or ``None`` with fewer than 2 units."""
        if self.n < MIN_UNITS:
            return None
        centred = _centered(self.total_sq, self.total, self.total, self.n)
        return finite_or_none(_denoise(centred, self.total_sq) / (self.n - 1))

    @property
    def se_mean(self) -> float | None:
        """Standard error of the mean, or ``None`` with fewer than 2 units."""
        variance = self.variance
        if variance is None:
            return None
        return math.sqrt(variance / self.n)


@dataclass(frozen=True)
class RatioStats:
    """Per-variant sufficient statistics of per-unit (numerator, denominator).

    Parameters
    ----------
    n : int
        Number of units (users) in the variant.
    num : float
        :math:`\\sum_i x_i`, sum of the per-unit numerators (e.g. clicks).
    den : float
        :math:`\\sum_i y_i`, sum of the per-unit denominators (e.g. impressions).
    num_sq : float
        :math:`\\sum_i x_i^2`.
    den_sq : float
        :math:`\\sum_i y_i^2`.
    num_den : float
        :math:`\\sum_i x_i y_i`.

    Raises
    ------
    TypeError, ValueError
        As `MeanStats`; here the sums must also imply a positive semi-definite
        covariance matrix (beyond rounding noise).

    Notes
    -----
    The metric is :math:`R = \\sum x / \\sum y = \\bar x / \\bar y`. With the
    sample (ddof=1) moments

    .. math::

        s_x^2 = \\frac{\\sum x^2 - (\\sum x)^2/n}{n-1},\\quad
        s_y^2 = \\frac{\\sum y^2 - (\\sum y)^2/n}{n-1},\\quad
        s_{xy} = \\frac{\\sum xy - \\sum x \\sum y / n}{n-1},

    the delta method (first-order Taylor expansion of :math:`g(a, b) = a/b`
    around :math:`(\\mu_x, \\mu_y)`, gradient
    :math:`(1/\\mu_y, -\\mu_x/\\mu_y^2)`) gives

    .. math::

        \\operatorname{Var}(R) \\approx \\frac{1}{n}\\left(
            \\frac{s_x^2}{\\mu_y^2}
            - \\frac{2\\mu_x s_{xy}}{\\mu_y^3}
            + \\frac{\\mu_x^2 s_y^2}{\\mu_y^4}\\right)
        = \\frac{s^2_{x - R y}}{n \\mu_y^2}.

    The quadratic form is non-negative in exact arithmetic. It is evaluated
    as :math:`(s_x^2 - 2 R s_{xy} + R^2 s_y^2) / (n \\mu_y^2)`; as for
    :class:`MeanStats`, a bracket that is negative or below ``1e-11`` of the
    raw sums it is computed from is rounding noise and is clamped to 0.
    """

    n: int
    num: float
    den: float
    num_sq: float
    den_sq: float
    num_den: float

    def __post_init__(self) -> None:
        n = as_count(self.n, "n")
        values = {
            name: as_finite(getattr(self, name), name)
            for name in ("num", "den", "num_sq", "den_sq", "num_den")
        }
        for name in ("num_sq", "den_sq"):
            if values[name] < 0:
                raise ValueError(f"{name} must be >= 0, got {values[name]}")
        if n == 0 and any(v != 0 for v in values.values()):
            raise ValueError("n == 0 requires all sums to be 0")
        if n > 0:
            sxx = _centered(values["num_sq"], values["num"], values["num"], n)
            syy = _centered(values["den_sq"], values["den"], values["den"], n)
            sxy = _centered(values["num_den"], values["num"], values["den"], n)
            _check_sum_of_squares(sxx, values["num_sq"], "num_sq")
            _check_sum_of_squares(syy, values["den_sq"], "den_sq")
            slack = _CONSISTENCY_RTOL * values["num_sq"] * values["den_sq"]
            if sxy * sxy > max(sxx, 0.0) * max(syy, 0.0) + slack:
                raise ValueError(
                    "inconsistent sufficient statistics: num_den implies a "
                    "correlation outside [-1, 1]"
                )
        object.__setattr__(self, "n", n)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def ratio(self) -> float | None:
        """``num / den``, or ``None`` when there are no units or ``den == 0``."""
        if self.n == 0 or self.den == 0:
            return None
        return finite_or_none(self.num / self.den)

    @property
    def se_ratio(self) -> float | None:
        """Delta-method standard error of :attr:`ratio`.

        ``None`` with fewer than 2 units or a zero total denominator.
        """
        variance = ratio_variance(self)
        return None if variance is None else math.sqrt(variance)


def ratio_variance(stats: RatioStats) -> float | None:
    """Delta-method variance of the ratio estimate (see :class:`RatioStats`)."""
    n = stats.n
    if n < MIN_UNITS or stats.den == 0:
        return None
    sxx = _denoise(_centered(stats.num_sq, stats.num, stats.num, n), stats.num_sq)
    syy = _denoise(_centered(stats.den_sq, stats.den, stats.den, n), stats.den_sq)
    sxy = _centered(stats.num_den, stats.num, stats.den, n)
    r = stats.num / stats.den  # == mu_x / mu_y
    # (1/n)(var_x/mu_y^2 - 2 mu_x cov/mu_y^3 + mu_x^2 var_y/mu_y^4) factored as
    # (var_x - 2 r cov + r^2 var_y) / (n mu_y^2): no high powers, and the
    # bracket is the sample variance of the residuals x_i - r y_i.  Its rounding
    # noise is relative to the raw sums it is built from.
    quad = sxx - 2.0 * r * sxy + r * r * syy
    scale = stats.num_sq + 2.0 * abs(r * stats.num_den) + r * r * stats.den_sq
    quad = _denoise(quad, scale) / (n - 1)
    # quad / (n mu_y^2) == quad * n / den^2; dividing by den twice (non-zero)
    # cannot raise ZeroDivisionError even if den^2 would underflow to 0.
    return finite_or_none(quad * n / stats.den / stats.den)


# ---------------------------------------------------------------------------
# Helpers building sufficient statistics from raw per-unit arrays
# ---------------------------------------------------------------------------


def _sums(*products: tuple[NDArray[np.float64], NDArray[np.float64] | None]) -> list[float]:
    """Sums (``b is None``) or dot products of per-unit arrays, as floats.

    Raises ``ValueError`` instead of warning when a sum overflows.
    """
    out: list[float] = []
    with np.errstate(over="ignore", invalid="ignore"):
        for a, b in products:
            out.append(float(a.sum() if b is None else np.dot(a, b)))
    if not all(math.isfinite(v) for v in out):
        raise ValueError("sums of the per-unit values overflow float64")
    return out


def _as_vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values")
    return arr


def mean_stats_from_values(values: ArrayLike) -> MeanStats:
    """Build :class:`MeanStats` from per-unit values (one per user).

    Parameters
    ----------
    values : array_like
        One-dimensional per-unit values (0/1 for proportions).

    Returns
    -------
    MeanStats
    """
    arr = _as_vector(values, "values")
    total, total_sq = _sums((arr, None), (arr, arr))
    return MeanStats(n=int(arr.size), total=total, total_sq=total_sq)


def ratio_stats_from_values(num: ArrayLike, den: ArrayLike) -> RatioStats:
    """Build :class:`RatioStats` from per-unit numerators and denominators.

    Parameters
    ----------
    num, den : array_like
        One-dimensional per-unit numerators and denominators of equal length.

    Returns
    -------
    RatioStats
    """
    x = _as_vector(num, "num")
    y = _as_vector(den, "den")
    if x.shape != y.shape:
        raise ValueError(f"num and den differ in length ({x.size} vs {y.size})")
    sx, sy, sxx, syy, sxy = _sums((x, None), (y, None), (x, x), (y, y), (x, y))
    return RatioStats(n=int(x.size), num=sx, den=sy, num_sq=sxx, den_sq=syy, num_den=sxy)
