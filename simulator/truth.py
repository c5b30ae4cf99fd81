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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from abplatform.config.models import (
    EventCount,
    MeanMetric,
    MetricConfig,
    ProportionMetric,
    RatioMetric,
)
from abplatform.config.quantiles import QuantileMetric
from abplatform.domain import SCENES
from simulator.behaviour import slate_probabilities
from simulator.context import Contexts, draw_contexts
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


def session_expectations(
    world: World, users: npt.NDArray[np.int64], slates: npt.NDArray[np.int64]
) -> SessionExpectations:
    """Expected outcomes of showing each session's user (row) their slate (columns) once."""
    n_sessions, k = slates.shape
    click = np.empty(n_sessions)
    any_click = np.empty(n_sessions)
    purchase = np.empty(n_sessions)
    revenue = np.empty(n_sessions)
    any_purchase = np.empty(n_sessions)
    for lo in range(0, n_sessions, CHUNK):
        hi = min(lo + CHUNK, n_sessions)
        outcome = slate_probabilities(world, users[lo:hi], slates[lo:hi])
        buy = outcome.purchase
        click[lo:hi] = outcome.click.sum(axis=1)
        any_click[lo:hi] = 1.0 - np.prod(1.0 - outcome.click, axis=1)
        purchase[lo:hi] = buy.sum(axis=1)
        revenue[lo:hi] = (buy * world.item_price[slates[lo:hi]]).sum(axis=1)
        any_purchase[lo:hi] = 1.0 - np.prod(1.0 - buy, axis=1)
    zeros = np.zeros(n_sessions)
    ones = np.ones(n_sessions)
    count = {"impression": np.full(n_sessions, float(k)), "click": click, "purchase": purchase}
    total = {"impression": zeros, "click": zeros, "purchase": revenue}
    anyone = {"impression": ones, "click": any_click, "purchase": any_purchase}
    for name in ("view", "add_to_cart", "rating"):
        count[name], total[name], anyone[name] = zeros, zeros, zeros
    return SessionExpectations(count, total, anyone)


def mix_per_user(
    parts: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], SessionExpectations]],
    n_users: int,
) -> SessionExpectations:
    """Weighted per-user average of session expectations (weights: scene share / draws)."""
    first = parts[0][2]
    mixed: list[dict[str, npt.NDArray[np.float64]]] = [{}, {}, {}]
    for table_index, name_tables in enumerate(("count", "total", "any")):
        for event in getattr(first, name_tables):
            acc = np.zeros(n_users)
            for users, weights, expected in parts:
                values = getattr(expected, name_tables)[event]
                acc += np.bincount(users, weights=weights * values, minlength=n_users)
            mixed[table_index][event] = acc
    return SessionExpectations(mixed[0], mixed[1], mixed[2])


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


SlateSource = Callable[[npt.NDArray[np.int64], Contexts], npt.NDArray[np.int64]]
"""slates(users, contexts) -> item indices (sessions, k) for one variant."""

Labels = npt.NDArray[np.object_]
"""(sessions, k) retrieval sources of the slates' items (str or None)."""


@runtime_checkable
class SourcedSlates(Protocol):
    """A `SlateSource` that can also say which retrieval source found each item."""

    def __call__(
        self, users: npt.NDArray[np.int64], contexts: Contexts
    ) -> npt.NDArray[np.int64]: ...

    def with_sources(
        self, users: npt.NDArray[np.int64], contexts: Contexts
    ) -> tuple[npt.NDArray[np.int64], Labels | None]:
        """The slates and their items' sources (None: the strategy has no sources)."""
        ...


def combine(parts: Sequence[tuple[float, SessionExpectations]]) -> SessionExpectations:
    """The weighted sum of per-user expectations (weights: scene shares)."""
    first = parts[0][1]
    tables: list[dict[str, npt.NDArray[np.float64]]] = [{}, {}, {}]
    for table_index, name in enumerate(("count", "total", "any")):
        for event in getattr(first, name):
            tables[table_index][event] = sum(
                (share * getattr(expected, name)[event] for share, expected in parts),
                np.zeros_like(getattr(first, name)[event]),
            )
    return SessionExpectations(tables[0], tables[1], tables[2])


def scene_expectations(
    world: World,
    sources: dict[str, SlateSource],
    shares: dict[str, float],
    draws: int,
    rng: np.random.Generator,
) -> dict[str, dict[str, SessionExpectations]]:
    """{variant: {scene: per-user expectation of one session in that scene}}.

    Only scenes with a positive share appear. For scenes with a context (viewed item,
    cart) the expectation over contexts is averaged over `draws` context draws per user,
    the same draws for every variant.
    """
    users = np.arange(world.n_users, dtype=np.int64)
    plans: list[tuple[str, npt.NDArray[np.int64], npt.NDArray[np.float64], Contexts]] = []
    for scene_index, scene in enumerate(SCENES):
        share = shares.get(scene, 0.0)
        if share <= 0:
            continue
        repeats = 1 if scene == "home_page" else draws
        session_users = np.repeat(users, repeats)
        scenes = np.full(session_users.size, scene_index, dtype=np.int64)
        contexts = draw_contexts(world, session_users, scenes, rng)
        plans.append((scene, session_users, np.full(session_users.size, 1.0 / repeats), contexts))
    out: dict[str, dict[str, SessionExpectations]] = {}
    for variant, source in sources.items():
        out[variant] = {
            scene: mix_per_user(
                [
                    (
                        session_users,
                        weights,
                        session_expectations(world, session_users, source(session_users, contexts)),
                    )
                ],
                world.n_users,
            )
            for scene, session_users, weights, contexts in plans
        }
    return out


def truth_from_scenes(
    per_scene: dict[str, dict[str, SessionExpectations]],
    rate: npt.NDArray[np.float64],
    metrics: Sequence[MetricConfig],
    shares: dict[str, float],
) -> dict[str, dict[str, float]]:
    """{metric: {variant: population value}} from per-scene expectations mixed by `shares`."""
    # A quantile needs the distribution of per-unit values, not their expectations: no truth.
    metrics = [metric for metric in metrics if not isinstance(metric, QuantileMetric)]
    truth: dict[str, dict[str, float]] = {metric.name: {} for metric in metrics}
    for variant, scenes in per_scene.items():
        expected = combine([(shares[scene], values) for scene, values in scenes.items()])
        for metric in metrics:
            truth[metric.name][variant] = metric_truth(metric, expected, rate)
    return truth


def ground_truth(
    world: World,
    sources: dict[str, SlateSource],
    rate: npt.NDArray[np.float64],
    metrics: Sequence[MetricConfig],
    shares: dict[str, float],
    draws: int,
    rng: np.random.Generator,
) -> dict[str, dict[str, float]]:
    """{metric: {variant: population value}} for every metric and variant.

    A session's scene follows `shares`; see `scene_expectations` for the context draws.
    """
    per_scene = scene_expectations(world, sources, shares, draws, rng)
    return truth_from_scenes(per_scene, rate, metrics, shares)
