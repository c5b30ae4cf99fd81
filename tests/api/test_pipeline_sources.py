"""Retrieval sources of a pipeline's items: in the assign response and on every stored
impression, from the API and from the simulator, on both databases."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import select

from abplatform.config.loader import load_experiment_text
from abplatform.storage import models as m
from abplatform.storage.db import open_database
from simulator.runner import simulate
from tests.api.conftest import EXAMPLE, KEY

pytestmark = pytest.mark.anyio

TREATMENT = "  - {key: treatment, weight: 0.5, strategy: {kind: popularity, params: {window_days: 30, per_category: true}}}\n"  # noqa: E501
PIPELINE = (
    "{kind: pipeline, params: {retrieve: [{kind: popularity, n: 5, name: popular}, "
    "{kind: random, n: 5}]}}"
)
LABELS = {"popular", "random"}


def _pipeline_yaml() -> str:
    text = EXAMPLE.read_text()
    assert TREATMENT in text
    return text.replace(TREATMENT, f"  - {{key: treatment, weight: 0.5, strategy: {PIPELINE}}}\n")


async def _stored_impressions(url: str, units: list[str]) -> dict[str, list[str | None]]:
    """{variant: sources of its stored impressions} of `units`, once the writer has them."""
    engine = open_database(url)
    try:
        for _ in range(100):
            with engine.connect() as conn:
                rows = conn.execute(
                    select(m.Exposure.variant, m.Impression.source)
                    .join(m.Impression, m.Impression.exposure_id == m.Exposure.id)
                    .where(m.Exposure.unit_id.in_(units))
                    .order_by(m.Impression.exposure_id, m.Impression.position)
                ).all()
                exposures = conn.execute(
                    select(m.Exposure.id).where(m.Exposure.unit_id.in_(units))
                ).all()
            if len(exposures) == len(units):
                break
            await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    out: dict[str, list[str | None]] = {}
    for variant, source in rows:
        out.setdefault(variant, []).append(source)
    return out


async def test_assign_shows_and_stores_each_items_source(
    both_lanes: httpx.AsyncClient, seeded_url: str
) -> None:
    client = both_lanes
    created = await client.post(
        "/v1/experiments", content=_pipeline_yaml(), headers={"content-type": "application/yaml"}
    )
    assert created.status_code == 201, created.text
    started = await client.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 200, started.text
    units = [f"u{i}" for i in range(30)]
    answered: dict[str, list[list[str | None]]] = {}
    for unit in units[:20]:
        body = (await client.post("/v1/assign", json={"experiment": KEY, "unit_id": unit})).json()
        answered.setdefault(body["variant"], []).append(
            [item.get("source") for item in body["items"]]
        )
    batch = await client.post(
        "/v1/assign/batch",
        json={"requests": [{"experiment": KEY, "unit_id": u} for u in units[20:]]},
    )
    assert batch.status_code == 200, batch.text
    for body in batch.json()["results"]:
        answered.setdefault(body["variant"], []).append(
            [item.get("source") for item in body["items"]]
        )
    assert set(answered) == {"control", "treatment"}
    # The pipeline's items name their source; popularity's items carry none (key absent).
    assert {s for slate in answered["treatment"] for s in slate} <= LABELS
    assert all(s is None for slate in answered["control"] for s in slate)
    stored = await _stored_impressions(seeded_url, units)
    assert sorted(stored["treatment"], key=str) == sorted(
        (s for slate in answered["treatment"] for s in slate), key=str
    )
    assert set(stored["control"]) == {None}
    # A round-robin merge starts with the first source's top item.
    assert {slate[0] for slate in answered["treatment"]} == {"popular"}


def test_the_simulator_stores_each_impressions_source(db_url: str) -> None:
    text = _pipeline_yaml().rsplit("simulation:", 1)[0]
    config = load_experiment_text(text + "simulation: {users: 200, days: 1, items: 80}\n")
    engine = open_database(db_url)
    simulate(engine, config)
    with engine.connect() as conn:
        rows = conn.execute(
            select(m.Exposure.variant, m.Impression.source, m.Impression.position).join(
                m.Impression, m.Impression.exposure_id == m.Exposure.id
            )
        ).all()
    engine.dispose()
    by_variant: dict[str, set[str | None]] = {}
    for variant, source, _ in rows:
        by_variant.setdefault(variant, set()).add(source)
    assert by_variant["control"] == {None}
    assert by_variant["treatment"] == LABELS
    # Position 0 of a round-robin merge is always the first source's top item.
    assert {s for v, s, p in rows if v == "treatment" and p == 0} == {"popular"}
