"""Bandit rewards from events, exactly once: trials, rewards, duplicates, concurrent writers.

Each test plays the buffered writer's transaction: exposures and events are inserted
(events ``ON CONFLICT (event_id) DO NOTHING RETURNING event_id``) and the new ones go to
`BanditFeedback.apply` in the same transaction. The concurrency test runs several spawned
OS processes against the real database, SQLite and PostgreSQL.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from abplatform.assignment.thompson import ThompsonDecision
from abplatform.bandit import (
    BanditFeedback,
    BanditStore,
    FeedbackResult,
    PersistentThompsonPolicy,
    RewardRule,
)
from abplatform.config import load_experiment_text
from abplatform.storage import models as m
from abplatform.storage.db import make_engine, transaction, upgrade
from abplatform.storage.repository import save_experiment, utcnow

ARMS = ("a", "b", "c")
PROCESSES = 4

YAML = """
key: {key}
assignment: {{type: thompson, reward_metric: reward, update_every: {update_every},
              burn_in_units: 0, sticky: {sticky}, context: {context}}}
metrics: [{metric}]
variants: [{{key: a}}, {{key: b}}, {{key: c}}]
"""
BINARY = "{name: reward, type: proportion, event: purchase}"
REVENUE = "{name: reward, type: mean, event: purchase, value: sum}"
CLICKS = "{name: reward, type: mean, event: click}"
HASHED = """
key: hashed
variants: [{key: a, weight: 0.5}, {key: b, weight: 0.5}]
metrics: [{name: reward, type: proportion, event: purchase}]
"""


def bandit_yaml(
    key: str,
    metric: str = BINARY,
    *,
    sticky: bool = True,
    context: str = "null",
    update_every: int = 1000,
) -> str:
    """A three-arm bandit experiment."""
    return YAML.format(
        key=key,
        metric=metric,
        sticky=str(sticky).lower(),
        context=context,
        update_every=update_every,
    )


@dataclass(frozen=True)
class Exposure:
    """An exposure as the writer hands it over."""

    experiment_id: int
    variant: str
    unit_id: str
    scene: str | None = None
    weight_version: int | None = 0


@dataclass(frozen=True)
class Event:
    """An event as the writer hands it over."""

    event_id: str
    experiment_id: int | None
    unit_id: str
    type: str = "purchase"
    exposure_id: int | None = None
    value: float | None = None


def write(
    conn: Connection,
    feedback: BanditFeedback,
    exposures: Sequence[tuple[int, Exposure]] = (),
    events: Sequence[Event] = (),
) -> FeedbackResult:
    """The writer's transaction body: insert exposures and events, then the bandit update."""
    now = utcnow()
    insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    if exposures:
        table: Any = m.Exposure.__table__
        rows = [
            {
                "id": i,
                "experiment_id": x.experiment_id,
                "variant": x.variant,
                "unit_id": x.unit_id,
                "ts": now,
                "propensity": 1 / 3,
                "scene": x.scene,
                "slate_size": 0,
                "weight_version": x.weight_version,
            }
            for i, x in exposures
        ]
        conn.execute(insert(table).on_conflict_do_nothing(index_elements=["id"]), rows)
    new: list[Event] = []
    if events:
        table = m.Event.__table__
        rows = [
            {
                "event_id": e.event_id,
                "experiment_id": e.experiment_id,
                "exposure_id": e.exposure_id,
                "unit_id": e.unit_id,
                "type": e.type,
                "value": e.value,
                "ts": now,
            }
            for e in events
        ]
        statement = (
            insert(table)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(table.c.event_id)
        )
        stored = set(conn.execute(statement).scalars())
        for e in events:  # an id twice in one batch is new once
            if e.event_id in stored:
                new.append(e)
                stored.discard(e.event_id)
    return feedback.apply(conn, [i for i, _ in exposures], [x for _, x in exposures], new)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def save(engine: Engine, text: str) -> int:
    with transaction(engine) as session:
        return save_experiment(session, load_experiment_text(text), "default").id


