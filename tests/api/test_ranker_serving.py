"""A pipeline ranked by the learned ranker: trained on the logged impressions of a simulated
experiment, registered as one model, served over HTTP through the ASGI app."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

import strategies.ranker  # noqa: F401  registers `ranker` (until the entry point is installed)
from abplatform.config.loader import load_experiment_text
from abplatform.storage.db import open_database
from abplatform.storage.model_registry import get_model
from simulator.runner import simulation_catalog
from strategies.ranker.peers import lightgbm_available
from strategies.registered import load_model
from strategies.training import train_experiment
from tests.api.conftest import EXAMPLE, KEY
from tests.api.test_pipeline_sources import TREATMENT

pytestmark = pytest.mark.anyio

RANKED = (
    "{kind: pipeline, params: {retrieve: [{kind: popularity, n: 12}, {kind: random, n: 8}], "
    "rank: {kind: ranker, params: {objective: purchase, epochs: 2, min_impressions: 200, "
    "min_clicks: 5}}}}"
)


@pytest.mark.slow
async def test_a_ranker_pipeline_trains_on_impressions_and_is_served(
    client: httpx.AsyncClient, seeded_url: str, tmp_path: Path
) -> None:
    text = EXAMPLE.read_text()
    assert TREATMENT in text
    text = text.replace(TREATMENT, f"  - {{key: treatment, weight: 0.5, strategy: {RANKED}}}\n")
    config = load_experiment_text(text)
    engine = open_database(seeded_url)
    report = train_experiment(
        engine, config, simulation_catalog(config), artifacts_dir=tmp_path / "artifacts"
    )
    assert report.unregistered == {}
    (quality,) = report.rankers
    assert quality.variant == "treatment" and quality.fallback is None
    peers = {"ranker", "logistic"} | ({"lightgbm"} if lightgbm_available() else set())
    assert quality.holdout_rows > 0 and set(quality.heads) == peers
    assert report.to_dict()["rankers"][0]["heads"]["ranker"]["click"]["rows"] > 0
    model_id = next(r.model_id for r in report.results if r.name == "treatment")
    assert model_id is not None
    with Session(engine) as session:
        record = get_model(session, model_id)
    engine.dispose()
    served = load_model(record)
    ranker = served.fitted_stages()  # type: ignore[attr-defined]
    (stage,) = [s for s in ranker.values() if s.kind == "ranker"]
    assert stage.fallback_reason is None  # trained on the seeded experiment's impressions
    quality = stage.artifact.manifest["training"]["quality"]
    assert set(quality) == peers
    assert set(quality["ranker"]) == {"click", "purchase"}

    created = await client.post(
        "/v1/experiments", content=text, headers={"content-type": "application/yaml"}
    )
    assert created.status_code == 201, created.text
    assert (await client.post(f"/v1/models/{model_id}/promote")).status_code == 200
    started = await client.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 200, started.text
    seen_treatment = False
    for unit in (f"u{i}" for i in range(20)):
        body = (await client.post("/v1/assign", json={"experiment": KEY, "unit_id": unit})).json()
        if body["variant"] != "treatment":
            continue
        seen_treatment = True
        assert body["items"], body
        assert {item.get("source") for item in body["items"]} <= {"popularity", "random"}
        scores = [item["score"] for item in body["items"]]
        assert scores == sorted(scores, reverse=True)  # ranked by the ranker's score
    assert seen_treatment
