"""Bandit experiments through the API (httpx over ASGI, SQLite and PostgreSQL): decisions
with propensity and weight version, sticky units, rewards from events exactly once, and
new weight versions after `update_every` units."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from abplatform.bandit import BanditFeedback, BanditStore
from abplatform.config import load_experiment_text
from abplatform.storage import models as m
from abplatform.storage.db import open_database, transaction
from abplatform.storage.repository import save_experiment, utcnow
from abplatform.storage.rows import ExposureRow
from abplatform.writer import journal_line, replay_journal
from tests.api.conftest import KEY

pytestmark = pytest.mark.anyio

ARMS = ("popular", "random")
_ids = itertools.count()


def bandit(key: str, *, sticky: bool = True, context: str | None = None, every: int = 1000) -> Any:
    """A two-arm bandit over popularity and random slates, rewarded by purchases."""
    return {
        "key": key,
        "catalog": f"sim:{KEY}",  # the seeded example's simulated shop
        "assignment": {
            "type": "thompson",
            "reward_metric": "purchase_rate",
            "update_every": every,
            "burn_in_units": 0,
            "sticky": sticky,
            "context": context,
            "seed": 3,
        },
        "variants": [
            {"key": "popular", "strategy": {"kind": "popularity", "params": {"window_days": 30}}},
            {"key": "random", "strategy": {"kind": "random"}},
        ],
        "metrics": [{"name": "purchase_rate", "type": "proportion", "event": "purchase"}],
    }


async def create(client: httpx.AsyncClient, config: Any) -> None:
    created = await client.post("/v1/experiments", json=config)
    assert created.status_code == 201, created.text
    started = await client.post(f"/v1/experiments/{config['key']}/start")
    assert started.status_code == 200, started.text


async def assign(client: httpx.AsyncClient, key: str, unit: str, **extra: Any) -> Any:
    response = await client.post("/v1/assign", json={"experiment": key, "unit_id": unit, **extra})
    assert response.status_code == 200, response.text
    return response.json()


async def send(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> Any:
    response = await client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    return response.json()


async def flush(client: httpx.AsyncClient) -> None:
    """Answered after its commit, which follows every exposure accepted before it."""
    await send(client, [{"event_id": f"flush-{next(_ids)}", "unit_id": "nobody", "type": "view"}])


def purchase(key: str, unit: str, event_id: str, exposure_id: int | None = None) -> Any:
    event = {"event_id": event_id, "unit_id": unit, "type": "purchase", "experiment": key}
    return event if exposure_id is None else event | {"exposure_id": exposure_id}


def store(url: str, key: str) -> BanditStore:
    engine = open_database(url)
    with engine.connect() as conn:
        experiment_id = conn.execute(
            select(m.Experiment.id).where(m.Experiment.key == key)
        ).scalar_one()
    return BanditStore(engine, experiment_id, ARMS)


def counts(bandit_store: BanditStore) -> dict[str, tuple[int, float]]:
    """(units, successes) per arm of the pooled context."""
    return {a: (s.n, s.total) for a, s in bandit_store.load_rewards().get(None, {}).items()}


def exposures(url: str, key: str) -> list[tuple[str, str, float, int | None]]:
    """(unit, variant, propensity, weight version) of the experiment's exposures, by id."""
    engine = open_database(url)
    x = m.Exposure
    with engine.connect() as conn:
        rows = conn.execute(
            select(x.unit_id, x.variant, x.propensity, x.weight_version)
            .join(m.Experiment, m.Experiment.id == x.experiment_id)
            .where(m.Experiment.key == key)
            .order_by(x.id)
        ).all()
    engine.dispose()
    return [(str(u), str(v), float(p), w) for u, v, p, w in rows]


async def test_sticky_unit_keeps_its_arm_and_exposures_log_the_decision(
    client: httpx.AsyncClient, seeded_url: str
) -> None:
    await create(client, bandit("sticky"))
    first = await assign(client, "sticky", "u1")
    assert first["variant"] in ARMS and first["propensity"] == 0.5  # version 0: equal
    assert len(first["items"]) > 0
    for _ in range(3):
        again = await assign(client, "sticky", "u1")
        assert (again["variant"], again["propensity"]) == (first["variant"], 0.5)
        assert again["exposure_id"] != first["exposure_id"]
    await client.post(f"/v1/experiments/{KEY}/start")
    hashed = await assign(client, KEY, "u1")
    await flush(client)
    assert exposures(seeded_url, "sticky") == [("u1", first["variant"], 0.5, 0)] * 4
    assert exposures(seeded_url, KEY)[-1][3] is None  # hashed: no weight version
    # One unit, one trial, however many requests.
    assert counts(store(seeded_url, "sticky"))[first["variant"]] == (1, 0.0)
    assert hashed["variant"] is not None