def totals(store: BanditStore) -> dict[str | None, dict[str, tuple[int, float, float]]]:
    return {
        c: {a: (s.n, s.total, s.total_sq) for a, s in arms.items()}
        for c, arms in store.load_rewards().items()
    }


def assign(store: BanditStore, unit: str, arm: str, context: str | None = None) -> bool:
    decision = ThompsonDecision(arm, 1 / 3, None, 0)
    return store.assign_once(unit, context, decision, count_trial=True)[1]


# --- sticky units -------------------------------------------------------------------------


def test_sticky_binary_rewards_count_once(engine: Engine) -> None:
    exp = save(engine, bandit_yaml("sticky_binary"))
    other = save(engine, HASHED)
    store = BanditStore(engine, exp, ARMS)
    feedback = BanditFeedback()
    assert assign(store, "u1", "a") and assign(store, "u2", "a") and assign(store, "u3", "b")
    assert not assign(store, "u1", "c")  # known unit: no second trial
    events = [
        Event("e1", exp, "u1"),
        Event("e2", exp, "u1"),  # a second purchase: u1 already succeeded
        Event("e3", exp, "u3"),
        Event("e4", exp, "u2", type="click"),  # not the reward event
        Event("e5", exp, "stranger"),  # never assigned
        Event("e6", None, "u2"),  # no experiment
        Event("e7", other, "u2"),  # a hashed experiment
    ]
    with engine.begin() as conn:
        result = write(conn, feedback, events=events)
    assert result == FeedbackResult(trials=0, rewards=2, experiments=frozenset({exp}))
    # a: 2 units (u1, u2), 1 success; b: 1 unit (u3), 1 success.
    assert totals(store) == {None: {"a": (2, 1.0, 1.0), "b": (1, 1.0, 1.0)}}
    with engine.begin() as conn:  # the same batch again: every event is a duplicate
        assert write(conn, feedback, events=events) == FeedbackResult()
    with engine.begin() as conn:  # a new purchase of u2 counts
        write(conn, feedback, events=[Event("e8", exp, "u2")])
    assert totals(store)[None]["a"] == (2, 2.0, 2.0)


def test_sticky_continuous_rewards_add_values_and_squares(engine: Engine) -> None:
    exp = save(engine, bandit_yaml("revenue", REVENUE))
    store = BanditStore(engine, exp, ARMS)
    feedback = BanditFeedback()
    assign(store, "u1", "a")
    assign(store, "u2", "a")
    assign(store, "u3", "c")
    with engine.begin() as conn:
        write(
            conn,
            feedback,
            events=[
                Event("e1", exp, "u1", value=10.0),
                Event("e2", exp, "u1", value=5.5),
                Event("e3", exp, "u2", value=3.0),
                Event("e4", exp, "u3", value=None),  # no value: adds 0
            ],
        )
    with engine.begin() as conn:  # e2 again (duplicate) and one more for u2
        write(
            conn,
            feedback,
            events=[Event("e2", exp, "u1", value=5.5), Event("e5", exp, "u2", value=2.0)],
        )
    # a: u1 = 10 + 5.5 = 15.5, u2 = 3 + 2 = 5; sum 20.5, squares 15.5**2 + 5**2 = 265.25.
    assert totals(store)[None] == {"a": (2, 20.5, 265.25), "c": (1, 0.0, 0.0)}


def test_count_metric_counts_events(engine: Engine) -> None:
    exp = save(engine, bandit_yaml("clicks", CLICKS))
    store = BanditStore(engine, exp, ARMS)
    assign(store, "u1", "b")
    with engine.begin() as conn:
        write(
            conn,
            BanditFeedback(),
            events=[Event(f"c{i}", exp, "u1", type="click", value=99.0) for i in range(3)],
        )
    # Three clicks: reward 3 (values are not summed for a count), squares 9.
    assert totals(store)[None]["b"] == (1, 3.0, 9.0)


