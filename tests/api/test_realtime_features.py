"""Real-time features over HTTP: an event on one worker changes the unit's next slate on
another, the slate cache never serves a slate older than the unit's last acknowledged event,
`realtime: false` switches it off, and `/metrics` counts it all.

The seeded experiment is `examples/homepage_popularity.yaml` in a tiny world: `treatment` is
popularity per category, which uses the unit's fresh favourite category; `control` global
popularity, which uses no online feature. Views of items of one category make it the unit's
favourite, so its next treatment slate holds only that category's items. Two apps in one
process are two workers' caches on one database; then a real `abplatform serve --workers 2`.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from abplatform.api.app import create_app
from abplatform.api.settings import Settings
from abplatform.storage import models as m
from abplatform.storage.db import open_database
from tests.api.conftest import KEY
from tests.api.test_propagation import pinned_clients
from tests.api.test_shutdown import _free_port, _serve

CATALOG = f"sim:{KEY}"
K = 5
STATIC = """
key: static_vs_realtime
catalog: sim:homepage_popularity
variants:
  - {key: static, weight: 0.5, strategy: {kind: popularity, params: {per_category: true},
     realtime: false}}
  - {key: realtime, weight: 0.5, strategy: {kind: popularity, params: {per_category: true}}}
metrics: [{name: clicks, type: mean, event: click}]
"""


def categories(url: str) -> dict[str, list[str]]:
    """The catalogue's items by category."""
    engine = open_database(url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(m.CatalogItem.item_id, m.CatalogItem.category).where(
                m.CatalogItem.catalog == CATALOG
            )
        ).all()
    engine.dispose()
    out: dict[str, list[str]] = {}
    for item, category in rows:
        out.setdefault(str(category), []).append(str(item))
    return out


def views(unit: str, items: list[str], prefix: str, experiment: str = KEY) -> dict[str, Any]:
    """A batch of view events of `unit`, 3 per item."""
    return {
        "events": [
            {
                "event_id": f"{prefix}-{n}",
                "unit_id": unit,
                "type": "view",
                "experiment": experiment,
                "item_id": item,
            }
            for n, item in enumerate(items * 3)
        ]
    }


def other_category(by_category: dict[str, list[str]], slate: list[str]) -> str:
    """A category with at least K items none of which is in `slate`."""
    shown = set(slate)
    return next(
        c for c, items in sorted(by_category.items()) if len(items) >= K and not shown & set(items)
    )


