"""The simulator writes a consistent, re-runnable, all-or-nothing run into real databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from abplatform.domain import InteractionLog
from abplatform.errors import AbplatformError
from abplatform.registry import strategies
from abplatform.storage import models as m
from abplatform.storage.db import open_database, transaction
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
