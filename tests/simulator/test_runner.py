"""The simulator writes a consistent, re-runnable, all-or-nothing run into real databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from abplatform.domain import InteractionLog
from abplatform.errors import AbplatformError
from abplatform.registry import strategies
from abplatform.storage import models as m
from abplatform.storage.db import open_database, transaction
from abplatform.storage.model_registry import list_models
from simulator.runner import simulate
from strategies.random_items import RandomStrategy
from tests.factories import SMALL_YAML, small_config


def counts(url: str) -> dict[str, int]:
    engine = open_database(url)
    out = {}
    with transaction(engine) as session:
        for model in (
            m.Experiment,
            m.SimulationRun,
            m.CatalogItem,
            m.User,
            m.Interaction,
            m.Exposure,
            m.Impression,
            m.Event,
        ):
            out[model.__tablename__] = session.scalar(select(func.count()).select_from(model))
    engine.dispose()
    return out


def test_run_is_consistent(db_url: str) -> None:
    engine = open_database(db_url)
    result = simulate(engine, small_config())
    n = counts(db_url)
    exposures = sum(t.exposures for t in result.tallies.values())
    assert n["exposures"] == exposures > 0
    assert n["impressions"] == 5 * exposures == result.impressions
    clicks = sum(t.clicks for t in result.tallies.values())
    purchases = sum(t.purchases for t in result.tallies.values())
    assert n["events"] == clicks + purchases
    assert n["catalog_items"] == 150
    assert n["users"] == 400
    assert n["interactions"] == result.history_interactions > 0
    assert n["simulation_runs"] == 1
    with transaction(engine) as session:
        run = session.scalars(select(m.SimulationRun)).one()
        assert run.status == "completed"
        assert run.ground_truth is not None
        truth = run.ground_truth["metrics"]
        assert set(truth) == {"purchase_rate", "revenue", "ctr"}
        for values in truth.values():
            assert set(values) == {"control", "treatment"}
        # Every exposure's propensity is its variant's weight; events follow their exposure.
        assert set(session.scalars(select(m.Exposure.propensity).distinct())) == {0.5}
        late = session.scalar(
            select(func.count())
            .select_from(m.Event)
            .join(m.Exposure, m.Exposure.id == m.Event.exposure_id)
            .where(m.Event.ts < m.Exposure.ts)
        )
        assert late == 0
    engine.dispose()


def test_same_seed_same_run_and_rerun_replaces(db_url: str) -> None:
    engine = open_database(db_url)
    first = simulate(engine, small_config())
    before = counts(db_url)
    second = simulate(engine, small_config())
    after = counts(db_url)
    assert first.tallies == second.tallies
    assert first.ground_truth == second.ground_truth
    assert before == after  # replaced, not appended
    other = simulate(engine, small_config(), seed=4)
    assert other.tallies != first.tallies
    engine.dispose()


def test_users_override(sqlite_url: str) -> None:
    result = simulate(open_database(sqlite_url), small_config(), users=250)
    assert result.users == 250
    assert counts(sqlite_url)["users"] == 250


class FailingStrategy(RandomStrategy):
    """Fails while fitting, to check that a failed run writes nothing."""

    kind = "failing_for_test"

    def fit(self, history: InteractionLog) -> None:
        raise AbplatformError("fit failed on purpose")


@pytest.fixture
def failing_kind() -> Any:
    strategies.register("failing_for_test")(FailingStrategy)
    yield "failing_for_test"
    strategies._items.pop("failing_for_test", None)


def test_failed_run_leaves_the_previous_run_intact(db_url: str, failing_kind: str) -> None:
    engine = open_database(db_url)
    simulate(engine, small_config())
    before = counts(db_url)
    broken = small_config(SMALL_YAML.replace("{kind: random}", f"{{kind: {failing_kind}}}"))
    with pytest.raises(AbplatformError, match="fit failed on purpose"):
        simulate(engine, broken)
    assert counts(db_url) == before
    engine.dispose()


def test_slate_larger_than_catalogue_is_a_clear_error(sqlite_url: str) -> None:
    config = small_config(SMALL_YAML.replace("slate_size: 5", "slate_size: 200"))
    with pytest.raises(AbplatformError, match=r"slate_size \(200\) exceeds simulation.items"):
        simulate(open_database(sqlite_url), config)


def test_variant_without_strategy_is_a_clear_error(sqlite_url: str) -> None:
    config = small_config(SMALL_YAML.replace(", strategy: {kind: random}", ""))
    with pytest.raises(AbplatformError, match="variant 'treatment' has no strategy"):
        simulate(open_database(sqlite_url), config)


def _served_models(engine: Any) -> dict[str, set[int | None]]:
    """{variant: model ids of its exposures}."""
    with engine.connect() as conn:
        rows = conn.execute(select(m.Exposure.variant, m.Exposure.model_id).distinct()).all()
    out: dict[str, set[int | None]] = {}
    for variant, model_id in rows:
        out.setdefault(variant, set()).add(model_id)
    return out


def test_simulate_serves_the_models_it_registers(db_url: str, tmp_path: Path) -> None:
    engine = open_database(db_url)
    first = simulate(engine, small_config(), artifacts_dir=tmp_path / "artifacts")
    with transaction(engine) as session:
        registered = {r.variant: r for r in list_models(session, "sim_small")}
    assert {key: r.version for key, r in registered.items()} == {"control": 1, "treatment": 1}
    assert {key: r.id for key, r in first.models.items()} == {
        key: r.id for key, r in registered.items()
    }
    for record in registered.values():
        assert record.status == "candidate" and record.metrics == {}
        assert record.catalog == "sim:sim_small" and record.seed == 3
        assert Path(record.artifact_path).is_relative_to((tmp_path / "artifacts").resolve())
        assert record.history_rows == first.history_interactions
    assert registered["control"].kind == "popularity"
    assert _served_models(engine) == {key: {r.id} for key, r in registered.items()}

    # A rerun registers new versions, and its exposures are served by them.
    second = simulate(engine, small_config(), artifacts_dir=tmp_path / "artifacts")
    assert second.tallies == first.tallies  # the same artifacts' slates
    assert {key: r.version for key, r in second.models.items()} == {"control": 2, "treatment": 2}
    assert _served_models(engine) == {key: {r.id} for key, r in second.models.items()}
    with transaction(engine) as session:
        assert len(list_models(session, "sim_small")) == 4
    engine.dispose()


def test_a_pinned_model_is_served_not_retrained(sqlite_url: str, tmp_path: Path) -> None:
    engine = open_database(sqlite_url)
    first = simulate(engine, small_config(), artifacts_dir=tmp_path)
    pinned_id = first.models["control"].id
    yaml = SMALL_YAML.replace("{kind: popularity}", f"{{kind: popularity, model: {pinned_id}}}")
    second = simulate(engine, small_config(yaml), artifacts_dir=tmp_path)
    assert second.models["control"].id == pinned_id
    assert second.models["treatment"].version == 2
    assert second.tallies == first.tallies
    with transaction(engine) as session:
        versions = [(r.variant, r.version) for r in list_models(session, "sim_small")]
    assert versions == [("control", 1), ("treatment", 1), ("treatment", 2)]
    assert _served_models(engine)["control"] == {pinned_id}
    engine.dispose()


def test_artifacts_default_to_the_environment(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABPLATFORM_ARTIFACTS", str(tmp_path / "from-env"))
    result = simulate(open_database(sqlite_url), small_config())
    for record in result.models.values():
        assert Path(record.artifact_path).is_relative_to((tmp_path / "from-env").resolve())


@pytest.mark.slow
def test_a_composite_nesting_a_two_tower_is_one_registered_model(
    sqlite_url: str, tmp_path: Path
) -> None:
    router = (
        "{kind: scene_router, params: {strategies: {pop: {kind: popularity}, "
        "tt: {kind: two_tower, params: {epochs: 1}}}, routes: {home_page: tt}, default: pop}}"
    )
    config = small_config(SMALL_YAML.replace("{kind: random}", router))
    engine = open_database(sqlite_url)
    result = simulate(engine, config, artifacts_dir=tmp_path)
    assert set(result.models) == {"control", "treatment"}
    treatment = result.models["treatment"]
    assert treatment.kind == "scene_router"
    manifest = json.loads((Path(treatment.artifact_path) / "manifest.json").read_text())
    assert manifest["format"] == "abplatform.composite"
    assert [stage["kind"] for stage in manifest["stages"].values()] == ["two_tower"]
    assert _served_models(engine) == {key: {r.id} for key, r in result.models.items()}
    with transaction(engine) as session:
        assert sorted(r.variant for r in list_models(session)) == ["control", "treatment"]
    engine.dispose()


@pytest.mark.parametrize("kind", ["als", "ease"])
def test_als_and_ease_variants_are_served_from_their_own_artifacts(
    sqlite_url: str, tmp_path: Path, kind: str
) -> None:
    from strategies.als import AlsStrategy
    from strategies.ease import EaseStrategy

    config = small_config(SMALL_YAML.replace("{kind: random}", f"{{kind: {kind}}}"))
    engine = open_database(sqlite_url)
    result = simulate(engine, config, artifacts_dir=tmp_path)
    record = result.models["treatment"]
    assert record.kind == kind
    assert (Path(record.artifact_path) / "manifest.json").is_file()
    assert not (Path(record.artifact_path) / "interactions.npz").exists()  # not a snapshot
    served = AlsStrategy if kind == "als" else EaseStrategy
    assert isinstance(served.from_artifact(record.artifact_path), served)
    assert _served_models(engine) == {key: {r.id} for key, r in result.models.items()}
    again = simulate(engine, config, artifacts_dir=tmp_path)
    assert again.tallies == result.tallies  # seeded: the same factors, the same run
    engine.dispose()
