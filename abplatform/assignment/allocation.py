"""Thompson allocation weights: each arm's posterior probability of being best (Monte Carlo
or quadrature), optionally top-two, with a floor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack

import numpy as np
from scipy import special

from abplatform.assignment.posteriors import (
    BetaPosterior,
    FloatArray,
    GaussianPosterior,
    Posterior,
)


def _sample_means(
    posteriors: Sequence[Sequence[Posterior]], draws: int, rng: np.random.Generator
) -> FloatArray:
    """Draws of every arm's mean reward, shape (contexts, draws, arms)."""
    kinds = {type(p) for row in posteriors for p in row}
    if len(kinds) != 1:
        raise ValueError(
            f"posteriors must all be of one kind, got {sorted(k.__name__ for k in kinds)}"
        )
    contexts, arms = len(posteriors), len(posteriors[0])
    if any(len(row) != arms for row in posteriors):
        raise ValueError("every context needs the same number of arms")
    shape = (contexts, draws, arms)
    if kinds == {BetaPosterior}:
        betas = [[p for p in row if isinstance(p, BetaPosterior)] for row in posteriors]
        alpha = np.array([[p.alpha for p in row] for row in betas])[:, None, :]
        beta = np.array([[p.beta for p in row] for row in betas])[:, None, :]
        beta_draws: FloatArray = rng.beta(alpha, beta, size=shape)
        return beta_draws
    gauss = [[p for p in row if isinstance(p, GaussianPosterior)] for row in posteriors]
    mu = np.array([[p.mu for p in row] for row in gauss])[:, None, :]
    a = np.array([[p.a for p in row] for row in gauss])[:, None, :]
    scale = np.array([[np.sqrt(p.b / (p.a * p.kappa)) for p in row] for row in gauss])
    t_draws: FloatArray = mu + scale[:, None, :] * rng.standard_t(2 * a, size=shape)
    return t_draws


def _beta_p_best_quadrature(alpha: FloatArray, beta: FloatArray, nodes: int = 40) -> FloatArray:
    """P(best) of Beta arms, shape (C, K), by trapezoid quadrature of pdf_i * prod_j F_j.

    The grid merges ``nodes`` points per arm spread over mean +- 8 sd (within [0, 1]), so every
    posterior, however narrow, is resolved; CDFs are cumulative trapezoids of the pdfs.
    """
    contexts, arms = alpha.shape
    total = alpha + beta
    mean = alpha / total
    sd = np.sqrt(alpha * beta / (total * total * (total + 1.0)))
    # Each arm's nodes span its bulk, mean +- 8 sd, clipped to the support [0, 1].
    low = np.clip(mean - 8.0 * sd, 0.0, 1.0)[..., None]
    high = np.clip(mean + 8.0 * sd, 0.0, 1.0)[..., None]
    x = (low + (high - low) * np.linspace(0.0, 1.0, nodes)).reshape(contexts, arms * nodes)
    ends = np.zeros((contexts, 1)), np.ones((contexts, 1))
    x = np.sort(np.concatenate([ends[0], x, ends[1]], axis=1), axis=1)  # (C, N)
    # Logs once per context, not per arm; clipping keeps 0 * log(0) finite (pdf(0) with
    # alpha = 1 is finite) and turns alpha > 1 at 0 into exp(-huge) = 0.
    tiny = np.finfo(np.float64).tiny
    log_x = np.log(np.maximum(x, tiny))[:, None, :]
    log_1mx = np.log1p(-np.minimum(x, 1.0 - np.finfo(np.float64).epsneg))[:, None, :]
    log_pdf = (
        (alpha[..., None] - 1.0) * log_x
        + (beta[..., None] - 1.0) * log_1mx
        - special.betaln(alpha, beta)[..., None]
    )
    pdf = np.exp(log_pdf)  # (C, K, N)
    dx = np.diff(x, axis=1)[:, None, :]
    steps = np.cumsum(0.5 * (pdf[..., 1:] + pdf[..., :-1]) * dx, axis=-1)
    cdf = np.concatenate([np.zeros((contexts, arms, 1)), steps], axis=-1)
    cdf /= cdf[..., -1:]
    # prod_{j != i} F_j as prefix * suffix products (no division by a zero CDF).
    ones = np.ones((contexts, 1, x.shape[1]))
    prefix = np.cumprod(np.concatenate([ones, cdf[:, :-1]], axis=1), axis=1)
    suffix = np.cumprod(np.concatenate([ones, cdf[:, :0:-1]], axis=1), axis=1)[:, ::-1]
    integrand = pdf * prefix * suffix
    p_best: FloatArray = (0.5 * (integrand[..., 1:] + integrand[..., :-1]) * dx).sum(axis=-1)
    p_best /= p_best.sum(axis=-1, keepdims=True)
    return p_best


