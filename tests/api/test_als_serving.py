"""An `als` variant: refused at start until trained, then served from its registered factors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from abplatform.config import load_experiment_text
from abplatform.domain import RecRequest
from abplatform.storage.db import open_database, transaction
from abplatform.storage.model_registry import get_model
from simulator.runner import simulation_catalog
from strategies.als import AlsStrategy
from strategies.training import train_experiment
from tests.api.conftest import KEY, small_config
from tests.api.test_model_serving import _post, _served_models, _status, _with_treatment

pytestmark = pytest.mark.anyio

ALS = "{kind: als, params: {factors: 8, iterations: 4}}"


async def test_an_als_variant_is_trained_registered_and_served_from_its_factors(
    client: httpx.AsyncClient, seeded_url: str, tmp_path: Path
) -> None:
    text = _with_treatment(ALS)
    await _post(client, text)
    refused = await client.post(f"/v1/experiments/{KEY}/start")
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert "variant 'treatment'" in problem["detail"] and "'als'" in problem["detail"]
    assert "trained with implicit" in problem["detail"]
    assert "abplatform train FILE" in problem["hint"]
    assert await _status(client) == "draft"

    config = load_experiment_text(text).model_copy(update={"simulation": small_config().simulation})
    engine = open_database(seeded_url)
    report = train_experiment(
        engine, config, simulation_catalog(config), artifacts_dir=tmp_path / "artifacts"
    )
    model_id = next(r.model_id for r in report.results if r.name == "treatment")
    assert model_id is not None
    with transaction(engine) as session:
        record = get_model(session, model_id)
    engine.dispose()
    assert record.kind == "als" and (Path(record.artifact_path) / "item_factors.npy").is_file()

    promoted = await client.post(f"/v1/models/{model_id}/promote")
    assert promoted.status_code == 200, promoted.text
    started = await client.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 200, started.text

    expected = AlsStrategy.from_artifact(record.artifact_path)
    assert expected.fallback_reason is None
    # Users with factors (the simulated history's) and new ones (popularity of the factors').
    strangers = [f"stranger-{i}" for i in range(20)]
    units = [*expected.artifact.user_ids[:40].tolist(), *strangers]
    served: dict[str, list[str]] = {}
    for unit in units:
        body = {"experiment": KEY, "unit_id": unit, "k": 5}
        answer = await client.post("/v1/assign", json=body)
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        items = [item["item_id"] for item in doc["items"]]
        if doc["variant"] == "treatment":
            assert items == list(expected.recommend(RecRequest(unit), 5).items), unit
        served[doc["variant"]] = items
    assert set(served) == {"control", "treatment"}
    assert len({tuple(v) for v in served.values()}) == 2
    # The simulated users had exposures before; the strangers' are all from this run.
    models = await _served_models(seeded_url, strangers)
    assert models == {"control": {None}, "treatment": {model_id}}
