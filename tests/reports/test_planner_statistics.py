"""PostgreSQL analysis right after a bulk load: stale planner statistics are refreshed first."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from abplatform.storage.db import (
    ANALYSED_TABLES,
    open_database,
    refresh_planner_statistics,
    transaction,
)
from abplatform.storage.repository import get_experiment
from reports.aggregate import build_aggregate_query
from reports.analysis import analyze
from tests.factories import seed_random_experiment


def test_sqlite_statistics_are_refreshed_when_the_row_counts_move(sqlite_url: str) -> None:
    """SQLite: the tables never analysed get statistics once; unchanged ones are left alone."""
    engine = open_database(sqlite_url)
    seed_random_experiment(engine, n_units=50)
    analysed = refresh_planner_statistics(engine)
    assert {"exposures", "events"} <= set(analysed) and "impressions" not in analysed
    assert refresh_planner_statistics(engine) == []  # nothing moved since
    with engine.connect() as conn:
        counted = dict(
            conn.exec_driver_sql("SELECT tbl, stat FROM sqlite_stat1 WHERE tbl = 'exposures'").all()
        )
    assert counted  # the statistics are stored in the database file
    engine.dispose()


@pytest.mark.postgres
def test_analysis_after_a_bulk_load_plans_hash_joins(pg_url: str) -> None:
    """The plan that took 640 s: nested loops over the per-unit CTEs on stale statistics."""
    writer = open_database(pg_url)
    seed_random_experiment(writer, n_units=3_000)
    writer.dispose()  # the writer's backend exits: its row counts reach pg_stat
    engine = open_database(pg_url)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
    analyze(engine, "random")
    with transaction(engine) as session:
        stored = get_experiment(session, "random")
        config = stored.config
        experiment_id = stored.id
    query = build_aggregate_query(experiment_id, [v.key for v in config.variants], config.metrics)
    with engine.connect() as conn:
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN {compiled}")))
    assert "Nested Loop" not in plan, plan
    assert "Hash Right Join" in plan or "Hash Left Join" in plan or "Hash Join" in plan, plan
    with engine.connect() as conn:
        analysed = {
            name: conn.execute(
                text(
                    "SELECT COALESCE(last_analyze, last_autoanalyze) IS NOT NULL "
                    "FROM pg_stat_user_tables WHERE relid = to_regclass(:t)"
                ),
                {"t": name},
            ).scalar_one()
            for name in ANALYSED_TABLES
        }
    assert analysed == dict.fromkeys(ANALYSED_TABLES, True)
    assert refresh_planner_statistics(engine) == []
