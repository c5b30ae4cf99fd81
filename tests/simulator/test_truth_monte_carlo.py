"""The ground truth equals the average of many replays of the simulator's traffic.

For one fixed world and fixed home-page slates, `ground_truth` (closed form over
Poisson session counts) is compared with a brute-force Monte Carlo: R replays of
Poisson sessions per user with clicks and purchases sampled from the behaviour model,
each analysed as the report does (means over exposed users, ratio of totals). Each
replay's estimate is one draw; the average of R draws has standard error sd / sqrt(R),
and every truth must lie within 4 of them (per variant and for the difference). With
3 metrics x 3 checks at 4 SE a correct truth fails by chance with probability below
9 * 6.3e-5 = 6e-4. The ratio estimators' O(1/n) bias (n ~ 1,700 exposed users) is
below 1e-5 relative, far inside the tolerance.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from abplatform.config.models import (
    MeanMetric,
    MetricConfig,
    ProportionMetric,
    RatioMetric,
    SimulationConfig,
    WorldConfig,
)
from simulator.behaviour import slate_probabilities
from simulator.context import Contexts
from simulator.truth import SlateSource, ground_truth
from simulator.world import World, build_world

REPLAYS = 300
DAYS = 3
K = 6
METRICS: list[MetricConfig] = [
    ProportionMetric(name="purchase_rate", type="proportion", event="purchase"),
    MeanMetric(name="clicks_per_user", type="mean", event="click"),
    RatioMetric.model_validate(
        {
            "name": "ctr",
            "type": "ratio",
            "numerator": {"event": "click"},
            "denominator": {"event": "impression"},
        }
    ),
]


def fixed_slates(world: World, personal: bool, seed: int) -> npt.NDArray[np.int64]:
    """One home-page slate per user: top-k by taste, or k random distinct items."""
    if personal:
        score = world.user_vectors @ world.item_vectors.T
    else:
        score = np.random.default_rng(seed).random((world.n_users, world.n_items))
    top: npt.NDArray[np.int64] = np.argsort(-score, axis=1)[:, :K].astype(np.int64)
    return top


def source_of(slates: npt.NDArray[np.int64]) -> SlateSource:
    """A slate source serving each user their fixed slate."""

    def serve(users: npt.NDArray[np.int64], contexts: Contexts) -> npt.NDArray[np.int64]:
        return slates[users]

    return serve


def replay(
    world: World,
    slates: npt.NDArray[np.int64],
    rate: npt.NDArray[np.float64],
    rng: np.random.Generator,
) -> dict[str, float]:
    """One run of traffic as the simulator plays it, estimated as the report does."""
    users = np.arange(world.n_users, dtype=np.int64)
    sessions = sum((rng.poisson(rate) for _ in range(DAYS)), np.zeros(world.n_users, np.int64))
    who = np.repeat(users, sessions)
    outcome = slate_probabilities(world, who, slates[who])
    clicked = rng.random(outcome.click.shape) < outcome.click
    bought = clicked & (rng.random(clicked.shape) < outcome.purchase_given_click)
    exposed = sessions > 0
    clicks = np.bincount(who, weights=clicked.sum(axis=1), minlength=world.n_users)
    buyer = np.bincount(who, weights=bought.any(axis=1), minlength=world.n_users) > 0
    return {
        "purchase_rate": float(buyer[exposed].mean()),
        "clicks_per_user": float(clicks[exposed].mean()),
        "ctr": float(clicks.sum() / (sessions.sum() * K)),
    }


@pytest.mark.parametrize("satiation", [0.0, 1.0])
def test_ground_truth_matches_brute_force_replays(satiation: float) -> None:
    sim = SimulationConfig(users=2000, items=300, world=WorldConfig(satiation=satiation))
    world = build_world(sim, seed=7)
    rate = world.user_activity  # one session per user per day on average, gamma-distributed
    slates = {"random": fixed_slates(world, False, 8), "personal": fixed_slates(world, True, 8)}
    truth = ground_truth(
        world,
        {key: source_of(s) for key, s in slates.items()},
        rate * DAYS,
        METRICS,
        {"home_page": 1.0},
        draws=1,
        rng=np.random.default_rng(9),
    )
    rng = np.random.default_rng([10, int(satiation)])
    draws = {
        key: [replay(world, s, rate, rng) for _ in range(REPLAYS)] for key, s in slates.items()
    }
    for metric in METRICS:
        name = metric.name
        per_variant = {key: np.array([d[name] for d in runs]) for key, runs in draws.items()}
        for key, values in per_variant.items():
            se = values.std(ddof=1) / np.sqrt(REPLAYS)
            assert abs(values.mean() - truth[name][key]) < 4 * se, (name, key)
        diff = per_variant["personal"] - per_variant["random"]
        true_diff = truth[name]["personal"] - truth[name]["random"]
        se = diff.std(ddof=1) / np.sqrt(REPLAYS)
        assert abs(diff.mean() - true_diff) < 4 * se, (name, "difference")