def _top_two(p_best: FloatArray, second: FloatArray, beta: float) -> FloatArray:
    """Top-two Thompson allocation from P(best) (..., K) and second-best shares (..., K, K)."""
    # psi_i = beta * p_i + (1 - beta) * sum_{j != i} p_j * P(challenger = i | leader = j),
    # where the challenger is the best of a fresh draw conditioned on not being j:
    # P(challenger = i | leader = j) = p_i / (1 - p_j). When p_j == 1 that is 0/0 and the
    # share of draws in which i is second best (given j first) is used instead.
    arms = p_best.shape[-1]
    not_j = 1.0 - p_best[..., :, None]  # indexed [j, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        challenger = np.where(not_j > 0, p_best[..., None, :] / not_j, second)
    challenger = challenger * (1.0 - np.eye(arms))
    mixed: FloatArray = beta * p_best + (1.0 - beta) * np.einsum(
        "...j,...ji->...i", p_best, challenger
    )
    return mixed


def check_at_least(name: str, value: int, minimum: int) -> None:
    """Raise ValueError naming the parameter unless ``value >= minimum``."""
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_floor(min_weight: float, arms: int) -> None:
    """Raise ValueError unless a floor of ``min_weight`` fits ``arms`` arms."""
    if min_weight < 0 or min_weight * arms > 1 + 1e-12:
        raise ValueError(
            f"min_weight * arms must lie in [0, 1], got min_weight={min_weight} * "
            f"arms={arms} = {min_weight * arms:g}; lower min_weight below {1 / arms:g}"
        )


def _apply_floor(weights: FloatArray, min_weight: float) -> FloatArray:
    arms = weights.shape[-1]
    check_floor(min_weight, arms)
    # Affine shrink towards uniform: keeps the order of arms and the sum of 1.
    floored: FloatArray = min_weight + (1.0 - arms * min_weight) * weights
    return floored


def _quadrature_weights(posteriors: Sequence[Sequence[Posterior]], top_two: bool) -> FloatArray:
    """P(best) by quadrature after checking that it applies."""
    if top_two:
        raise ValueError("method='quadrature' does not support top_two; use 'monte_carlo'")
    betas = [[p for p in row if isinstance(p, BetaPosterior)] for row in posteriors]
    if any(len(b) != len(row) for b, row in zip(betas, posteriors, strict=True)):
        raise ValueError("method='quadrature' needs BetaPosterior arms only")
    if len({len(row) for row in betas}) != 1:
        raise ValueError("every context needs the same number of arms")
    alpha = np.array([[p.alpha for p in row] for row in betas], dtype=np.float64)
    beta = np.array([[p.beta for p in row] for row in betas], dtype=np.float64)
    if alpha.min() < 1 or beta.min() < 1:
        raise ValueError("method='quadrature' needs alpha >= 1 and beta >= 1 (bounded pdfs)")
    return _beta_p_best_quadrature(alpha, beta)


Method = Literal["auto", "monte_carlo", "quadrature"]


@dataclass(frozen=True)
class Allocation:
    """Posterior probabilities of being best and the allocation weights drawn from, (C, K)."""

    p_best: FloatArray
    weights: FloatArray


def _resolve_method(
    posteriors: Sequence[Sequence[Posterior]], top_two: bool, method: str
) -> Literal["monte_carlo", "quadrature"]:
    """ "auto" is quadrature for Beta arms with alpha, beta >= 1 and no top-two, else MC."""
    if method in ("monte_carlo", "quadrature"):
        return "quadrature" if method == "quadrature" else "monte_carlo"
    if method != "auto":
        raise ValueError(f"method must be 'auto', 'monte_carlo' or 'quadrature', got {method!r}")
    quadrature_fits = not top_two and all(
        isinstance(p, BetaPosterior) and p.alpha >= 1 and p.beta >= 1
        for row in posteriors
        for p in row
    )
    return "quadrature" if quadrature_fits else "monte_carlo"


class AllocationOptions(TypedDict, total=False):
    """The optional parameters of `allocate_many` (documented on `allocation_weights_many`)."""

    draws: int
    top_two: bool
    top_two_beta: float
    min_weight: float
    method: Method


