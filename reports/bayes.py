"""Bayesian view of a comparison: posterior of the relative lift and chance to beat control."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "DEFAULT_DRAWS",
    "BayesResult",
    "LiftPrior",
    "beta_binomial",
    "expected_losses",
    "normal_approximation",
]

DEFAULT_DRAWS: int = 200_000
"""Monte Carlo draws for Beta posteriors: the chance's MC standard error is <= 0.0011."""


@dataclass(frozen=True)
class BayesResult:
    """Posterior summary of treatment versus control.

    Attributes
    ----------
    chance_to_beat_control : float
        Posterior probability that the treatment's metric is larger.
    lift_mean : float or None
        Posterior mean of the relative lift ``m_t / m_c - 1``.
    lift_interval : tuple of float or None
        Central ``1 - alpha`` credible interval of the relative lift.
    method : str
        ``"beta-binomial"`` or ``"normal"``.
    risk_treatment, risk_control : float or None
        Expected loss of shipping the treatment, ``E[max(-L, 0)]``, and of keeping the
        control, ``E[max(L, 0)]``, in units of the relative lift ``L`` (None when the lift
        is undefined).
    """

    chance_to_beat_control: float
    lift_mean: float | None
    lift_interval: tuple[float, float] | None
    method: str
    risk_treatment: float | None = None
    risk_control: float | None = None


@dataclass(frozen=True)
class LiftPrior:
    """A normal prior on the relative lift ``L = m_t / m_c - 1``: ``L ~ N(mean, stddev²)``."""

    mean: float
    stddev: float


def expected_losses(mean: float, sd: float) -> tuple[float, float]:
    """``(E[max(-L, 0)], E[max(L, 0)])`` for ``L ~ N(mean, sd²)``: the risks of shipping
    and of not shipping (``E[max(L, 0)] = mean Φ(mean/sd) + sd φ(mean/sd)``)."""
    if sd <= 0:
        return max(-mean, 0.0), max(mean, 0.0)
    z = mean / sd
    density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    keep = mean * float(special.ndtr(z)) + sd * density
    ship = keep - mean  # E[max(-L, 0)] = E[max(L, 0)] - E[L]
    return max(ship, 0.0), max(keep, 0.0)


def beta_binomial(
    successes_t: int,
    n_t: int,
    successes_c: int,
    n_c: int,
    alpha: float = 0.05,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> BayesResult:
    """Beta-Binomial posterior with uniform Beta(1, 1) priors, by seeded Monte Carlo.

    Notes
    -----
    :math:`p_k \\mid x_k \\sim \\mathrm{Beta}(1 + x_k, 1 + n_k - x_k)`; the chance
    to beat control is :math:`P(p_t > p_c)` and the lift :math:`p_t/p_c - 1`,
    both estimated from ``draws`` joint samples (``numpy`` generator seeded
    with ``seed``, so a report is reproducible).
    """
    for name, x, n in (("treatment", successes_t, n_t), ("control", successes_c, n_c)):
        if n < 0 or x < 0 or x > n:
            raise ValueError(f"{name}: need 0 <= successes <= n, got {x} of {n}")
    rng = np.random.default_rng(seed)
    p_t = rng.beta(1 + successes_t, 1 + n_t - successes_t, size=draws)
    p_c = rng.beta(1 + successes_c, 1 + n_c - successes_c, size=draws)
    lift = p_t / p_c - 1.0
    lo, hi = np.quantile(lift, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BayesResult(
        chance_to_beat_control=float(np.mean(p_t > p_c)),
        lift_mean=float(np.mean(lift)),
        lift_interval=(float(lo), float(hi)),
        method="beta-binomial",
        risk_treatment=float(np.mean(np.maximum(-lift, 0.0))),
        risk_control=float(np.mean(np.maximum(lift, 0.0))),
    )


def normal_approximation(
    diff: float,
    se: float,
    rel_lift: float | None,
    rel_lift_se: float | None,
    alpha: float = 0.05,
    prior: LiftPrior | None = None,
) -> BayesResult:
    """Normal posterior of the difference and of the relative lift: flat, or with a prior.

    Notes
    -----
    With a flat prior and :math:`\\hat\\Delta \\sim N(\\Delta, \\mathrm{se}^2)`
    the posterior is :math:`\\Delta \\sim N(\\hat\\Delta, \\mathrm{se}^2)`, so the
    chance to beat control is :math:`\\Phi(\\hat\\Delta/\\mathrm{se})`; the
    relative lift uses its delta-method standard error the same way. With
    ``se == 0`` the chance is 1, 0 or 0.5 by the sign of the difference.

    With a `prior` ``L ~ N(m0, s0²)`` on the relative lift, the posterior is the conjugate
    normal one on ``L`` (``1/s² = 1/s0² + 1/se_L²``, ``m = s² (m0/s0² + L̂/se_L²)``): the
    chance to beat control is ``Φ(m/s)``, the lift's mean ``m`` and its interval
    ``m ± z s``. The risks are ``E[max(∓L, 0)]`` under the posterior of ``L``.
    """
    if prior is not None and rel_lift is not None and rel_lift_se is not None and rel_lift_se > 0:
        precision = 1.0 / prior.stddev**2 + 1.0 / rel_lift_se**2
        post_sd = math.sqrt(1.0 / precision)
        post_mean = (prior.mean / prior.stddev**2 + rel_lift / rel_lift_se**2) / precision
        z = -float(special.ndtri(alpha / 2.0))
        ship, keep = expected_losses(post_mean, post_sd)
        return BayesResult(
            float(special.ndtr(post_mean / post_sd)),
            post_mean,
            (post_mean - z * post_sd, post_mean + z * post_sd),
            "normal with prior",
            ship,
            keep,
        )
    if se > 0:
        chance = float(special.ndtr(diff / se))
    else:
        chance = 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
    interval = None
    if rel_lift is not None and rel_lift_se is not None:
        z = -float(special.ndtri(alpha / 2.0))
        interval = (rel_lift - z * rel_lift_se, rel_lift + z * rel_lift_se)
    if not math.isfinite(chance):
        chance = 0.5
    risks: tuple[float | None, float | None] = (None, None)
    if rel_lift is not None and rel_lift_se is not None:
        risks = expected_losses(rel_lift, rel_lift_se)
    return BayesResult(chance, rel_lift, interval, "normal", *risks)
