"""Contract tests of the API over httpx + ASGI, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from abplatform.assignment.engine import build_policy
from abplatform.config import ConfigError, load_experiment_text
from abplatform.csvcheck import timestamp_problems
from abplatform.storage import models as m
from abplatform.storage.db import open_database
from abplatform.values import NUL_PROBLEM, SECONDS_PROBLEM
from reports.analysis import analyze
from tests.api.conftest import EXAMPLE, KEY, Keys, small_config

pytestmark = pytest.mark.anyio


async def _start(client: httpx.AsyncClient, key: str = KEY) -> None:
    response = await client.post(f"/v1/experiments/{key}/start")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running"


def _count(url: str, table: Any, *where: Any) -> int:
    engine = open_database(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
    engine.dispose()
    return int(n)


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {
        "status": "ok",
        "process": os.getpid(),
        "unservable": {},
    }
    for path in ("/healthz", "/readyz"):
        head = await client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == "application/json"
        assert head.headers["content-length"] == str(len((await client.get(path)).content))


async def test_keys_and_scopes(client: httpx.AsyncClient, keys: Keys) -> None:
    body = {"experiment": KEY, "unit_id": "u1"}
    no_key = await client.post("/v1/assign", json=body, headers={"Authorization": ""})
    assert no_key.status_code == 401
    assert no_key.headers["www-authenticate"] == "Bearer"
    bad = {"Authorization": "Bearer abp_0000000000000000_nope"}
    assert (await client.post("/v1/assign", json=body, headers=bad)).status_code == 401
    wrong_secret = keys.assign.rsplit("_", 1)[0] + "_wrong"
    wrong = {"Authorization": f"Bearer {wrong_secret}"}
    assert (await client.post("/v1/assign", json=body, headers=wrong)).status_code == 401
    read_only = await client.post("/v1/assign", json=body, headers=keys.header("read"))
    assert read_only.status_code == 403
    assert "'assign' scope" in read_only.json()["detail"]
    assign_only = keys.header("assign")
    assert (await client.get("/v1/experiments", headers=assign_only)).status_code == 403
    start = await client.post(f"/v1/experiments/{KEY}/start", headers=keys.header("read"))
    assert start.status_code == 403
    assert (await client.get("/v1/experiments", headers=keys.header("read"))).status_code == 200
    await _start(client)
    assert (await client.post("/v1/assign", json=body, headers=assign_only)).status_code == 200


async def test_assignment_equals_the_policy(
    client: httpx.AsyncClient, app: FastAPI, seeded_url: str
) -> None:
    await _start(client)
    policy = build_policy(small_config())
    units = [f"unit-{i}" for i in range(400)]
    single = [
        (await client.post("/v1/assign", json={"experiment": KEY, "unit_id": u})).json()
        for u in units[:50]
    ]
    batch = await client.post(
        "/v1/assign/batch",
        json={"requests": [{"experiment": KEY, "unit_id": u, "k": 3} for u in units[50:]]},
    )
    assert batch.status_code == 200, batch.text
    answers = single + batch.json()["results"]
    for unit, answer in zip(units, answers, strict=True):
        decision = policy.assign(unit)
        assert decision is not None
        assert (answer["variant"], answer["propensity"]) == (decision.variant, decision.propensity)
        assert answer["exposure_id"] is not None
    assert {len(a["items"]) for a in single} == {5}  # default k: the simulation's slate size
    assert {len(a["items"]) for a in batch.json()["results"]} == {3}
    assert [i["position"] for i in single[0]["items"]] == [0, 1, 2, 3, 4]
    ids = [a["exposure_id"] for a in answers]
    assert len(set(ids)) == len(ids)
    await app.state.services.writer.flush()  # answered once accepted; committed within ms
    engine = open_database(seeded_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                m.Exposure.id, m.Exposure.unit_id, m.Exposure.variant, m.Exposure.slate_size
            ).where(m.Exposure.id.in_(ids))
        ).all()
        impressions = conn.execute(
            select(func.count()).select_from(m.Impression).where(m.Impression.exposure_id.in_(ids))
        ).scalar_one()
    engine.dispose()
    stored = {r.id: (r.unit_id, r.variant, r.slate_size) for r in rows}
    for unit, answer in zip(units, answers, strict=True):
        assert stored[answer["exposure_id"]] == (unit, answer["variant"], len(answer["items"]))
    assert impressions == 50 * 5 + 350 * 3


async def test_units_outside_coverage_get_no_variant(client: httpx.AsyncClient) -> None:
    text = (
        EXAMPLE.read_text()
        .replace("coverage: 1.0", "coverage: 0.3")
        .replace("key: homepage_popularity", "key: partial\ncatalog: 'sim:homepage_popularity'")
    )
    created = await client.post(
        "/v1/experiments", content=text, headers={"Content-Type": "application/yaml"}
    )
    assert created.status_code == 201, created.text
    await _start(client, "partial")
    policy = build_policy(load_experiment_text(text))
    outside = [u for u in (f"u{i}" for i in range(100)) if policy.assign(u) is None]
    assert outside
    answer = (
        await client.post("/v1/assign", json={"experiment": "partial", "unit_id": outside[0]})
    ).json()
    assert answer == {
        "experiment": "partial",
        "variant": None,
        "propensity": None,
        "exposure_id": None,
        "items": [],
    }


async def test_only_running_experiments_assign(client: httpx.AsyncClient) -> None:
    body = {"experiment": KEY, "unit_id": "u1"}
    draft = await client.post("/v1/assign", json=body)
    assert draft.status_code == 409
    assert "is draft" in draft.json()["detail"]
    await _start(client)
    assert (await client.post("/v1/assign", json=body)).status_code == 200
    stopped = await client.post(f"/v1/experiments/{KEY}/stop")
    assert stopped.json()["status"] == "stopped"
    response = await client.post("/v1/assign", json=body)
    assert response.status_code == 409
    assert "is stopped" in response.json()["detail"]
    unknown = await client.post("/v1/assign", json={"experiment": "nope", "unit_id": "u1"})
    assert unknown.status_code == 404
    assert KEY in unknown.json()["detail"]
    assert (await client.post("/v1/experiments/nope/start")).status_code == 404


def _events(n: int, prefix: str = "e") -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}{i}",
            "unit_id": f"u{i % 7}",
            "type": "click",
            "experiment": KEY,
            "item_id": "i1",
            "timestamp": "2026-11-27T10:00:00Z",
        }
        for i in range(n)
    ]


async def test_events_are_idempotent(client: httpx.AsyncClient, seeded_url: str) -> None:
    batch = {"events": _events(100)}
    first = await client.post("/v1/events", json=batch)
    assert first.status_code == 200, first.text
    assert _counts(first.json()) == {"received": 100, "new": 100, "duplicates": 0}
    # "i1" is not an item of the experiment's catalogue: stored, reported, no features.
    assert first.json()["featured"] == 0
    assert [u["index"] for u in first.json()["unfeatured"]] == list(range(100))
    again = await client.post("/v1/events", json=batch)
    assert again.json() == {
        "received": 100,
        "new": 0,
        "duplicates": 100,
        "featured": 0,
        "unfeatured_count": 0,
        "unfeatured": [],  # duplicates are not reported again
    }
    mixed = {"events": _events(2, "x") + _events(2, "x") + _events(1)}
    assert _counts((await client.post("/v1/events", json=mixed)).json()) == {
        "received": 5,
        "new": 2,
        "duplicates": 3,
    }
    ids = [f"e{i}" for i in range(100)] + ["x0", "x1"]
    assert _count(seeded_url, m.Event, m.Event.event_id.in_(ids)) == 102
    no_experiment = {
        "events": [{"event_id": "free", "unit_id": "u", "type": "purchase", "value": 9.5}]
    }
    assert (await client.post("/v1/events", json=no_experiment)).json()["new"] == 1


def _counts(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: answer[key] for key in ("received", "new", "duplicates")}


def _locations(response: httpx.Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["detail"]]


async def test_bad_bodies_are_422_naming_the_field(client: httpx.AsyncClient) -> None:
    too_many = await client.post("/v1/events", json={"events": _events(1001)})
    assert ["body", "events"] in _locations(too_many)
    long_id = await client.post("/v1/assign", json={"experiment": KEY, "unit_id": "u" * 129})
    assert ["body", "unit_id"] in _locations(long_id)
    nan = await client.post(
        "/v1/events",
        content=b'{"events": [{"event_id": "a", "unit_id": "u", "type": "click", "value": NaN}]}',
        headers={"Content-Type": "application/json"},
    )
    assert ["body", "events", 0, "value"] in _locations(nan)
    missing = await client.post("/v1/events", json={"events": [{"event_id": "a", "type": "click"}]})
    assert ["body", "events", 0, "unit_id"] in _locations(missing)
    bad_type = await client.post(
        "/v1/events", json={"events": [{"event_id": "a", "unit_id": "u", "type": "impression"}]}
    )
    assert ["body", "events", 0, "type"] in _locations(bad_type)
    unknown = await client.post(
        "/v1/events",
        json={"events": [{"event_id": "a", "unit_id": "u", "type": "click", "experiment": "nope"}]},
    )
    assert ["body", "events", 0, "experiment"] in _locations(unknown)
    big_k = await client.post("/v1/assign", json={"experiment": KEY, "unit_id": "u", "k": 10_000})
    assert ["body", "k"] in _locations(big_k)
    batch = await client.post(
        "/v1/assign/batch", json={"requests": [{"experiment": KEY, "unit_id": "u"}] * 1001}
    )
    assert ["body", "requests"] in _locations(batch)
    not_json = await client.post(
        "/v1/assign", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    huge = await client.post(
        "/v1/events", content=b"x" * (5 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert huge.status_code == 413


async def test_create_validates_like_the_cli(client: httpx.AsyncClient) -> None:
    bad = (
        "key: x\nvariants:\n  - {key: a, weight: 0.7, strategy: {kind: nope}}\n"
        "  - {key: a, weight: 0.7}\n"
    )
    response = await client.post(
        "/v1/experiments", content=bad, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 422
    with pytest.raises(ConfigError) as expected:
        load_experiment_text(bad)
    assert response.json()["problems"] == expected.value.problems
    assert response.json()["detail"] == "3 problems in the experiment config"
    as_json = load_experiment_text(EXAMPLE.read_text()).model_dump(mode="json") | {
        "key": "from_json"
    }
    created = await client.post("/v1/experiments", json=as_json)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "draft"
    shown = await client.get("/v1/experiments/from_json")
    assert shown.json()["variants"][1] == {
        "key": "treatment",
        "weight": 0.5,
        "strategy": "popularity",
    }
    listed = (await client.get("/v1/experiments")).json()["experiments"]
    assert [e["key"] for e in listed] == ["from_json", KEY]
    malformed = await client.post(
        "/v1/experiments", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 422
    assert malformed.json()["problems"][0].startswith("json: malformed JSON")


async def test_results_and_report(client: httpx.AsyncClient, seeded_url: str) -> None:
    results = await client.get(f"/v1/experiments/{KEY}/results")
    assert results.status_code == 200, results.text
    engine = open_database(seeded_url)
    expected = json.loads(json.dumps(analyze(engine, KEY).to_dict(), allow_nan=False))
    engine.dispose()
    assert results.json() == expected
    report = await client.get(f"/v1/experiments/{KEY}/report")
    assert report.status_code == 200
    assert report.headers["content-type"].startswith("text/html")
    assert "<html" in report.text.lower()
    assert (await client.get("/v1/experiments/nope/results")).status_code == 404


async def test_reposting_its_yaml_keeps_the_catalogue_and_refuses_orphans(
    client: httpx.AsyncClient,
) -> None:
    """The example's own YAML (no `catalog:`) re-posted over its simulated run keeps
    `sim:homepage_popularity`; another catalogue or a dropped variant with exposures is 409."""
    await _start(client)
    body = {"experiment": KEY, "unit_id": "u1"}
    assert (await client.post("/v1/assign", json=body)).status_code == 200
    text = EXAMPLE.read_text()
    yaml = {"content-type": "application/yaml"}
    again = await client.post("/v1/experiments", content=text, headers=yaml)
    assert again.status_code == 201, again.text
    assert (again.json()["catalog"], again.json()["status"]) == (f"sim:{KEY}", "running")
    assert (await client.post("/v1/assign", json=body)).status_code == 200
    assert (await client.get(f"/v1/experiments/{KEY}/results")).status_code == 200
    assert (await client.get(f"/v1/experiments/{KEY}/report")).status_code == 200

    moved = await client.post("/v1/experiments", content=f"{text}\ncatalog: shop\n", headers=yaml)
    assert moved.status_code == 409, moved.text
    assert "catalog: 'shop' would orphan them" in moved.json()["detail"]
    assert f"sim:{KEY}" in moved.json()["detail"]
    config = load_experiment_text(text)
    kept = config.variants[0].model_dump(mode="json")
    document = config.model_dump(mode="json") | {"variants": [kept | {"weight": 1.0}]}
    dropped = await client.post("/v1/experiments", json=document | {"control": kept["key"]})
    assert dropped.status_code == 409, dropped.text
    assert repr(config.variants[1].key) in dropped.json()["detail"]
    assert "no longer lists" in dropped.json()["detail"]
    shown = (await client.get(f"/v1/experiments/{KEY}")).json()
    assert shown["catalog"] == f"sim:{KEY}"
    assert [v["key"] for v in shown["variants"]] == [v.key for v in config.variants]
    assert (await client.post("/v1/assign", json=body)).status_code == 200


async def test_an_unfittable_experiment_is_unservable_until_fixed(
    client: httpx.AsyncClient, seeded_url: str
) -> None:
    """Started on an empty catalogue: 409 naming the reason on both assign routes, listed
    by /readyz; once its catalogue is back, the next start serves it again."""
    from abplatform.storage.catalog import delete_catalog
    from simulator.runner import simulate

    engine = open_database(seeded_url)
    with engine.begin() as conn:
        delete_catalog(conn, f"sim:{KEY}")
    await _start(client)
    for path, body in (
        ("/v1/assign", {"experiment": KEY, "unit_id": "u1"}),
        ("/v1/assign/batch", {"requests": [{"experiment": KEY, "unit_id": "u1"}]}),
    ):
        response = await client.post(path, json=body)
        assert response.status_code == 409, response.text
        assert (
            "cannot be served: cannot be fitted or loaded: strategy 'popularity' cannot fit on an "
            in (response.json()["detail"])
        )
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ok" and list(ready["unservable"]) == [KEY]

    simulate(engine, small_config())  # the catalogue is back
    engine.dispose()
    await _start(client)
    served = await client.post("/v1/assign", json={"experiment": KEY, "unit_id": "u1"})
    assert served.status_code == 200, served.text
    assert (await client.get("/readyz")).json() == {
        "status": "ok",
        "process": os.getpid(),
        "unservable": {},
    }


async def test_timestamps_are_unix_seconds_never_ms(
    both_lanes: httpx.AsyncClient, seeded_url: str
) -> None:
    """One rule with CSV ingest: a number is seconds; one only milliseconds can be is a 422."""
    http = both_lanes
    for i, stamp in enumerate([21_000_000_000, 1_700_000_000_000, "1700000000000", -1]):
        event = {"event_id": f"ms{i}", "unit_id": "u", "type": "click", "timestamp": stamp}
        response = await http.post("/v1/events", json={"events": [event]})
        assert ["body", "events", 0, "timestamp"] in _locations(response)
        wording = timestamp_problems(str(stamp))[0].split(": ", 1)[1].rsplit(" (got", 1)[0]
        assert wording == SECONDS_PROBLEM
        assert SECONDS_PROBLEM in response.json()["detail"][0]["msg"], response.text
    seconds = {"event_id": "s1", "unit_id": "u", "type": "click", "timestamp": 1_700_000_000}
    assert (await http.post("/v1/events", json={"events": [seconds]})).json()["new"] == 1
    engine = open_database(seeded_url)
    with engine.connect() as conn:
        stored = conn.scalars(select(m.Event.ts).where(m.Event.event_id == "s1")).one()
    engine.dispose()
    assert stored == datetime(2023, 11, 14, 22, 13, 20)
    assert _count(seeded_url, m.Event, m.Event.event_id.like("ms%")) == 0


async def test_numbers_are_strict(both_lanes: httpx.AsyncClient) -> None:
    """Text or booleans for numbers are 422 on both lanes, not quietly converted."""
    for k in ("3", True, 3.5):
        response = await both_lanes.post(
            "/v1/assign", json={"experiment": KEY, "unit_id": "u", "k": k}
        )
        assert ["body", "k"] in _locations(response)
        assert response.json()["detail"][0]["msg"] == "Input should be a valid integer"
    for field, bad in (("exposure_id", "5"), ("exposure_id", True), ("value", "9.5")):
        event = {"event_id": "n", "unit_id": "u", "type": "purchase", field: bad}
        response = await both_lanes.post("/v1/events", json={"events": [event]})
        assert ["body", "events", 0, field] in _locations(response)
        assert response.json()["detail"][0]["msg"].startswith("Input should be a valid")
    ok = await both_lanes.post("/v1/assign", json={"experiment": KEY, "unit_id": "u", "k": 3})
    assert ok.status_code == 409  # past validation: the seeded experiment is a draft
    whole = {"event_id": "w", "unit_id": "u", "type": "purchase", "exposure_id": 5, "value": 9}
    assert (await both_lanes.post("/v1/events", json={"events": [whole]})).json()["new"] == 1


async def test_nul_characters_are_422_naming_the_field(client: httpx.AsyncClient) -> None:
    """One rule on both databases: text holding a NUL is refused wherever it comes in."""
    config = load_experiment_text(EXAMPLE.read_text()).model_dump(mode="json")
    as_json = await client.post("/v1/experiments", json=config | {"description": "x\u0000y"})
    assert as_json.status_code == 422, as_json.text
    assert as_json.json()["problems"] == [f"description: {NUL_PROBLEM} (got 'x\\x00y')"]
    as_yaml = await client.post(
        "/v1/experiments",
        content=EXAMPLE.read_text() + 'unit: "u\\0"\n',
        headers={"Content-Type": "application/yaml"},
    )
    assert as_yaml.json()["problems"] == [f"unit: {NUL_PROBLEM} (got 'u\\x00')"]
    for method, path in (("GET", ""), ("POST", "/start"), ("GET", "/results")):
        response = await client.request(method, f"/v1/experiments/a%00b{path}")
        assert ["path", "key"] in _locations(response), path
        assert NUL_PROBLEM in response.json()["detail"][0]["msg"]
    event = {"event_id": "e\u0000", "unit_id": "u", "type": "click"}
    response = await client.post("/v1/events", json={"events": [event]})
    assert ["body", "events", 0, "event_id"] in _locations(response)
    assert NUL_PROBLEM in response.json()["detail"][0]["msg"]
    shown = await client.get(f"/v1/experiments/{KEY}")  # the refused updates changed nothing
    assert shown.json()["description"] == config["description"]


async def test_deeply_nested_configs_are_422_naming_where(client: httpx.AsyncClient) -> None:
    """A 1 KB depth-500 list is refused at 32 levels, as YAML and as JSON, not a 500."""
    yaml_body = "key: x\nvariants: " + "[" * 500 + "]" * 500 + "\n"
    as_yaml = await client.post(
        "/v1/experiments", content=yaml_body, headers={"Content-Type": "application/yaml"}
    )
    assert as_yaml.status_code == 422, as_yaml.text
    assert as_yaml.json()["problems"] == ["yaml: nested deeper than 32 levels at line 2, column 42"]
    json_body = '{"key": "x", "variants": ' + "[" * 500 + "]" * 500 + "}"
    as_json = await client.post(
        "/v1/experiments", content=json_body, headers={"Content-Type": "application/json"}
    )
    assert as_json.status_code == 422, as_json.text
    assert as_json.json()["problems"] == ["variants" + ".0" * 31 + ": nested deeper than 32 levels"]
