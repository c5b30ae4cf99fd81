"""Serving registered models: pins, `latest`, refused starts, switches, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from abplatform.artifacts import artifact_sha256
from abplatform.storage import models as m
from abplatform.storage.db import open_database, transaction
from abplatform.storage.model_registry import get_model, register
from simulator.runner import simulation_catalog
from strategies.training import train_experiment
from tests.api.conftest import EXAMPLE, KEY, small_config

pytestmark = pytest.mark.anyio

YAML = {"content-type": "application/yaml"}
TREATMENT = "  - {key: treatment, weight: 0.5, strategy: {kind: popularity, params: {window_days: 30, per_category: true}}}\n"  # noqa: E501


def _with_treatment(strategy: str) -> str:
    """The example's YAML with the treatment's strategy replaced."""
    text = EXAMPLE.read_text()
    assert TREATMENT in text
    return text.replace(TREATMENT, f"  - {{key: treatment, weight: 0.5, strategy: {strategy}}}\n")


async def _post(client: httpx.AsyncClient, text: str) -> None:
    created = await client.post("/v1/experiments", content=text, headers=YAML)
    assert created.status_code == 201, created.text


async def _status(client: httpx.AsyncClient) -> str:
    return str((await client.get(f"/v1/experiments/{KEY}")).json()["status"])


async def _slate(client: httpx.AsyncClient, unit: str) -> tuple[str, list[str]]:
    assigned = await client.post("/v1/assign", json={"experiment": KEY, "unit_id": unit})
    assert assigned.status_code == 200, assigned.text
    body = assigned.json()
    return body["variant"], [item["item_id"] for item in body["items"]]


async def _served_models(url: str, units: list[str]) -> dict[str, set[int | None]]:
    """{variant: model ids} of the stored exposures of `units` (once the writer has them)."""
    engine = open_database(url)
    try:
        for _ in range(100):
            with engine.connect() as conn:
                rows = conn.execute(
                    select(m.Exposure.variant, m.Exposure.model_id).where(
                        m.Exposure.unit_id.in_(units)
                    )
                ).all()
            if len(rows) == len(units):
                break
            await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    assert len(rows) == len(units)
    out: dict[str, set[int | None]] = {}
    for variant, model_id in rows:
        out.setdefault(variant, set()).add(model_id)
    return out


async def test_a_two_tower_without_a_model_is_refused_at_start(
    client: httpx.AsyncClient,
) -> None:
    await _post(client, _with_treatment("{kind: two_tower}"))
    started = await client.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 409, started.text
    problem = started.json()
    assert "variant 'treatment'" in problem["detail"] and "'two_tower'" in problem["detail"]
    assert "trained with TensorFlow" in problem["detail"]
    assert "abplatform train FILE" in problem["hint"]
    assert await _status(client) == "draft"


async def test_a_pinned_model_is_served_and_its_checks(
    client: httpx.AsyncClient, trained: dict[str, int], seeded_url: str
) -> None:
    treatment = trained["treatment"]
    await _post(
        client,
        _with_treatment(
            f"{{kind: popularity, params: {{window_days: 30, per_category: true}}, "
            f"model: {treatment}}}"
        ),
    )
    started = await client.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 200, started.text
    units = [f"u{i}" for i in range(40)]
    seen = {variant for variant, _ in [await _slate(client, unit) for unit in units]}
    assert seen == {"control", "treatment"}
    # Exposures record the model: the pinned one; control (popularity, no pin) is fitted.
    assert await _served_models(seeded_url, units) == {"control": {None}, "treatment": {treatment}}

    # Retiring the model a running experiment pins is refused; nothing changes.
    retired = await client.post(f"/v1/models/{treatment}/retire")
    assert retired.status_code == 409, retired.text
    assert f"running experiment {KEY!r} would not be servable" in retired.json()["detail"]
    engine = open_database(seeded_url)
    with transaction(engine) as session:
        assert get_model(session, treatment).status == "candidate"
    engine.dispose()


@pytest.mark.parametrize("damage", ["changed", "missing"])
async def test_a_corrupt_or_missing_artifact_fails_the_start(
    client: httpx.AsyncClient, trained: dict[str, int], seeded_url: str, damage: str
) -> None:
    treatment = trained["treatment"]
    engine = open_database(seeded_url)
    with transaction(engine) as session:
        record = get_model(session, treatment)
    engine.dispose()
    artifact = Path(record.artifact_path)
    if damage == "changed":
        victim = next(p for p in sorted(artifact.rglob("*")) if p.is_file())
        victim.write_bytes(victim.read_bytes() + b"x")
    else:
        for path in sorted(artifact.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        artifact.rmdir()
    await _post(
        client,
        _with_treatment(
            f"{{kind: popularity, params: {{window_days: 30, per_category: true}}, "
            f"model: {treatment}}}"
        ),
    )
    started = await client.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 409, started.text
    detail = started.json()["detail"]
    assert str(artifact) in detail and record.artifact_sha256 in detail
    assert await _status(client) == "draft"


async def test_pins_of_another_kind_catalogue_or_params_are_refused(
    client: httpx.AsyncClient, trained: dict[str, int], seeded_url: str
) -> None:
    control = trained["control"]  # popularity without per_category
    engine = open_database(seeded_url)
    with transaction(engine) as session:
        record = get_model(session, control)
        elsewhere = register(
            session,
            experiment=KEY,
            variant="treatment",
            kind=record.kind,
            params=record.params,
            seed=record.seed,
            catalog="shop",
            history_cutoff=None,
            history_rows=0,
            artifact_path=record.artifact_path,
            artifact_sha256=artifact_sha256(record.artifact_path),
            metrics={},
        ).id
    engine.dispose()
    cases = {
        f"{{kind: random, model: {control}}}": "is a 'popularity' model",
        f"{{kind: popularity, params: {{window_days: 30}}, model: {elsewhere}}}": (
            "trained on catalogue 'shop'"
        ),
        f"{{kind: popularity, params: {{window_days: 7}}, model: {control}}}": (
            "trained with other params than the variant's"
        ),
        "{kind: popularity, params: {window_days: 30}, model: 999}": (
            "pins model 999, which is not registered"
        ),
        "{kind: popularity, params: {window_days: 30}, model: latest}": "no model of it is serving",
    }
    for strategy, message in cases.items():
        await _post(client, _with_treatment(strategy))
        started = await client.post(f"/v1/experiments/{KEY}/start")
        assert started.status_code == 409, (strategy, started.text)
        assert message in started.json()["detail"], (strategy, started.json())
        assert await _status(client) == "draft"


async def test_latest_serves_the_promoted_model(
    client: httpx.AsyncClient, trained: dict[str, int], seeded_url: str, tmp_path: Path
) -> None:
    await _post(
        client,
        _with_treatment(
            "{kind: popularity, params: {window_days: 30, per_category: true}, model: latest}"
        ),
    )
    assert (await client.post(f"/v1/experiments/{KEY}/start")).status_code == 409
    promoted = await client.post(f"/v1/models/{trained['treatment']}/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "serving"
    assert (await client.post(f"/v1/experiments/{KEY}/start")).status_code == 200
    first = [f"u{i}" for i in range(40)]
    seen = {variant for variant, _ in [await _slate(client, unit) for unit in first]}
    assert seen == {"control", "treatment"}
    assert (await _served_models(seeded_url, first))["treatment"] == {trained["treatment"]}
    # The only serving model of a running `latest` cannot be retired.
    retired = await client.post(f"/v1/models/{trained['treatment']}/retire")
    assert retired.status_code == 409, retired.text
    assert "no model of it is serving" in retired.json()["detail"]

    # A newer model promoted: the running experiment switches to it, exposures say so.
    config = small_config()
    engine = open_database(seeded_url)
    again = train_experiment(
        engine, config, simulation_catalog(config), artifacts_dir=tmp_path / "again"
    )
    engine.dispose()
    newer = next(r.model_id for r in again.results if r.name == "treatment")
    assert newer is not None and newer != trained["treatment"]
    assert (await client.post(f"/v1/models/{newer}/promote")).status_code == 200
    later = [f"w{i}" for i in range(40)]
    for unit in later:
        await _slate(client, unit)
    assert (await _served_models(seeded_url, later))["treatment"] == {newer}
    # Now the older one can go: `latest` still has the newer.
    assert (await client.post(f"/v1/models/{trained['treatment']}/retire")).status_code == 200
