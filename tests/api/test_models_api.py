"""The model registry over HTTP (/v1/models), on SQLite and the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from simulator.runner import simulation_catalog
from tests.api.conftest import KEY, Keys, small_config

pytestmark = pytest.mark.anyio


async def test_list_and_show(client: httpx.AsyncClient, trained: dict[str, int]) -> None:
    assert set(trained) == {"control", "treatment"}
    listed = await client.get("/v1/models")
    assert listed.status_code == 200, listed.text
    models = listed.json()["models"]
    # The seeding `simulate` registered (and served) version 1 of each variant; train's is 2.
    assert [(m["variant"], m["version"], m["status"]) for m in models] == [
        ("control", 1, "candidate"),
        ("control", 2, "candidate"),
        ("treatment", 1, "candidate"),
        ("treatment", 2, "candidate"),
    ]
    assert (await client.get("/v1/models", params={"experiment": KEY})).json() == listed.json()
    other = await client.get("/v1/models", params={"experiment": "nope"})
    assert other.json() == {"models": []}
    shown = await client.get(f"/v1/models/{trained['treatment']}")
    assert shown.status_code == 200
    body = shown.json()
    assert body == models[3]
    assert body["kind"] == "popularity" and body["params"]["per_category"] is True
    assert Path(body["artifact_path"]).is_dir() and len(body["artifact_sha256"]) == 64
    assert body["catalog"] == simulation_catalog(small_config())
    assert body["history_rows"] > 0 and body["history_cutoff"] is not None
    assert "hit@10" in body["metrics"]


async def test_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    missing = await client.get("/v1/models/4242")
    assert missing.status_code == 404
    assert missing.json()["detail"] == "no model 4242 in this database"
    assert (await client.post("/v1/models/4242/promote")).status_code == 404
    assert (await client.post("/v1/models/4242/retire")).status_code == 404
    assert (await client.get("/v1/models/0")).status_code == 422
    assert (await client.get("/v1/models/x")).status_code == 422
    assert (await client.get("/v1/models/99999999999999999999")).status_code == 422
    nul = await client.get("/v1/models", params={"experiment": "a\x00b"})
    assert nul.status_code == 422


async def test_promote_and_retire_need_the_admin_scope(
    client: httpx.AsyncClient, keys: Keys, trained: dict[str, int]
) -> None:
    model = trained["treatment"]
    read = keys.header("read")
    assert (await client.get(f"/v1/models/{model}", headers=read)).status_code == 200
    assert (await client.get("/v1/models", headers=keys.header("assign"))).status_code == 403
    for verb in ("promote", "retire"):
        refused = await client.post(f"/v1/models/{model}/{verb}", headers=read)
        assert refused.status_code == 403, verb
        assert "lacks the 'admin' scope" in refused.json()["detail"]
    assert (await client.get(f"/v1/models/{model}")).json()["status"] == "candidate"

    admin = keys.header("admin")
    promoted = await client.post(f"/v1/models/{model}/promote", headers=admin)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "serving"
    retired = await client.post(f"/v1/models/{model}/retire", headers=admin)
    assert retired.json()["status"] == "retired"
    again = await client.post(f"/v1/models/{model}/promote", headers=admin)
    assert again.status_code == 409
    assert f"model {model} ({KEY}/treatment v2) is retired" in again.json()["detail"]
    assert again.json()["hint"].startswith("train again")


async def test_a_changed_artifact_cannot_be_promoted(
    client: httpx.AsyncClient, trained: dict[str, int]
) -> None:
    model = trained["control"]
    body = (await client.get(f"/v1/models/{model}")).json()
    (Path(body["artifact_path"]) / "user_features.json").write_text('{"u": {}}')
    refused = await client.post(f"/v1/models/{model}/promote")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert body["artifact_path"] in detail and body["artifact_sha256"] in detail
    assert (await client.get(f"/v1/models/{model}")).json()["status"] == "candidate"