def allocate_many(
    posteriors: Sequence[Sequence[Posterior]],
    *,
    draws: int = 10_000,
    rng: np.random.Generator,
    top_two: bool = False,
    top_two_beta: float = 0.5,
    min_weight: float = 0.0,
    method: Method = "monte_carlo",
) -> Allocation:
    """P(best) and Thompson allocation weights for C contexts x K arms at once.

    Takes the parameters of `allocation_weights_many`; ``method="auto"`` picks quadrature
    where it applies (Beta arms, no top-two) and Monte Carlo otherwise. ``p_best`` is
    before top-two and the floor, ``weights`` after.
    """
    check_at_least("draws", draws, 1)
    if not 0.0 < top_two_beta < 1.0:
        raise ValueError(f"top_two_beta must lie in (0, 1), got {top_two_beta}")
    if len(posteriors) == 0 or len(posteriors[0]) == 0:
        raise ValueError("need at least one context with at least one arm")
    arms = len(posteriors[0])
    check_floor(min_weight, arms)
    chosen = _resolve_method(posteriors, top_two, method)
    if chosen == "quadrature":
        p_best = _quadrature_weights(posteriors, top_two)
        return Allocation(p_best, _apply_floor(p_best, min_weight))
    samples = _sample_means(posteriors, draws, rng)
    contexts = samples.shape[0]
    best = samples.argmax(axis=-1)  # (C, draws)
    offsets = (np.arange(contexts) * arms)[:, None]
    counts = np.bincount((best + offsets).ravel(), minlength=contexts * arms)
    p_best = counts.reshape(contexts, arms) / draws
    mixed = p_best
    if top_two and arms > 1:
        runner_up = np.argpartition(samples, arms - 2, axis=-1)[..., arms - 2]
        pair = (offsets[..., None] * arms + best[..., None] * arms + runner_up[..., None]).ravel()
        second = np.bincount(pair, minlength=contexts * arms * arms).reshape(contexts, arms, arms)
        totals = second.sum(axis=-1, keepdims=True)
        second_share = np.divide(second, totals, out=np.zeros(second.shape), where=totals > 0)
        mixed = _top_two(p_best, second_share, top_two_beta)
    return Allocation(p_best, _apply_floor(mixed, min_weight))


def allocation_weights_many(
    posteriors: Sequence[Sequence[Posterior]],
    *,
    rng: np.random.Generator,
    **options: Unpack[AllocationOptions],
) -> FloatArray:
    """Thompson allocation weights for C contexts x K arms at once.

    Parameters
    ----------
    posteriors : sequence of C sequences of K posteriors
        All of one kind (all Beta or all Gaussian).
    draws : int, default 10,000
        Monte Carlo draws per context; the standard error of a weight ``p`` is
        ``sqrt(p (1 - p) / draws)``.
    rng : numpy.random.Generator
        Source of the draws (seed it for reproducible weights).
    top_two : bool
        Use top-two Thompson sampling (Russo 2016) instead of plain Thompson sampling.
    top_two_beta : float
        Probability of playing the leader in top-two sampling (0.5 by default, Russo's
        recommended value); the challenger is played with probability ``1 - beta``.
    min_weight : float
        Floor per arm; weights are shrunk ``w -> m + (1 - K m) w`` so they still sum to 1.
    method : {"monte_carlo", "quadrature", "auto"}
        ``"auto"`` picks quadrature where it applies, else Monte Carlo;
        ``"monte_carlo"`` (default) counts argmax shares of seeded joint draws;
        ``"quadrature"`` integrates ``pdf_i * prod_{j != i} cdf_j`` on a grid (Beta arms with
        alpha, beta >= 1 only, no top-two; absolute error about 1e-3, and ~20x faster
        than 10,000 draws for 100 x 10). ``rng`` is unused by quadrature.

    Returns
    -------
    numpy.ndarray
        Shape (C, K), rows summing to 1.

    Raises
    ------
    ValueError
        If ``min_weight * K > 1``, ``draws < 1``, ``top_two_beta`` outside (0, 1), or the
        posteriors are mixed or ragged.

    Notes
    -----
    Plain weights are each arm's posterior probability of having the largest mean,
    estimated as the share of joint draws in which it is the argmax.
    """
    return allocate_many(posteriors, rng=rng, **options).weights


def allocation_weights(
    posteriors: Sequence[Posterior],
    *,
    rng: np.random.Generator,
    **options: Unpack[AllocationOptions],
) -> FloatArray:
    """Thompson allocation weights of K arms (see `allocation_weights_many`).

    Returns
    -------
    numpy.ndarray
        Shape (K,), summing to 1, each at least ``min_weight``.
    """
    weights: FloatArray = allocate_many([posteriors], rng=rng, **options).weights[0]
    return weights