def test_scene_bandit_rewards_go_to_the_exposure_scene(engine: Engine) -> None:
    exp = save(engine, bandit_yaml("scenes", context="scene"))
    store = BanditStore(engine, exp, ARMS)
    feedback = BanditFeedback()
    assign(store, "u1", "a", "home_page")
    assign(store, "u1", "b", "cart_page")
    home = Exposure(exp, "a", "u1", scene="home_page")
    cart = Exposure(exp, "b", "u1", scene="cart_page")
    with engine.begin() as conn:
        write(conn, feedback, exposures=[(101, home), (102, cart)])  # sticky: no trials here
        result = write(
            conn,
            feedback,
            events=[
                Event("e1", exp, "u1", exposure_id=102),  # cart page
                Event("e2", exp, "u1"),  # which scene? not a reward
                Event("e3", exp, "u2", exposure_id=101),  # u1's exposure, another unit
                Event("e4", exp, "u1", exposure_id=999),  # unknown exposure
            ],
        )
    assert result.rewards == 1
    assert totals(store) == {
        "home_page": {"a": (1, 0.0, 0.0)},
        "cart_page": {"b": (1, 1.0, 1.0)},
    }


# --- per-request trials -------------------------------------------------------------------


def test_per_request_trials_and_rewards_by_exposure(engine: Engine) -> None:
    exp = save(engine, bandit_yaml("per_request", sticky=False))
    other = save(engine, HASHED)
    store = BanditStore(engine, exp, ARMS)
    feedback = BanditFeedback()
    exposures = [
        (1, Exposure(exp, "a", "u1")),
        (2, Exposure(exp, "a", "u1")),  # same unit again: another trial
        (3, Exposure(exp, "b", "u2")),
        (4, Exposure(other, "a", "u3", weight_version=None)),  # hashed: not a trial
    ]
    with engine.begin() as conn:
        assert write(conn, feedback, exposures=exposures).trials == 3
    with engine.begin() as conn:  # replayed (e.g. from the journal): no trial twice
        assert write(conn, feedback, exposures=exposures).trials == 0
    events = [
        Event("e1", exp, "u1", exposure_id=2),
        Event("e2", exp, "u1", exposure_id=2),  # that exposure already succeeded
        Event("e3", exp, "u2", exposure_id=3),
        Event("e4", exp, "u2"),  # no exposure: not a reward of a per-request bandit
        Event("e5", exp, "u3", exposure_id=4),  # not a bandit trial
        Event("e6", other, "u1", exposure_id=1),  # exposure of another experiment
    ]
    with engine.begin() as conn:
        assert write(conn, feedback, events=events).rewards == 2
    with engine.begin() as conn:
        assert write(conn, feedback, events=events).rewards == 0
    assert totals(store) == {None: {"a": (2, 1.0, 1.0), "b": (1, 1.0, 1.0)}}


def test_per_request_scene_and_continuous(engine: Engine) -> None:
    exp = save(engine, bandit_yaml("per_request_revenue", REVENUE, sticky=False, context="scene"))
    store = BanditStore(engine, exp, ARMS)
    feedback = BanditFeedback()
    with engine.begin() as conn:
        result = write(
            conn,
            feedback,
            exposures=[
                (7, Exposure(exp, "c", "u1", scene="product_detail")),
                (8, Exposure(exp, "c", "u1", scene=None)),  # no scene: no place in a scene bandit
            ],
            events=[  # in the same transaction, after the exposures: they count
                Event("e1", exp, "u1", exposure_id=7, value=4.0),
                Event("e2", exp, "u1", exposure_id=7, value=-1.0),  # a refund
                Event("e3", exp, "u1", exposure_id=8, value=4.0),
            ],
        )
    assert (result.trials, result.rewards) == (1, 1)
    # One trial with reward 4 - 1 = 3: sum 3, squares 9.
    assert totals(store) == {"product_detail": {"c": (1, 3.0, 9.0)}}


# --- rules ----------------------------------------------------------------------------------