def items_of(answer: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


@asynccontextmanager
async def two_workers(url: str, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    """Two apps on one database (two workers' caches), a minute of status TTL."""
    apps = [
        create_app(
            Settings(
                database_url=url,
                api_auth=False,
                api_status_ttl_seconds=60.0,
                api_journal_dir=str(tmp_path / f"journal-{n}"),
            )
        )
        for n in range(2)
    ]
    first, second = apps
    async with (
        first.router.lifespan_context(first),
        second.router.lifespan_context(second),
        httpx.AsyncClient(transport=httpx.ASGITransport(first), base_url="http://a") as one,
        httpx.AsyncClient(transport=httpx.ASGITransport(second), base_url="http://b") as other,
    ):
        yield one, other


async def assign(http: httpx.AsyncClient, unit: str, experiment: str = KEY) -> dict[str, Any]:
    answer = await http.post("/v1/assign", json={"experiment": experiment, "unit_id": unit, "k": K})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def unit_in(http: httpx.AsyncClient, variant: str, experiment: str = KEY) -> str:
    """A simulated user (a known unit) the experiment assigns to `variant`."""
    for n in range(300):
        unit = f"u{n:06d}"
        if (await assign(http, unit, experiment))["variant"] == variant:
            return unit
    raise AssertionError(f"no unit in {variant}")


@pytest.mark.anyio
async def test_an_event_on_one_worker_changes_the_next_slate_on_another(
    seeded_url: str, tmp_path: Path
) -> None:
    by_category = categories(seeded_url)
    async with two_workers(seeded_url, tmp_path) as (one, other):
        assert (await one.post(f"/v1/experiments/{KEY}/start")).status_code == 200
        unit = await unit_in(other, "treatment")
        before = items_of(await assign(other, unit))
        assert items_of(await assign(other, unit)) == before  # from the slate cache
        category = other_category(by_category, before)
        sent = await one.post("/v1/events", json=views(unit, by_category[category][:4], "v"))
        assert sent.status_code == 200, sent.text
        assert (sent.json()["new"], sent.json()["featured"], sent.json()["unfeatured"]) == (
            12,
            12,
            [],
        )
        # The very next assign on the other worker reflects it (no wait, no TTL).
        after = items_of(await assign(other, unit))
        assert set(after) <= set(by_category[category]), (category, after)
        assert items_of(await assign(one, unit)) == after
        # A unit of control (global popularity uses no online feature) is not affected.
        control = await unit_in(other, "control")
        shown = items_of(await assign(other, control))
        assert (
            await one.post("/v1/events", json=views(control, by_category[category], "c"))
        ).json()["featured"] == 3 * len(by_category[category])
        assert items_of(await assign(other, control)) == shown
        metrics = (await other.get("/metrics")).text
    assert "# TYPE abplatform_slate_cache_hits_total counter" in metrics
    hits = _sample(metrics, "abplatform_slate_cache_hits_total")
    misses = _sample(metrics, "abplatform_slate_cache_misses_total")
    assert hits >= 2 and misses >= 3
    assert 'route="/v1/assign",status="2xx"' in metrics
    assert "abplatform_request_seconds_bucket{" in metrics and 'le="+Inf"' in metrics


def _sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.anyio
async def test_the_slate_cache_never_serves_features_older_than_the_last_event(
    seeded_url: str, tmp_path: Path
) -> None:
    """Alternate events on one worker and assigns on both, many times: every slate after an
    acknowledged batch is the one of the batch's category, though the previous one was cached."""
    by_category = categories(seeded_url)
    usable = [c for c, items in sorted(by_category.items()) if len(items) >= K]
    async with two_workers(seeded_url, tmp_path) as (one, other):
        assert (await one.post(f"/v1/experiments/{KEY}/start")).status_code == 200
        unit = await unit_in(one, "treatment")
        for round_number in range(12):
            category = usable[round_number % len(usable)]
            writer, reader = (one, other) if round_number % 2 else (other, one)
            # 48 views of the category: most of the 50 interactions the store keeps, more
            # than the unit's history holds of any category: it becomes the favourite.
            items = (by_category[category] * 16)[:16]
            sent = await writer.post("/v1/events", json=views(unit, items, f"r{round_number}"))
            assert sent.status_code == 200 and not sent.json()["unfeatured"], sent.text
            for http in (reader, writer, reader):
                slate = items_of(await assign(http, unit))
                assert set(slate) <= set(by_category[category]), (round_number, category, slate)


@pytest.mark.anyio
async def test_realtime_false_serves_what_the_strategy_learned(
    seeded_url: str, tmp_path: Path
) -> None:
    by_category = categories(seeded_url)
    async with two_workers(seeded_url, tmp_path) as (one, other):
        created = await one.post(
            "/v1/experiments", content=STATIC, headers={"content-type": "application/yaml"}
        )
        assert created.status_code == 201, created.text
        assert (await one.post("/v1/experiments/static_vs_realtime/start")).status_code == 200
        slates = {}
        for variant in ("static", "realtime"):
            unit = await unit_in(other, variant, "static_vs_realtime")
            before = items_of(await assign(other, unit, "static_vs_realtime"))
            category = other_category(by_category, before)
            batch = views(unit, by_category[category][:4], variant, "static_vs_realtime")
            assert (await one.post("/v1/events", json=batch)).json()["featured"] == 12
            slates[variant] = (
                before,
                items_of(await assign(other, unit, "static_vs_realtime")),
                category,
            )
    static_before, static_after, _ = slates["static"]
    assert static_after == static_before
    _, realtime_after, category = slates["realtime"]
    assert set(realtime_after) <= set(by_category[category])


@pytest.mark.slow
def test_serve_with_two_workers_uses_an_event_from_either_on_the_next_slate(
    seeded_url: str, tmp_path: Path
) -> None:
    """A real `abplatform serve --workers 2`: one keep-alive connection pinned to each worker
    (told apart by `/readyz`'s `process`); events go to one, assigns to the other."""
    by_category = categories(seeded_url)
    port = _free_port()
    server = _serve(seeded_url, port, 2, tmp_path / "journal")
    clients = pinned_clients(port, 2)
    (first_pid, first), (second_pid, second) = sorted(clients.items())
    try:
        assert first.post(f"/v1/experiments/{KEY}/start").status_code == 200
        units = []
        for n in range(300):
            unit = f"u{n:06d}"
            body = {"experiment": KEY, "unit_id": unit, "k": K}
            if second.post("/v1/assign", json=body).json()["variant"] == "treatment":
                units.append(unit)
            if len(units) == 4:
                break
        for number, unit in enumerate(units):
            writer, reader = (first, second) if number % 2 else (second, first)
            body = {"experiment": KEY, "unit_id": unit, "k": K}
            before = items_of(reader.post("/v1/assign", json=body).json())
            category = other_category(by_category, before)
            sent = writer.post(
                "/v1/events", json=views(unit, by_category[category][:4], f"s{number}")
            )
            assert sent.status_code == 200 and sent.json()["featured"] == 12, sent.text
            after = items_of(reader.post("/v1/assign", json=body).json())
            assert set(after) <= set(by_category[category]), (unit, category, after)
        metrics = {pid: http.get("/metrics").text for pid, http in clients.items()}
        assert int(first.get("/readyz").json()["process"]) == first_pid
        assert int(second.get("/readyz").json()["process"]) == second_pid
    finally:
        for http in clients.values():
            http.close()
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    for pid, text in metrics.items():
        assert f'process="{pid}"' in text
        assert _sample(text, "abplatform_slate_cache_misses_total") >= 2
