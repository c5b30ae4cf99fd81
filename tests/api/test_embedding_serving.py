"""An int8 two-tower model is served over the ASGI app exactly as its artifact ranks."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from abplatform.artifacts import artifact_sha256
from abplatform.domain import RecRequest
from abplatform.storage.catalog import load_catalog
from abplatform.storage.db import open_database, transaction
from abplatform.storage.model_registry import register
from simulator.runner import simulation_catalog
from strategies.served import normalised_params
from strategies.two_tower.artifact import export_artifact
from strategies.two_tower.strategy import TwoTowerStrategy
from tests.api.conftest import KEY, small_config
from tests.api.test_model_serving import _post, _with_treatment
from tests.strategies.embedding_fixtures import hand_artifact

pytestmark = pytest.mark.anyio

INT8 = {"embedding_dtype": "int8"}


def _register_int8(url: str, root: Path) -> tuple[int, Path]:
    """A hand-built int8 two-tower over the seeded catalogue, registered as treatment's."""
    catalog_name = simulation_catalog(small_config())
    engine = open_database(url)
    try:
        with engine.connect() as conn:
            catalog = load_catalog(conn, catalog_name)
        users = [f"u{i}" for i in range(0, 40, 2)]  # every other unit is known
        artifact = hand_artifact(catalog, users, params=INT8)
        path = export_artifact(artifact, root, experiment=KEY, variant="treatment")
        with transaction(engine) as session:
            record = register(
                session,
                experiment=KEY,
                variant="treatment",
                kind="two_tower",
                params=normalised_params("two_tower", INT8),
                seed=0,
                catalog=catalog_name,
                history_cutoff=None,
                history_rows=0,
                artifact_path=path,
                artifact_sha256=artifact_sha256(path),
                metrics={},
            )
    finally:
        engine.dispose()
    return record.id, path


async def test_an_int8_two_tower_is_served_as_its_artifact_ranks(
    client: httpx.AsyncClient, seeded_url: str, tmp_path: Path
) -> None:
    model_id, path = _register_int8(seeded_url, tmp_path / "artifacts")
    await _post(
        client,
        _with_treatment(
            f"{{kind: two_tower, params: {{embedding_dtype: int8}}, model: {model_id}}}"
        ),
    )
    started = await client.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 200, started.text
    oracle = TwoTowerStrategy.from_artifact(path)
    stored = oracle.artifact.item_storage
    assert stored is not None and stored.dtype == "int8" and stored.codes.dtype == np.int8
    served = 0
    for unit in [f"u{i}" for i in range(40)]:
        assigned = await client.post("/v1/assign", json={"experiment": KEY, "unit_id": unit})
        assert assigned.status_code == 200, assigned.text
        body = assigned.json()
        if body["variant"] != "treatment":
            continue
        served += 1
        items = [item["item_id"] for item in body["items"]]
        assert items, body
        # The same API shape, and the artifact's own top-k with its (dequantised) scores.
        expected = oracle.recommend(RecRequest(unit_id=unit), len(items))
        assert items == list(expected.items)
        np.testing.assert_allclose(
            [item["score"] for item in body["items"]], expected.scores, rtol=1e-6
        )
    assert served >= 5  # about half of 40 units land in treatment