def test_rules_are_looked_up_once_and_wants_only_reward_events(engine: Engine) -> None:
    exp = save(engine, bandit_yaml("looked_up"))
    other = save(engine, HASHED)
    feedback = BanditFeedback()
    assert feedback.wants([Event("x", exp, "u1")])  # unknown experiment: maybe a reward
    assert not feedback.wants([Event("x", None, "u1")])
    with engine.connect() as conn:
        rules = feedback.rules(conn, [exp, other])
    assert list(rules) == [exp]
    assert rules[exp] == RewardRule(exp, ARMS, "purchase", True, False, True, False)
    assert feedback.wants([Event("x", exp, "u1")])
    assert not feedback.wants([Event("x", exp, "u1", type="click")])
    assert not feedback.wants([Event("x", other, "u1")])  # a hashed experiment
    feedback.forget(other)
    assert feedback.wants([Event("x", other, "u1")])
    with pytest.raises(ValueError, match="not a bandit experiment"):
        RewardRule.from_config(other, load_experiment_text(HASHED))


def test_server_policy_counts_trials_and_publishes_in_the_background(engine: Engine) -> None:
    exp = save(engine, bandit_yaml("served", sticky=True, update_every=4))
    config = load_experiment_text(bandit_yaml("served", sticky=True, update_every=4))
    server = PersistentThompsonPolicy.from_config(
        engine, exp, config, refresh_seconds=float("inf"), count_trials=True
    )
    feedback = BanditFeedback()
    feedback.register(RewardRule.from_config(exp, config))
    decisions = {}
    for unit in ("u1", "u2", "u3", "u4"):
        drawn = server.draw(unit)
        decisions[unit] = server.settle(unit, None, drawn)
    assert server.settle("u1", None, ThompsonDecision("c", 0.9, None, 7)) == decisions["u1"]
    assert server.store.total_units() == 4  # one trial per unit, not per request
    with engine.begin() as conn:
        write(conn, feedback, events=[Event("e1", exp, "u1"), Event("e2", exp, "u2")])
    version = server.publish_due()
    assert version == 1
    assert server.publish_due() is None  # not due again
    assert server.version == 0  # the serving weights change only when applied
    fetched = server.fetch_weights()
    assert fetched is not None and fetched.version == 1
    server.apply_weights(fetched)
    assert server.version == 1 and server.fetch_weights() is None
    drawn = server.draw("u5")
    assert drawn.weight_version == 1
    assert drawn.propensity == pytest.approx(fetched.weights[None][drawn.variant])


# --- several processes at once ------------------------------------------------------------

UNITS = 40
BATCHES = 12


def plan(worker: int, exps: dict[str, int]) -> list[list[Event]]:
    """A worker's event batches: shared ones (same ids and content in every worker, in the
    same order) and its own, over sticky binary, sticky revenue and per-request units."""
    rng = np.random.default_rng(worker)
    batches = []
    for b in range(BATCHES):
        batch = []
        for i in range(5):  # shared: every worker sends these
            u = (b * 5 + i) % UNITS
            batch.append(Event(f"s{b}-{i}-bin", exps["binary"], f"u{u}"))
            batch.append(Event(f"s{b}-{i}-rev", exps["revenue"], f"u{u}", value=float(u % 7)))
            batch.append(Event(f"s{b}-{i}-req", exps["request"], f"u{u}", exposure_id=1 + u))
        for i in range(5):  # the worker's own
            u = int(rng.integers(UNITS))
            value = float(rng.integers(1, 50)) / 4
            batch.append(Event(f"w{worker}-{b}-{i}-bin", exps["binary"], f"u{u}"))
            batch.append(Event(f"w{worker}-{b}-{i}-rev", exps["revenue"], f"u{u}", value=value))
            exposure = 1 + int(rng.integers(UNITS))
            batch.append(
                Event(f"w{worker}-{b}-{i}-req", exps["request"], "x", exposure_id=exposure)
            )
        batches.append(sorted(batch, key=lambda e: e.event_id))  # a fixed insert order
    return batches


