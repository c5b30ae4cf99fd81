"""Simulation runs and clearing an experiment through the repository verbs."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from abplatform.storage import models as m
from abplatform.storage.db import open_database
from abplatform.storage.repository import (
    clear_experiment_data,
    finish_run,
    latest_simulation,
    save_experiment,
    start_run,
)
from abplatform.storage.rows import (
    EventColumns,
    ExposureColumns,
    insert_events,
    insert_exposures,
    insert_impressions,
)
from tests.factories import small_config


def test_runs_are_started_finished_and_cleared(db_url: str) -> None:
    engine = open_database(db_url)
    with engine.begin() as conn, Session(bind=conn) as session:
        stored = save_experiment(session, small_config(), "shop")
        first = start_run(session, stored.id, 7, {"users": 10})
        running = latest_simulation(session, stored.id)
        second = start_run(session, stored.id, 8, {"users": 10})
        finish_run(session, second, ground_truth={"metrics": {}}, summary={"users": 10})
        latest = latest_simulation(session, stored.id)
    assert running is not None and (running.id, running.status) == (first, "running")
    assert running.finished_at is None and running.summary is None
    assert latest is not None and (latest.id, latest.seed, latest.status) == (
        second,
        8,
        "completed",
    )
    assert latest.ground_truth == {"metrics": {}}
    assert latest.finished_at is not None and latest.finished_at >= latest.started_at
    assert latest.summary == {"users": 10}
    with engine.begin() as conn, Session(bind=conn) as session:
        insert_exposures(conn, [1], stored.id, ExposureColumns(["a"], ["u1"], [100], [0.5]))
        insert_impressions(conn, stored.id, [1, 1], [0, 1], ["i1", "i2"], ["a", "a"])
        insert_events(
            conn, stored.id, EventColumns(["e1"], ["u1"], ["click"], ["i1"], [None], [101])
        )
        # Each shown item counted once for its variant, in the same transaction.
        counts = session.execute(select(m.ItemImpressions.item_id, m.ItemImpressions.impressions))
        assert sorted(tuple(row) for row in counts) == [("i1", 1), ("i2", 1)]
        clear_experiment_data(session, stored.id)
        assert latest_simulation(session, stored.id) is None
        for model in (m.Exposure, m.Impression, m.ItemImpressions, m.Event, m.SimulationRun):
            assert session.scalar(select(func.count()).select_from(model)) == 0
        assert session.scalar(select(func.count()).select_from(m.Experiment)) == 1  # it stays
    engine.dispose()
