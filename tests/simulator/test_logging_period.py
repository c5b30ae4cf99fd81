"""The simulator's logging period: logged apart as `<key>__logging`, added to the history,
what rankers train on; without it a ranker falls back with the reason; config errors."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

import strategies.ranker  # noqa: F401  registers `ranker` (until the entry point is installed)
from abplatform.config import ConfigError, load_experiment_text
from abplatform.storage import models as m
from abplatform.storage.db import open_database, transaction
from simulator.runner import EXPERIMENT_START, simulate
from tests.factories import SMALL_YAML, small_config

LOGGED_YAML = SMALL_YAML.replace("seed: 3}", "seed: 3, logging_days: 2}")
RANKED_YAML = LOGGED_YAML.replace(
    "{kind: random}",
    "{kind: pipeline, params: {retrieve: [{kind: popularity, n: 10}, {kind: random, n: 10}], "
    "rank: {kind: ranker, params: {epochs: 1, min_impressions: 100, min_clicks: 5}}}}",
)
START = dt.datetime.fromtimestamp(EXPERIMENT_START, dt.UTC).replace(tzinfo=None)


def _rows(url: str, key: str) -> dict[str, object]:
    """Counts and time range of one experiment's exposures, impressions and events."""
    engine = open_database(url)
    with transaction(engine) as session:
        experiment = session.scalars(select(m.Experiment).where(m.Experiment.key == key)).one()
        x = m.Exposure
        first, last, exposures = session.execute(
            select(func.min(x.ts), func.max(x.ts), func.count()).where(
                x.experiment_id == experiment.id
            )
        ).one()
        variants = set(session.scalars(select(x.variant).where(x.experiment_id == experiment.id)))
        impressions = session.scalar(
            select(func.count())
            .select_from(m.Impression)
            .join(x, x.id == m.Impression.exposure_id)
            .where(x.experiment_id == experiment.id)
        )
        events = session.scalar(
            select(func.count()).select_from(m.Event).where(m.Event.experiment_id == experiment.id)
        )
        interactions = session.scalar(select(func.count()).select_from(m.Interaction))
        run = session.scalars(
            select(m.SimulationRun).where(m.SimulationRun.experiment_id == experiment.id)
        ).one()
        summary = run.summary
    engine.dispose()
    return {
        "first": first,
        "last": last,
        "exposures": exposures,
        "variants": variants,
        "impressions": impressions,
        "events": events,
        "interactions": interactions,
        "summary": summary,
    }


def test_the_logging_period_is_logged_apart_and_joins_the_history(db_url: str) -> None:
    config = small_config(LOGGED_YAML)
    assert config.simulation is not None and config.simulation.logging_days == 2
    engine = open_database(db_url)
    result = simulate(engine, config)
    own = _rows(db_url, "sim_small")
    logged = _rows(db_url, "sim_small__logging")
    period = own["summary"]["logging"]  # type: ignore[index]
    # The experiment's rows are its own traffic only, all on or after its start.
    assert own["exposures"] == sum(t.exposures for t in result.tallies.values())
    assert own["first"] >= START and own["variants"] == {"control", "treatment"}
    # The logging period: the 2 days before the start, one variant, every row written.
    assert logged["variants"] == {"logging"}
    assert START - dt.timedelta(days=2) <= logged["first"] <= logged["last"] < START
    assert logged["exposures"] == period["exposures"] > 0
    assert logged["impressions"] == period["impressions"] == 5 * period["exposures"]
    assert logged["events"] == period["clicks"] + period["purchases"] > 0
    # Its clicks and purchases are history too (organic history + the period's events).
    assert period["interactions"] == period["clicks"] + period["purchases"]
    assert own["interactions"] == result.history_interactions
    assert any(note.startswith("logging period: 2 days of popularity") for note in result.notes)
    # A rerun replaces both experiments' rows instead of adding to them.
    again = simulate(engine, config)
    assert again.tallies == result.tallies
    assert _rows(db_url, "sim_small__logging") == logged
    assert _rows(db_url, "sim_small")["interactions"] == own["interactions"]
    engine.dispose()


def test_without_a_logging_period_a_ranker_falls_back_and_says_why(sqlite_url: str) -> None:
    config = small_config(RANKED_YAML.replace(", logging_days: 2", ""))
    result = simulate(open_database(sqlite_url), config)
    (note,) = [n for n in result.notes if n.startswith("ranker of treatment")]
    assert "fell back (no logged impressions" in note and "logging_days >= 1" in note


@pytest.mark.slow
def test_a_ranker_trains_on_the_logging_period(sqlite_url: str) -> None:
    result = simulate(open_database(sqlite_url), small_config(RANKED_YAML))
    logged = _rows(sqlite_url, "sim_small__logging")
    (note,) = [n for n in result.notes if n.startswith("ranker of treatment")]
    # Every logged impression is a training row (all items are in the catalogue).
    assert note.startswith(
        f"ranker of treatment: trained on {logged['impressions']:,} logged impressions "
        "of 'sim_small__logging'; holdout click AUC"
    )
    assert "treatment" in result.models  # exported, registered and served from its artifact


@pytest.mark.parametrize(
    ("simulation", "expected"),
    [
        pytest.param(
            "{logging_days: -1}",
            "simulation.logging_days: input should be greater than or equal to 0 (got -1)",
            id="negative-days",
        ),
        pytest.param(
            "{logging_days: 2, logging_strategy: {kind: popularityy}}",
            "simulation.logging_strategy.kind: unknown strategy kind; known: ",
            id="unknown-logging-strategy",
        ),
        pytest.param(
            "{logging_strategy: {kind: popularity, params: {window_days: 0}}}",
            "simulation.logging_strategy.params.window_days: input should be greater than or "
            "equal to 1 (got 0)",
            id="bad-logging-params",
        ),
        pytest.param(
            "{logging_strategy: {kind: popularity, model: 3}}",
            "simulation.logging_strategy.model: unknown field (got 3)",
            id="no-model-pin",
        ),
    ],
)
def test_logging_config_errors(simulation: str, expected: str) -> None:
    text = f"key: x\nvariants: [{{key: a, weight: 1}}]\nsimulation: {simulation}\n"
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text, "exp.yaml")
    assert any(problem.startswith(expected) for problem in info.value.problems), info.value


def test_a_key_too_long_for_its_logging_experiment() -> None:
    key = "k" * 120
    text = f"key: {key}\nvariants: [{{key: a, weight: 1}}]\nsimulation: {{logging_days: 1}}\n"
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text, "exp.yaml")
    assert info.value.problems == [
        "key: with simulation.logging_days the key may have at most 119 characters "
        "(the logging period is logged as <key>__logging) (got 120)"
    ]
    assert load_experiment_text(text.replace("logging_days: 1", "logging_days: 0")).key == key