def arm_of(unit: int) -> str:
    return ARMS[unit % len(ARMS)]


def worker(url: str, exps: dict[str, int], index: int, start: Any) -> int:
    """Assign every unit (all workers race), write every exposure, then every event batch."""
    engine = make_engine(url)
    feedback = BanditFeedback()
    stores = {k: BanditStore(engine, exps[k], ARMS) for k in ("binary", "revenue")}
    retries = 0
    start.wait()
    for u in range(UNITS):  # each worker first draws its own arm; the first writer wins
        for store in stores.values():
            decision = ThompsonDecision(arm_of(u + index), 1 / 3, None, 0)
            store.assign_once(f"u{u}", None, decision, count_trial=True)
    exposures = [(1 + u, Exposure(exps["request"], arm_of(u), f"u{u}")) for u in range(UNITS)]
    for half in [exposures[i::2] for i in range(2)]:  # every worker writes (replays) them
        with engine.begin() as conn:
            write(conn, feedback, exposures=half)
    start.wait()  # all trials exist before any reward
    for events in plan(index, exps):
        while True:
            try:
                with engine.begin() as conn:
                    write(conn, feedback, events=events)
                break
            except OperationalError:  # e.g. a deadlock on event ids: the client retries
                retries += 1
                if retries > 20:
                    raise
    engine.dispose()
    return retries


def child(queue: Any, url: str, exps: dict[str, int], index: int, start: Any) -> None:
    """A spawned child: puts (index, retries, error) on the queue."""
    try:
        queue.put((index, worker(url, exps, index, start), None))
    except BaseException as exc:  # report, don't hang the parent
        start.abort()
        queue.put((index, 0, f"{type(exc).__name__}: {exc}"))


def test_concurrent_writers_count_every_reward_once(db_url: str, engine: Engine) -> None:
    exps = {
        "binary": save(engine, bandit_yaml("race_binary")),
        "revenue": save(engine, bandit_yaml("race_revenue", REVENUE)),
        "request": save(engine, bandit_yaml("race_request", sticky=False)),
    }
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = ctx.Barrier(PROCESSES)
    procs = [
        ctx.Process(target=child, args=(queue, db_url, exps, w, start)) for w in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert [error for _, _, error in results if error is not None] == []

    # The expected totals from the distinct events of every worker's plan.
    distinct = {e.event_id: e for w in range(PROCESSES) for b in plan(w, exps) for e in b}
    stores = {k: BanditStore(engine, i, ARMS) for k, i in exps.items()}
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                m.BanditAssignment.experiment_id, m.BanditAssignment.unit_id, m.BanditAssignment.arm
            )
        ).all()
    arm = {(int(e), str(u)): str(a) for e, u, a in rows}
    assert len(arm) == 2 * UNITS  # every unit once per sticky experiment

    def expected(key: str) -> dict[str, tuple[int, float, float]]:
        exp = exps[key]
        reward: dict[str, float] = {}
        for e in distinct.values():
            if e.experiment_id != exp:
                continue
            trial = f"u{e.exposure_id - 1}" if key == "request" and e.exposure_id else e.unit_id
            reward[trial] = 1.0 if key != "revenue" else reward.get(trial, 0.0) + (e.value or 0.0)
        out: dict[str, list[float]] = {a: [0, 0.0, 0.0] for a in ARMS}
        for u in range(UNITS):
            a = arm_of(u) if key == "request" else arm[(exp, f"u{u}")]
            r = reward.get(f"u{u}", 0.0)
            out[a][0] += 1
            out[a][1] += r
            out[a][2] += r * r
        return {a: (int(n), s, q) for a, (n, s, q) in out.items() if n}

    for key in exps:
        got = totals(stores[key])[None]
        want = expected(key)
        assert {a: v[0] for a, v in got.items()} == {a: v[0] for a, v in want.items()}, key
        # Quarter-unit values: sums and squares are exact in binary floating point.
        assert got == want, key
