"""Retrieval sources of a pipeline's items: in the assign response and on every stored
impression, from the API and from the simulator, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from abplatform.config.loader import load_experiment_text
from abplatform.storage import models as m
from abplatform.storage.db import open_database
from simulator.runner import simulate, simulation_catalog
from strategies.training import train_experiment
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
                # Exposures first: their impressions are committed with them, so once every
                # exposure is there the impressions read next are complete.
                exposures = conn.execute(
                    select(m.Exposure.id).where(m.Exposure.unit_id.in_(units))
                ).all()
                rows = conn.execute(
                    select(m.Exposure.variant, m.Impression.source)
                    .join(m.Impression, m.Impression.exposure_id == m.Exposure.id)
                    .where(m.Exposure.unit_id.in_(units))
                    .order_by(m.Impression.exposure_id, m.Impression.position)
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


TOWER = "{embedding_dim: 8, hidden_units: [8], epochs: 2, batch_size: 128}"
TOWER_PIPELINE = (
    f"{{kind: pipeline, params: {{retrieve: [{{kind: two_tower, n: 8, params: {TOWER}}}, "
    f"{{kind: popularity, n: 4}}], rank: {{kind: two_tower, params: {TOWER}}}, "
    "rerank: {kind: diversity_rerank, params: {lambda: 0.2}}}}"
)


@pytest.mark.slow
async def test_a_trained_two_tower_pipeline_is_one_model_served_with_sources(
    client: httpx.AsyncClient, seeded_url: str, tmp_path: Path
) -> None:
    text = EXAMPLE.read_text().replace(
        TREATMENT, f"  - {{key: treatment, weight: 0.5, strategy: {TOWER_PIPELINE}}}\n"
    )
    config = load_experiment_text(text)
    engine = open_database(seeded_url)
    report = train_experiment(
        engine, config, simulation_catalog(config), artifacts_dir=tmp_path / "artifacts"
    )
    engine.dispose()
    assert report.unregistered == {}
    model_id = next(r.model_id for r in report.results if r.name == "treatment")
    assert model_id is not None
    created = await client.post(
        "/v1/experiments", content=text, headers={"content-type": "application/yaml"}
    )
    assert created.status_code == 201, created.text
    refused = await client.post(f"/v1/experiments/{KEY}/start")  # a candidate is not `latest`
    assert refused.status_code == 409, refused.text
    promoted = await client.post(f"/v1/models/{model_id}/promote")
    assert promoted.status_code == 200, promoted.text
    started = await client.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 200, started.text
    units = [f"u{i}" for i in range(30)]
    for unit in units:
        body = (await client.post("/v1/assign", json={"experiment": KEY, "unit_id": unit})).json()
        sources = {item.get("source") for item in body["items"]}
        expected = {None} if body["variant"] == "control" else {"two_tower", "popularity"}
        assert sources <= expected and sources, body
    stored = await _stored_impressions(seeded_url, units)
    assert set(stored["treatment"]) <= {"two_tower", "popularity"}
    assert None not in stored["treatment"] and set(stored["control"]) == {None}
    engine = open_database(seeded_url)
    with engine.connect() as conn:
        served = conn.execute(
            select(m.Exposure.variant, m.Exposure.model_id)
            .where(m.Exposure.unit_id.in_(units))
            .distinct()
        ).all()
    engine.dispose()
    assert dict(served) == {"control": None, "treatment": model_id}
