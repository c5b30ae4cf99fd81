"""The hash policy: batch equals single, coverage, namespaces, propensities, weights."""

from __future__ import annotations

import numpy as np
import pytest

from abplatform.assignment.engine import HashPolicy, build_policy
from abplatform.assignment.hashing import bucket
from abplatform.config import load_experiment_text


def policy(assignment: str = "{}", weights: tuple[float, ...] = (0.5, 0.5)) -> HashPolicy:
    variants = ", ".join(f"{{key: v{i}, weight: {w}}}" for i, w in enumerate(weights))
    config = load_experiment_text(f"key: exp\nassignment: {assignment}\nvariants: [{variants}]\n")
    built = build_policy(config)
    assert isinstance(built, HashPolicy)
    return built


UNITS = [f"user-{i}" for i in range(5_000)] + ["", "ü-ñ-漢", "a" * 100]


@pytest.mark.parametrize(
    "assignment",
    [
        "{}",
        "{hash_version: 1}",
        "{coverage: 0.4}",
        "{namespace: [pricing, 0.2, 0.7]}",
        "{seed: other-seed, coverage: 0.8}",
    ],
)
def test_batch_equals_single(assignment: str) -> None:
    p = policy(assignment, (0.2, 0.3, 0.5))
    batch = p.assign_batch(UNITS)
    for i, unit in enumerate(UNITS):
        decision = p.assign(unit)
        if decision is None:
            assert batch.variant_index[i] == -1
        else:
            assert p.variant_keys[batch.variant_index[i]] == decision.variant
            assert batch.propensity[i] == decision.propensity
            assert batch.bucket[i] == decision.bucket


def test_seed_defaults_to_key_and_decision_matches_growthbook_bucket() -> None:
    p = policy()
    decision = p.assign("user-42")
    assert decision is not None
    n = bucket("exp", "user-42", 2)
    assert decision.bucket == n
    assert decision.variant == ("v0" if n is not None and n < 0.5 else "v1")


def test_propensity_is_the_variant_weight() -> None:
    p = policy(weights=(0.2, 0.8))
    for unit in UNITS[:200]:
        decision = p.assign(unit)
        assert decision is not None
        assert decision.propensity == {"v0": 0.2, "v1": 0.8}[decision.variant]


def test_split_follows_weights() -> None:
    # 100,000 units at weight 0.2: share in v0 is within 4 standard errors,
    # sd = sqrt(0.2 * 0.8 / 100000) = 0.00126, so |share - 0.2| < 0.0051.
    units = [f"u{i}" for i in range(100_000)]
    index = policy(weights=(0.2, 0.8)).assign_batch(units).variant_index
    assert abs(float(np.mean(index == 0)) - 0.2) < 4 * np.sqrt(0.2 * 0.8 / 100_000)


def test_coverage_excludes_units() -> None:
    # Coverage 0.4 keeps about 40% of units: 4 standard errors of sqrt(.4*.6/100000).
    units = [f"u{i}" for i in range(100_000)]
    index = policy("{coverage: 0.4}").assign_batch(units).variant_index
    assert abs(float(np.mean(index >= 0)) - 0.4) < 4 * np.sqrt(0.4 * 0.6 / 100_000)


def test_namespace_excludes_units_outside_the_range() -> None:
    p = policy("{namespace: [pricing, 0.0, 0.5]}")
    excluded = [u for u in UNITS if p.assign(u) is None]
    assert 0.4 * len(UNITS) < len(excluded) < 0.6 * len(UNITS)
    for unit in excluded[:50]:
        n = bucket("__pricing", unit, 1)
        assert n is not None and n >= 0.5


def test_build_policy_for_a_bandit_chooses_the_posterior_by_metric_type() -> None:
    from abplatform.assignment.thompson import ThompsonPolicy

    base = (
        "key: b\nvariants: [{key: a}, {key: b}]\nmetrics:\n"
        "  - {name: buy, type: proportion, event: purchase}\n"
        "  - {name: revenue, type: mean, event: purchase, value: sum}\n"
        "assignment: {type: thompson, reward_metric: %s, min_weight: 0.1, context: scene}\n"
    )
    binary = build_policy(load_experiment_text(base % "buy"))
    gaussian = build_policy(load_experiment_text(base % "revenue"))
    assert isinstance(binary, ThompsonPolicy) and isinstance(gaussian, ThompsonPolicy)
    assert (binary.reward, gaussian.reward) == ("binary", "gaussian")
    assert binary.min_weight == 0.1 and binary.context_key == "scene" and binary.sticky
    assert binary.variant_keys == ("a", "b")
