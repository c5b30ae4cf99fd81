"""One contract for every assignment policy: valid decisions, batch == single, seeded."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from abplatform.assignment.base import AssignmentPolicy
from abplatform.assignment.engine import build_policy
from abplatform.bandit import PersistentThompsonPolicy
from abplatform.config import load_experiment_text
from abplatform.domain import Decision
from abplatform.storage.db import open_database, transaction
from abplatform.storage.repository import save_experiment

HASH = "key: h\nvariants: [{key: a, weight: 0.3}, {key: b, weight: 0.7}]\n"
BANDIT = (
    "key: t\nassignment: {type: thompson, reward_metric: buy, seed: 3, sticky: %s}\n"
    "metrics: [{name: buy, type: proportion, event: purchase}]\n"
    "variants: [{key: a}, {key: b}, {key: c}]\n"
)
UNITS = [f"user-{i}" for i in range(300)]


def _hash(_: Path) -> AssignmentPolicy:
    return build_policy(load_experiment_text(HASH))


def _thompson(sticky: str) -> Callable[[Path], AssignmentPolicy]:
    def make(_: Path) -> AssignmentPolicy:
        return build_policy(load_experiment_text(BANDIT % sticky))

    return make


def _persistent(sticky: str) -> Callable[[Path], AssignmentPolicy]:
    def make(folder: Path) -> AssignmentPolicy:
        engine = open_database(f"sqlite:///{folder}/{uuid.uuid4().hex}.db")  # a fresh state
        config = load_experiment_text(BANDIT % sticky)
        with transaction(engine) as session:
            experiment_id = save_experiment(session, config, "default").id
        return PersistentThompsonPolicy.from_config(engine, experiment_id, config)

    return make


FACTORIES = {
    "hash": _hash,
    "thompson-sticky": _thompson("true"),
    "thompson-per-request": _thompson("false"),
    "persistent-sticky": _persistent("true"),
    "persistent-per-request": _persistent("false"),
}


@pytest.fixture(params=list(FACTORIES))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], AssignmentPolicy]:
    factory = FACTORIES[request.param]
    return lambda: factory(tmp_path)


def test_decisions_are_valid(make: Callable[[], AssignmentPolicy]) -> None:
    policy = make()
    for unit in UNITS:
        decision = policy.assign(unit)
        assert decision is not None
        assert decision.variant in policy.variant_keys
        assert 0.0 < decision.propensity <= 1.0


def test_deterministic_under_a_seed(make: Callable[[], AssignmentPolicy]) -> None:
    first, second = make(), make()
    assert [first.assign(u) for u in UNITS] == [second.assign(u) for u in UNITS]


def test_batch_equals_single(make: Callable[[], AssignmentPolicy]) -> None:
    batch_policy, single_policy = make(), make()
    batch = batch_policy.assign_batch(UNITS)
    singles = [single_policy.assign(u) for u in UNITS]
    assert [batch_policy.variant_keys[i] for i in batch.variant_index] == [
        d.variant for d in singles if d is not None
    ]
    np.testing.assert_allclose(batch.propensity, [d.propensity for d in singles if d is not None])


def _two_steps(policy: AssignmentPolicy, unit: str) -> Decision | None:
    """A server's decision: `draw` from memory, then `known` or `settle` when sticky."""
    drawn = policy.draw(unit)
    if drawn is None or not policy.sticky:
        return drawn
    return policy.known(unit) or policy.settle(unit, None, drawn)


def test_draw_then_settle_equals_assign(make: Callable[[], AssignmentPolicy]) -> None:
    one_step, two_steps = make(), make()
    assert [two_steps.settle(u, None, d) if (d := two_steps.draw(u)) else None for u in UNITS] == [
        one_step.assign(u) for u in UNITS
    ]


def test_a_sticky_unit_keeps_its_settled_decision(make: Callable[[], AssignmentPolicy]) -> None:
    policy = make()
    first = [_two_steps(policy, u) for u in UNITS]
    again = [_two_steps(policy, u) for u in UNITS]
    if policy.sticky:
        assert again == first
        assert [policy.known(u) for u in UNITS] == first
        other = next(d for d in first if d is not None)
        assert policy.settle(UNITS[0], None, other) == first[0]
    else:
        assert all(policy.known(u) is None for u in UNITS)
        assert all(d is not None and d.variant in policy.variant_keys for d in again)


def test_sync_has_nothing_due_on_a_fresh_policy(make: Callable[[], AssignmentPolicy]) -> None:
    policy = make()
    apply = policy.sync()
    if apply is not None:  # a version published elsewhere: putting it in force is idempotent
        apply()
    assert policy.sync() is None
