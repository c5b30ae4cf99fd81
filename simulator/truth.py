"""Ground truth: each variant's expected metrics over the whole user population.

Every metric's truth is defined as its estimator defines it. The analysis averages over
exposed units (users with at least one session), so with a Poisson number of sessions
N_u ~ Poisson(lambda_u) and per-session expectations m_u (count or value sum) and a_u
(probability of at least one event):

- mean metric:       sum_u lambda_u m_u / sum_u (1 - exp(-lambda_u))
- proportion metric: sum_u (1 - exp(-lambda_u a_u)) / sum_u (1 - exp(-lambda_u))
- ratio metric:      sum_u lambda_u m_u(num) / sum_u lambda_u m_u(den)

The per-session expectations come from the behaviour model's probabilities, not from
sampled clicks, so the truth has no sampling noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from abplatform.config.models import (
    EventCount,
    MeanMetric,
    MetricConfig,
    ProportionMetric,
    RatioMetric,
)
from simulator.behaviour import slate_probabilities
from simulator.world import World

CHUNK = 50_000


@dataclass(frozen=True)
class SessionExpectations:
    """Per-user, per-session expected counts, value sums and P(at least one) by event type."""

    count: dict[str, npt.NDArray[np.float64]]
    total: dict[str, npt.NDArray[np.float64]]
    any: dict[str, npt.NDArray[np.float64]]

    def of(self, spec: EventCount) -> npt.NDArray[np.float64]:
        """The per-session expectation of a count or sum aggregate."""
        table = self.count if spec.value == "count" else self.total
        return table[spec.event]


def session_expectations(world: World, slates: npt.NDArray[np.int64]) -> SessionExpectations:
    """Expected outcomes of showing each user (row) their slate (columns) once."""
    n_users, k = slates.shape
    click = np.empty(n_users)
    any_click = np.empty(n_users)
    purchase = np.empty(n_users)
    revenue = np.empty(n_users)
    any_purchase = np.empty(n_users)
    for lo in range(0, n_users, CHUNK):
        hi = min(lo + CHUNK, n_users)
        users = np.arange(lo, hi, dtype=np.int64)
        outcome = slate_probabilities(world, users, slates[lo:hi])
        buy = outcome.purchase
        click[lo:hi] = outcome.click.sum(axis=1)
        any_click[lo:hi] = 1.0 - np.prod(1.0 - outcome.click, axis=1)
        purchase[lo:hi] = buy.sum(axis=1)
        revenue[lo:hi] = (buy * world.item_price[slates[lo:hi]]).sum(axis=1)
        any_purchase[lo:hi] = 1.0 - np.prod(1.0 - buy, axis=1)
    zeros = np.zeros(n_users)
    ones = np.ones(n_users)
    count = {"impression": np.full(n_users, float(k)), "click": click, "purchase": purchase}
    total = {"impression": zeros, "click": zeros, "purchase": revenue}
    anyone = {"impression": ones, "click": any_click, "purchase": any_purchase}
    for name in ("view", "add_to_cart", "rating"):
        count[name], total[name], anyone[name] = zeros, zeros, zeros
    return SessionExpectations(count, total, anyone)


def metric_truth(
    metric: MetricConfig, expected: SessionExpectations, rate: npt.NDArray[np.float64]
) -> float:
    """The population value of one metric under one variant (see the module docstring)."""
    exposed = float(np.sum(-np.expm1(-rate)))
    if isinstance(metric, ProportionMetric):
        return float(np.sum(-np.expm1(-rate * expected.any[metric.event])) / exposed)
    if isinstance(metric, MeanMetric):
        spec = EventCount(event=metric.event, value=metric.value)
        return float(np.sum(rate * expected.of(spec)) / exposed)
    if isinstance(metric, RatioMetric):
        numerator = float(np.sum(rate * expected.of(metric.numerator)))
        denominator = float(np.sum(rate * expected.of(metric.denominator)))
        return numerator / denominator if denominator > 0 else float("nan")
    raise TypeError(f"unknown metric type {type(metric).__name__}")


def ground_truth(
    world: World,
    slates: dict[str, npt.NDArray[np.int64]],
    rate: npt.NDArray[np.float64],
    metrics: Sequence[MetricConfig],
) -> dict[str, dict[str, float]]:
    """{metric: {variant: population value}} for every metric and variant."""
    truth: dict[str, dict[str, float]] = {metric.name: {} for metric in metrics}
    for variant, variant_slates in slates.items():
        expected = session_expectations(world, variant_slates)
        for metric in metrics:
            truth[metric.name][variant] = metric_truth(metric, expected, rate)
    return truth
