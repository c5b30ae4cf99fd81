"""The Alembic migrations and the SQLAlchemy models describe the same schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from abplatform.storage.db import (
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    make_engine,
    open_database,
    upgrade,
)
from abplatform.storage.models import Base


def test_models_match_migrations(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(engine) == head_revision()


def test_sqlite_upgrades_itself(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    assert current_revision(engine) == head_revision()
    names = set(inspect(engine).get_table_names())
    assert {"experiments", "exposures", "impressions", "events"} <= names
    assert "variants" not in names  # dropped by 0005: the config holds the variants
    ensure_schema(engine)  # idempotent at head


def test_dropping_variants_downgrades(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    downgrade(engine, "0004")
    assert "variants" in inspect(engine).get_table_names()
    upgrade(engine)
    assert "variants" not in inspect(engine).get_table_names()
    assert current_revision(engine) == head_revision()


def test_empty_postgres_is_not_migrated_silently(pg_engine: object) -> None:
    import uuid

    import pytest
    from sqlalchemy import create_engine, text

    from abplatform.errors import AbplatformError
    from tests.conftest import PG_ADMIN_URL

    name = f"abp_empty_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        engine = make_engine(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        with pytest.raises(AbplatformError, match="the database is empty") as info:
            ensure_schema(engine)
        assert info.value.hint == "run: abplatform db upgrade --db URL"
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_the_models_table_downgrades(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    assert "models" in inspect(engine).get_table_names()
    downgrade(engine, "0006")
    assert "models" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert "models" in inspect(engine).get_table_names()


def test_the_exposures_model_id_downgrades(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    columns = {c["name"] for c in inspect(engine).get_columns("exposures")}
    assert "model_id" in columns
    downgrade(engine, "0007")
    assert "model_id" not in {c["name"] for c in inspect(engine).get_columns("exposures")}
    assert "models" in inspect(engine).get_table_names()
    upgrade(engine)
    keys = inspect(engine).get_foreign_keys("exposures")
    assert {"models"} == {
        k["referred_table"] for k in keys if k["constrained_columns"] == ["model_id"]
    }
    assert current_revision(engine) == head_revision()


def test_impressions_source_is_added_in_place_and_old_rows_are_null(db_url: str) -> None:
    from sqlalchemy import text

    engine = make_engine(db_url)
    upgrade(engine)
    downgrade(engine, "0010")
    assert "source" not in {c["name"] for c in inspect(engine).get_columns("impressions")}
    postgres = engine.dialect.name == "postgresql"
    file_of = "SELECT relfilenode FROM pg_class WHERE relname = 'impressions'"
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO impressions (exposure_id, position, item_id) VALUES (1, 0, 'i')")
        )
        before = conn.execute(text(file_of)).scalar_one() if postgres else None
    upgrade(engine)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT item_id, source FROM impressions")).all() == [("i", None)]
        if postgres:  # a nullable column without a default: no rewrite of the table
            assert conn.execute(text(file_of)).scalar_one() == before
        conn.execute(text("DELETE FROM impressions"))
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_item_impressions_and_event_positions_are_backfilled(db_url: str) -> None:
    """Migrations 0009 and 0010 derive the write-time facts from rows stored before them."""
    from sqlalchemy import text

    engine = make_engine(db_url)
    upgrade(engine)
    downgrade(engine, "0008")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO experiments (key, description, unit, catalog, config, status, "
                "created_at, updated_at) VALUES ('old', '', 'user', 'default', '{}', 'draft', "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        experiment_id = conn.execute(text("SELECT id FROM experiments")).scalar_one()
        conn.execute(
            text(
                "INSERT INTO exposures (id, experiment_id, variant, unit_id, ts, propensity, "
                "slate_size) VALUES (7, :e, 'a', 'u', CURRENT_TIMESTAMP, 0.5, 3)"
            ),
            {"e": experiment_id},
        )
        conn.execute(
            text(
                "INSERT INTO impressions (exposure_id, position, item_id) "
                "VALUES (7, 0, 'x'), (7, 1, 'y'), (7, 2, 'x')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO events (event_id, experiment_id, exposure_id, unit_id, type, "
                "item_id, ts) VALUES ('c1', :e, 7, 'u', 'click', 'y', CURRENT_TIMESTAMP), "
                "('c2', :e, 7, 'u', 'click', 'x', CURRENT_TIMESTAMP), "
                "('c3', :e, 7, 'u', 'click', 'z', CURRENT_TIMESTAMP), "
                "('c4', :e, NULL, 'u', 'click', 'x', CURRENT_TIMESTAMP)"
            ),
            {"e": experiment_id},
        )
    upgrade(engine)
    with engine.begin() as conn:
        counted = conn.execute(
            text("SELECT variant, source, item_id, impressions FROM item_impressions ORDER BY 3")
        ).all()
        assert [tuple(r) for r in counted] == [("a", "", "x", 2), ("a", "", "y", 1)]
        positions = conn.execute(text("SELECT event_id, position FROM events ORDER BY 1")).all()
        # y at 1, x at its first position 0, z not shown, no exposure: NULL.
        assert [tuple(r) for r in positions] == [("c1", 1), ("c2", 0), ("c3", None), ("c4", None)]
        for table in ("events", "impressions", "item_impressions", "exposures", "experiments"):
            conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
