"""Bandit SQL state: increments, weight versions, sticky decisions, the persistent policy.

The concurrency tests run several real OS processes (spawned) against the real database,
SQLite and PostgreSQL, started together behind a barrier.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sqlalchemy import Engine, event, func, select

from abplatform.assignment.posteriors import BetaPosterior, RewardStats
from abplatform.assignment.thompson import ThompsonDecision, ThompsonPolicy
from abplatform.bandit import (
    BanditStore,
    PersistentThompsonPolicy,
    arm_totals,
    delete_bandit_rows,
    latest_version,
    lowest_weights,
    weight_rows,
)
from abplatform.config import load_experiment_text
from abplatform.storage import models as m
from abplatform.storage.db import make_engine, transaction, upgrade
from abplatform.storage.repository import save_experiment
from tests.storage import bandit_workers as workers

ARMS = workers.ARMS
PROCESSES = 4

BANDIT_YAML = """
key: bandit
assignment: {type: thompson, reward_metric: buy, update_every: 10, burn_in_units: 0}
metrics: [{name: buy, type: proportion, event: purchase}]
variants: [{key: a}, {key: b}, {key: c}]
"""


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def experiment_id(engine: Engine) -> int:
    with transaction(engine) as session:
        return save_experiment(session, load_experiment_text(BANDIT_YAML), "default").id


SIZES = {"record": 40, "publish": 10, "sticky": 100, "serve": 60}


def _run_phases(url: str, engine: Engine) -> tuple[dict[str, int], dict[str, dict[int, Any]]]:
    """Every concurrency phase in PROCESSES spawned processes: experiment ids by phase, and
    results by phase and worker.

    One set of processes for all phases keeps start-up (imports) to once per database.
    """
    experiments = {}
    for name in workers.PHASES:
        with transaction(engine) as session:
            config = load_experiment_text(BANDIT_YAML.replace("key: bandit", f"key: {name}"))
            experiments[name] = save_experiment(session, config, "default").id
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = ctx.Barrier(PROCESSES)
    args = (url, experiments)
    procs = [
        ctx.Process(target=workers.child, args=(queue, *args, w, SIZES, start))
        for w in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert [error for _, _, error in results if error is not None] == []
    out: dict[str, dict[int, Any]] = {name: {} for name in workers.PHASES}
    for worker, by_phase, _ in results:
        for name, result in by_phase.items():
            out[name][worker] = result
    return experiments, out


# --- single-process behaviour -------------------------------------------------------------


def test_record_rewards_adds_up(engine: Engine, experiment_id: int) -> None:
    store = BanditStore(engine, experiment_id, ARMS)
    store.ensure_arms()
    store.ensure_arms()  # idempotent
    store.record_rewards({None: {"a": RewardStats(3, 2.5, 4.25), "b": RewardStats.binary(4, 1)}})
    store.record_rewards({None: {"a": RewardStats(2, 1.0, 0.5)}})
    totals = store.load_rewards()[None]
    # a: n = 3 + 2, sum = 2.5 + 1.0, sum of squares = 4.25 + 0.5; c untouched.
    assert (totals["a"].n, totals["a"].total, totals["a"].total_sq) == (5, 3.5, 4.75)
    assert (totals["b"].n, totals["b"].total) == (4, 1.0)
    assert totals["c"].n == 0
    assert store.total_units() == 9
    with pytest.raises(ValueError, match=r"unknown arms \['z'\]; known: \['a', 'b', 'c'\]"):
        store.record_rewards({None: {"z": RewardStats.binary(1, 1)}})


def test_posteriors_from_stored_totals(engine: Engine, experiment_id: int) -> None:
    store = BanditStore(engine, experiment_id, ARMS)
    store.record_rewards({"home_page": {"a": RewardStats.binary(10, 3)}})
    store.record_rewards(
        {"home_page": {"a": RewardStats.binary(5, 5), "b": RewardStats.binary(2, 0)}}
    )
    policy = ThompsonPolicy(ARMS)
    posteriors = store.load_posteriors(policy.prior())["home_page"]
    # Beta(1, 1) + 8 successes of 15: alpha = 9, beta = 8; b: 0 of 2 -> (1, 3); c: prior.
    assert all(isinstance(p, BetaPosterior) for p in posteriors)
    assert [(p.alpha, p.beta, p.n) for p in posteriors if isinstance(p, BetaPosterior)] == [
        (9, 8, 15),
        (1, 3, 2),
        (1, 1, 0),
    ]


def test_units_at_exposure_and_rewards_on_arrival(engine: Engine, experiment_id: int) -> None:
    store = BanditStore(engine, experiment_id, ARMS)
    store.record_rewards({None: {"a": RewardStats(0, 1.0, 1.0)}})  # conversion seen first
    prior = ThompsonPolicy(ARMS).prior()
    # 1 success of 0 units is clamped: Beta(1 + 0, 1 + 0) until the unit is counted.
    first = store.load_posteriors(prior)[None][0]
    assert isinstance(first, BetaPosterior) and (first.alpha, first.beta) == (1, 1)
    store.record_rewards({None: {"a": RewardStats(3, 0.0, 0.0)}})  # three exposed units
    # 1 success of 3 units: alpha = 1 + 1, beta = 1 + 2.
    first = store.load_posteriors(prior)[None][0]
    assert isinstance(first, BetaPosterior) and (first.alpha, first.beta) == (2, 3)


def test_version_zero_and_publish_history(engine: Engine, experiment_id: int) -> None:
    store = BanditStore(engine, experiment_id, ARMS)
    assert store.latest_version() is None and store.current_weights() is None
    store.ensure_arms(["home_page", "cart_page"])
    current = store.current_weights()
    assert current is not None and current.version == 0
    assert current.weights["home_page"] == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    version = store.publish_weights(
        {"home_page": [0.5, 0.3, 0.2]}, {"home_page": [0.6, 0.3, 0.1]}, {"home_page": [5, 4, 3]}
    )
    assert version == 1
    history = store.weight_history()
    assert [(r.version, r.context, r.arm) for r in history[-3:]] == [
        (1, "home_page", "a"),
        (1, "home_page", "b"),
        (1, "home_page", "c"),
    ]
    assert [(r.weight, r.p_best, r.units) for r in history[-3:]] == [
        (0.5, 0.6, 5),
        (0.3, 0.3, 4),
        (0.2, 0.1, 3),
    ]
    assert len(history) == 2 * 3 + 3
    with pytest.raises(ValueError, match="must be 3 shares summing to 1"):
        store.publish_weights({None: [0.5, 0.6, 0.1]}, {None: [0, 0, 1]}, {None: [0, 0, 0]})
    assert store.latest_version() == 1  # the bad version left no rows


def test_reads_of_the_analysis(engine: Engine, experiment_id: int) -> None:
    store = BanditStore(engine, experiment_id, ARMS)
    store.ensure_arms()
    for share in (0.5, 0.7, 0.9, 0.8):  # versions 1..4
        rest = (1 - share) / 2
        store.publish_weights(
            {None: [share, rest, rest]}, {None: [share, rest, rest]}, {None: [1, 1, 1]}
        )
    store.record_rewards({None: {"a": RewardStats(4, 1.0, 1.0)}})
    with engine.connect() as conn:
        assert latest_version(conn, experiment_id) == 4
        every = weight_rows(conn, experiment_id)
        thinned = weight_rows(conn, experiment_id, max_points=2)  # step 3: versions 0, 3, 4
        lowest = lowest_weights(conn, experiment_id)
        totals = arm_totals(conn, experiment_id)
    assert [(r.version, r.arm) for r in every[:3]] == [(0, "a"), (0, "b"), (0, "c")]
    assert len(every) == 5 * 3 and every[0].context is None
    assert sorted({r.version for r in thinned}) == [0, 3, 4]
    assert lowest[(None, "a")] == pytest.approx(1 / 3)
    assert lowest[(None, "b")] == pytest.approx(0.05)
    assert [(t.context, t.arm, t.units, t.reward_sum) for t in totals] == [
        (None, "a", 4, 1.0),
        (None, "b", 0, 0.0),
        (None, "c", 0, 0.0),
    ]


def test_delete_bandit_rows_clears_every_bandit_table(engine: Engine, experiment_id: int) -> None:
    store = BanditStore(engine, experiment_id, ARMS)
    store.ensure_arms()
    store.get_or_assign("u1", None, ThompsonDecision("b", 0.25, None, 0), count_trial=True)
    with engine.begin() as conn:
        delete_bandit_rows(conn, experiment_id)
    assert store.latest_version() is None and store.total_units() == 0
    assert store.get_assignment("u1", None) is None


def test_get_or_assign_first_writer_wins(engine: Engine, experiment_id: int) -> None:
    store = BanditStore(engine, experiment_id, ARMS)
    first = store.get_or_assign("u1", None, ThompsonDecision("b", 0.25, None, 3))
    again = store.get_or_assign("u1", None, ThompsonDecision("c", 0.5, None, 4))
    assert first == again == ThompsonDecision("b", 0.25, None, 3)
    assert store.get_assignment("u1", "home_page") is None  # contexts are separate
    assert (
        store.get_or_assign("u1", "home_page", ThompsonDecision("c", 0.5, None, 4)).variant == "c"
    )


def test_persistent_policy_publishes_every_update_every_units(
    engine: Engine, experiment_id: int
) -> None:
    config = load_experiment_text(BANDIT_YAML)
    policy = PersistentThompsonPolicy.from_config(engine, experiment_id, config)
    assert policy.version == 0
    assert_allclose(policy.policy.weights(), [1 / 3] * 3)
    # 9 units: below update_every = 10, no new version.
    assert policy.record_rewards({None: {"a": RewardStats.binary(9, 9)}}) is None
    # 9 + 12 = 21 units >= 10 since version 0: version 1 from the SQL posteriors.
    version = policy.record_rewards(
        {None: {"b": RewardStats.binary(6, 0), "c": RewardStats.binary(6, 0)}}
    )
    assert version == 1 and policy.version == 1
    weights = policy.policy.weights()
    assert weights[0] > 0.99  # a: 9/9 against 0/6 and 0/6
    current = policy.store.current_weights()
    assert current is not None
    assert current.units[None] == {"a": 9, "b": 6, "c": 6}
    assert_allclose([current.weights[None][k] for k in ARMS], weights)
    # Only 5 more units since version 1 (21 units): no update.
    assert policy.record_rewards({None: {"a": RewardStats.binary(5, 0)}}) is None


def test_persistent_policy_follows_newer_versions_at_most_every_refresh(
    engine: Engine, experiment_id: int
) -> None:
    now = [0.0]
    config = load_experiment_text(BANDIT_YAML.replace("update_every: 10", "update_every: 1"))
    server = PersistentThompsonPolicy.from_config(
        engine, experiment_id, config, clock=lambda: now[0]
    )
    other = PersistentThompsonPolicy.from_config(engine, experiment_id, config)
    assert (
        other.record_rewards(
            {
                None: {
                    "c": RewardStats.binary(50, 40),
                    "a": RewardStats.binary(50, 1),
                    "b": RewardStats.binary(50, 1),
                }
            }
        )
        == 1
    )
    # Within the refresh interval the server keeps version 0 (no SQL round trip)...
    now[0] = 0.5
    assert server.assign("u1", u=0.0).weight_version == 0
    # ...and picks version 1 up once the interval has passed.
    now[0] = 1.5
    decision = server.assign("u2", u=0.999)
    assert decision.weight_version == 1 and decision.variant == "c"
    assert decision.propensity == pytest.approx(other.policy.weights()[2], abs=1e-12)


def test_non_sticky_assign_makes_no_sql_round_trip(engine: Engine, experiment_id: int) -> None:
    config = load_experiment_text(BANDIT_YAML.replace("burn_in_units: 0", "sticky: false"))
    policy = PersistentThompsonPolicy.from_config(
        engine, experiment_id, config, refresh_seconds=3600
    )
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    decisions = [policy.assign(f"u{i}") for i in range(200)]
    assert statements == []
    assert {d.variant for d in decisions} == set(ARMS)
    assert all(d.propensity == pytest.approx(1 / 3) and d.weight_version == 0 for d in decisions)


def test_sticky_assign_is_stored(engine: Engine, experiment_id: int) -> None:
    config = load_experiment_text(BANDIT_YAML)
    policy = PersistentThompsonPolicy.from_config(engine, experiment_id, config)
    first = [policy.assign(f"u{i}") for i in range(30)]
    again = [policy.assign(f"u{i}") for i in range(30)]
    assert first == again
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(m.BanditAssignment)).scalar_one()
    assert count == 30


def test_scene_bandit_starts_with_every_scene(engine: Engine, experiment_id: int) -> None:
    config = load_experiment_text(BANDIT_YAML.replace("burn_in_units: 0", "context: scene"))
    policy = PersistentThompsonPolicy.from_config(engine, experiment_id, config)
    current = policy.store.current_weights()
    assert current is not None and set(current.weights) == {
        "home_page",
        "product_detail",
        "cart_page",
    }
    with pytest.raises(ValueError, match=r"needs context\['scene'\]"):
        policy.assign("u1")
    assert policy.assign("u1", {"scene": "cart_page"}).weight_version == 0


def test_scene_bandit_publishes_every_scene_in_one_version(
    engine: Engine, experiment_id: int
) -> None:
    config = load_experiment_text(
        BANDIT_YAML.replace("burn_in_units: 0", "burn_in_units: 0, context: scene")
    )
    policy = PersistentThompsonPolicy.from_config(engine, experiment_id, config)
    version = policy.record_rewards(
        {
            "home_page": {"a": RewardStats.binary(10, 9), "b": RewardStats.binary(10, 0)},
            "cart_page": {"c": RewardStats.binary(10, 9), "b": RewardStats.binary(10, 0)},
        }
    )
    assert version == 1
    current = policy.store.current_weights()
    assert current is not None and current.version == 1
    assert set(current.weights) == {"home_page", "product_detail", "cart_page"}
    home, cart = current.weights["home_page"], current.weights["cart_page"]
    assert max(home, key=home.__getitem__) == "a" and max(cart, key=cart.__getitem__) == "c"
    assert_allclose(list(current.weights["product_detail"].values()), [1 / 3] * 3)
    decision = policy.assign("u1", {"scene": "home_page"}, u=0.0)
    assert (decision.variant, decision.weight_version) == ("a", 1)


# --- several processes at once ------------------------------------------------------------


def test_concurrent_processes(db_url: str, engine: Engine) -> None:
    """Reward writers, weight publishers, sticky assigners and servers, each phase racing."""
    ids, results = _run_phases(db_url, engine)
    _check_no_lost_update(BanditStore(engine, ids["record"], ARMS), results["record"])
    _check_consecutive_versions(BanditStore(engine, ids["publish"], ARMS), results["publish"])
    _check_sticky_agrees(BanditStore(engine, ids["sticky"], ARMS), results["sticky"])
    _check_each_update_once(BanditStore(engine, ids["serve"], ARMS), results["serve"])


def _check_no_lost_update(store: BanditStore, done: dict[int, int]) -> None:
    batches = SIZES["record"]
    assert done == {w: batches for w in range(PROCESSES)}
    expected: dict[tuple[str, str], list[float]] = {}
    for w in range(PROCESSES):
        for batch in workers.reward_batches(w, batches):
            for context, arms in batch.items():
                for arm, stats in arms.items():
                    cell = expected.setdefault((str(context), arm), [0, 0.0])
                    cell[0] += stats.n
                    cell[1] += stats.total
    stored = {
        (str(c), arm): [s.n, s.total]
        for c, arms in store.load_rewards().items()
        for arm, s in arms.items()
    }
    assert stored == expected


def _check_consecutive_versions(store: BanditStore, got: dict[int, list[int]]) -> None:
    versions = sorted(v for vs in got.values() for v in vs)
    assert versions == list(range(PROCESSES * SIZES["publish"]))  # distinct and consecutive
    by_version: dict[int, list[Any]] = {}
    for row in store.weight_history():
        by_version.setdefault(row.version, []).append(row)
    for version, members in by_version.items():
        assert len(members) == 3 * 3, version  # every context x arm
        assert len({r.units for r in members}) == 1  # all from one publisher
    for worker, vs in got.items():
        assert all(by_version[v][0].units == worker for v in vs)


def _check_sticky_agrees(store: BanditStore, got: dict[int, dict[str, str]]) -> None:
    units = SIZES["sticky"]
    for i in range(units):
        assert len({got[w][f"u{i}"] for w in range(PROCESSES)}) == 1
    stored = {f"u{i}": store.get_assignment(f"u{i}", None) for i in range(units)}
    assert {u: d.variant for u, d in stored.items() if d is not None} == got[0]


def _check_each_update_once(store: BanditStore, got: dict[int, list[int]]) -> None:
    published = sorted(v for vs in got.values() for v in vs)
    assert len(published) == len(set(published))  # no version published twice
    units = Counter[int]()
    for row in store.weight_history():
        units[row.version] += row.units
    versions = sorted(units)
    assert versions == list(range(len(versions))) and versions[1:] == published
    # Each version holds at least update_every = 50 more units than the one before...
    assert np.diff([units[v] for v in versions]).min() >= 50
    # ...and no due update is left unpublished after the last writer's check.
    assert store.total_units() - units[versions[-1]] < 50
