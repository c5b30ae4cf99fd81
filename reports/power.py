"""Sample size and minimum detectable effect of a two-sided, two-sample test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from scipy import optimize, special  # type: ignore[import-untyped, unused-ignore]

__all__ = ["PowerResult", "mde_at", "power_at", "units_per_variant"]


def _z(q: float) -> float:
    return float(special.ndtri(q))


def power_at(effect_size: float, units: float, alpha: float) -> float:
    """Power of the two-sided z-test with standardized effect ``d`` and ``units`` per variant.

    ``Phi(d sqrt(n/2) - z) + Phi(-d sqrt(n/2) - z)`` with ``z = z_{1-alpha/2}``,
    the formula of ``statsmodels.stats.power.NormalIndPower`` with ``ratio=1``.
    """
    shift = abs(effect_size) * math.sqrt(units / 2.0)
    crit = -_z(alpha / 2.0)
    return float(special.ndtr(shift - crit) + special.ndtr(-shift - crit))


@dataclass(frozen=True)
class PowerResult:
    """Units needed per variant and the inputs that led to them."""

    units_per_variant: int
    exact_units: float
    effect_size: float
    baseline: float
    target: float
    metric_type: str
    alpha: float
    power: float

    def to_dict(self) -> dict[str, float | int | str]:
        """JSON-able form."""
        return {
            "units_per_variant": self.units_per_variant,
            "total_units": 2 * self.units_per_variant,
            "exact_units": self.exact_units,
            "effect_size": self.effect_size,
            "baseline": self.baseline,
            "target": self.target,
            "metric_type": self.metric_type,
            "alpha": self.alpha,
            "power": self.power,
            "sides": 2,
        }


def units_per_variant(
    baseline: float,
    mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    metric_type: Literal["proportion", "mean"] = "proportion",
    sd: float | None = None,
    absolute: bool = False,
) -> PowerResult:
    """Units needed in each of two equal variants to detect ``mde`` with ``power``.

    Parameters
    ----------
    baseline : float
        Control's proportion (in ``(0, 1)``) or mean.
    mde : float
        Minimum detectable effect, relative to ``baseline`` unless ``absolute``.
    alpha : float
        Two-sided significance level.
    power : float
        Probability of detecting the effect, in ``(alpha, 1)``.
    metric_type : {"proportion", "mean"}
        Proportions use Cohen's arcsine effect size; means need ``sd``.
    sd : float, optional
        Per-unit standard deviation (means only).
    absolute : bool
        ``mde`` is an absolute difference rather than relative.

    Raises
    ------
    ValueError
        On inputs outside their ranges, with what was expected.

    Notes
    -----
    Effect size: proportions :math:`h = 2\\arcsin\\sqrt{p_1} - 2\\arcsin\\sqrt{p_0}`
    (``statsmodels.stats.proportion.proportion_effectsize``); means
    :math:`d = \\delta / \\sigma`. ``n`` solves ``power_at(d, n, alpha) == power``
    (both tails, as ``NormalIndPower.solve_power``) and is rounded up; close to
    :math:`2 (z_{1-\\alpha/2} + z_{\\text{power}})^2 / d^2`.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not alpha < power < 1.0:
        raise ValueError(f"power must be in (alpha, 1), got {power}")
    if not math.isfinite(mde) or mde == 0:
        raise ValueError(f"mde must be a non-zero number, got {mde}")
    target = baseline + mde if absolute else baseline * (1.0 + mde)
    if metric_type == "proportion":
        if not 0.0 < baseline < 1.0:
            raise ValueError(f"a proportion baseline must be in (0, 1), got {baseline}")
        if not 0.0 < target < 1.0:
            raise ValueError(
                f"baseline {baseline} with mde {mde} gives {target:.6g}, outside (0, 1); "
                "use --absolute for an absolute difference"
            )
        effect = 2.0 * math.asin(math.sqrt(target)) - 2.0 * math.asin(math.sqrt(baseline))
    elif metric_type == "mean":
        if sd is None or not sd > 0 or not math.isfinite(sd):
            raise ValueError("a mean metric needs --sd, the per-unit standard deviation (> 0)")
        if target == baseline:
            raise ValueError("the mde gives no difference (baseline is 0?); use --absolute")
        effect = (target - baseline) / sd
    else:
        raise ValueError(f"unknown metric type {metric_type!r}; choose proportion or mean")
    approx = 2.0 * ((-_z(alpha / 2.0) + _z(power)) / effect) ** 2
    exact = float(
        optimize.brentq(
            lambda n: power_at(effect, n, alpha) - power, 1e-9, 10.0 * approx + 10.0, xtol=1e-12
        )
    )
    return PowerResult(
        units_per_variant=max(2, math.ceil(exact - 1e-9)),
        exact_units=exact,
        effect_size=effect,
        baseline=baseline,
        target=target,
        metric_type=metric_type,
        alpha=alpha,
        power=power,
    )


def mde_at(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest absolute difference detectable with ``power`` given the difference's ``se``.

    :math:`(z_{1-\\alpha/2} + z_{\\text{power}})\\,\\mathrm{se}` (the far tail ignored).
    """
    return (-_z(alpha / 2.0) + _z(power)) * se