async def test_rewards_count_once_even_when_the_batch_is_retried(
    client: httpx.AsyncClient, seeded_url: str
) -> None:
    await create(client, bandit("rewards"))
    arm = {u: (await assign(client, "rewards", u))["variant"] for u in ("u1", "u2", "u3", "u4")}
    batch = [
        purchase("rewards", "u1", "p1"),
        purchase("rewards", "u1", "p2"),  # u1's second purchase: still one success
        purchase("rewards", "u2", "p3"),
        purchase("rewards", "stranger", "p4"),  # never assigned: stored, not a reward
        {"event_id": "c1", "unit_id": "u3", "type": "click", "experiment": "rewards"},
    ]
    first = await send(client, batch)
    assert (first["received"], first["new"], first["duplicates"]) == (5, 5, 0)
    again = await send(client, batch)
    assert (again["received"], again["new"], again["duplicates"]) == (5, 0, 5)
    retried = await asyncio.gather(*(send(client, batch) for _ in range(3)))
    assert all(r["new"] == 0 for r in retried)
    expected = {a: [0, 0.0] for a in ARMS}
    for unit, a in arm.items():
        expected[a][0] += 1
        expected[a][1] += unit in ("u1", "u2")
    got = counts(store(seeded_url, "rewards"))
    assert got == {a: (n, s) for a, (n, s) in expected.items() if n}


async def test_per_request_bandit_rewards_by_exposure(
    client: httpx.AsyncClient, seeded_url: str
) -> None:
    await create(client, bandit("per_request", sticky=False))
    shown = [await assign(client, "per_request", "u1") for _ in range(3)]
    await flush(client)
    rewarded = shown[1]
    events = [
        purchase("per_request", "u1", "q1", rewarded["exposure_id"]),
        purchase("per_request", "u1", "q2", rewarded["exposure_id"]),  # same exposure
        purchase("per_request", "u1", "q3"),  # no exposure_id: not a reward here
    ]
    await send(client, events)
    await send(client, events)
    expected = {a: [0, 0.0] for a in ARMS}
    for answer in shown:
        expected[answer["variant"]][0] += 1
    expected[rewarded["variant"]][1] += 1
    got = counts(store(seeded_url, "per_request"))
    assert got == {a: (n, s) for a, (n, s) in expected.items() if n}
    assert [w for *_, w in exposures(seeded_url, "per_request")] == [0, 0, 0]


async def test_scene_bandit_needs_a_scene(client: httpx.AsyncClient, seeded_url: str) -> None:
    await create(client, bandit("scenes", context="scene"))
    missing = await client.post("/v1/assign", json={"experiment": "scenes", "unit_id": "u1"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "scene"]
    batch = await client.post(
        "/v1/assign/batch",
        json={
            "requests": [
                {"experiment": "scenes", "unit_id": "u1", "scene": "cart_page"},
                {"experiment": "scenes", "unit_id": "u2"},
            ]
        },
    )
    assert batch.status_code == 422
    assert batch.json()["detail"][0]["loc"] == ["body", "requests", 1, "scene"]
    cart = await assign(client, "scenes", "u1", scene="cart_page")
    await send(client, [purchase("scenes", "u1", "s1", cart["exposure_id"])])
    got = store(seeded_url, "scenes").load_rewards()
    assert got["cart_page"][cart["variant"]].n == 1
    assert got["cart_page"][cart["variant"]].total == 1.0


async def test_new_weight_version_after_update_every_units(
    client: httpx.AsyncClient, seeded_url: str
) -> None:
    await create(client, bandit("adaptive", every=6))
    arm = {f"u{i}": (await assign(client, "adaptive", f"u{i}"))["variant"] for i in range(6)}
    # Every unit on `popular` buys, none on `random`: the next version favours `popular`.
    await send(client, [purchase("adaptive", u, f"b{u}") for u, a in arm.items() if a == "popular"])
    bandit_store = store(seeded_url, "adaptive")
    for i in range(200):  # the background sync runs every status check (50 ms in tests)
        answer = await assign(client, "adaptive", f"late{i}")
        current = bandit_store.current_weights()
        if current is not None and current.version >= 1 and answer["propensity"] != 0.5:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("no new weight version was published and used")
    await flush(client)
    logged = exposures(seeded_url, "adaptive")
    assert {w for *_, w in logged[:6]} == {0}
    unit, variant, propensity, version = logged[-1]
    assert (unit, variant, propensity) == (f"late{i}", answer["variant"], answer["propensity"])
    assert version is not None and version >= 1
    # The propensity logged is the weight of the version drawn from.
    weights = {(r.version, r.arm): r.weight for r in bandit_store.weight_history()}
    assert propensity == pytest.approx(weights[(version, variant)])
    first = [r for r in bandit_store.weight_history() if r.version == 1]
    assert sum(r.units for r in first) >= 6  # published once update_every units arrived
    if all(arm[u] == "popular" for u in arm) or all(arm[u] == "random" for u in arm):
        return
    by_arm = {r.arm: r.weight for r in first}
    assert by_arm["popular"] > by_arm["random"]  # popular sold, random did not


async def test_journal_replay_keeps_the_weight_version_and_counts_each_trial_once(
    db_url: str,
) -> None:
    engine = open_database(db_url)
    config = load_experiment_text(json.dumps(bandit("replayed", sticky=False)))
    with transaction(engine) as session:
        experiment_id = save_experiment(session, config, f"sim:{KEY}").id
    rows = [
        ExposureRow(experiment_id, arm, "u1", utcnow(), 0.5, None, None, None, ("i1",), version)
        for arm, version in (("popular", 0), ("random", 3))
    ]
    line = journal_line([11, 12], rows)
    feedback = BanditFeedback()
    replay_journal(engine, [line], bandit=feedback)
    replay_journal(engine, [line], bandit=feedback)  # a second replay writes nothing
    assert [w for *_, w in exposures(db_url, "replayed")] == [0, 3]
    assert counts(store(db_url, "replayed")) == {"popular": (1, 0.0), "random": (1, 0.0)}
    engine.dispose()
