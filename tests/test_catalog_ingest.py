"""Catalogue ingestion (items, users, interactions) on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from abplatform.catalog_ingest import (
    CatalogIngestSummary,
    ingest_catalog,
    read_interactions,
)
from abplatform.config import validate_config
from abplatform.csvcheck import MAX_PROBLEMS
from abplatform.errors import DataError
from abplatform.ingest import ingest_logs
from abplatform.storage import models as m
from abplatform.storage.catalog import load_history
from abplatform.storage.db import open_database
from abplatform.values import NUL_PROBLEM

DATA = Path(__file__).parent / "data" / "catalog"
LOGS = Path(__file__).parent / "data" / "ingest"
SHOP = "tiny-shop"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _counts(engine: Engine) -> dict[str, int]:
    tables = {
        "items": m.CatalogItem,
        "users": m.User,
        "interactions": m.Interaction,
        "experiments": m.Experiment,
        "events": m.Event,
    }
    with engine.connect() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in tables.items()
        }


EMPTY = {"items": 0, "users": 0, "interactions": 0, "experiments": 0, "events": 0}


def _fails(engine: Engine, **files: Path) -> DataError:
    with pytest.raises(DataError) as caught:
        ingest_catalog(engine, SHOP, **files)
    assert _counts(engine) == EMPTY, "a failed load must write nothing"
    return caught.value


def _load_all(engine: Engine) -> CatalogIngestSummary:
    return ingest_catalog(
        engine,
        SHOP,
        items=DATA / "items.csv",
        interactions=DATA / "interactions.csv",
        users=DATA / "users.csv",
    )


# ---------------------------------------------------------------------------
# Loads that succeed
# ---------------------------------------------------------------------------


def test_items_users_and_interactions_are_stored_as_given(engine: Engine) -> None:
    summary = _load_all(engine)

    assert summary == CatalogIngestSummary(
        catalog=SHOP, items_added=6, users_added=3, interactions=7
    )
    with engine.connect() as conn:
        items = conn.execute(
            select(
                m.CatalogItem.item_id,
                m.CatalogItem.category,
                m.CatalogItem.brand,
                m.CatalogItem.price,
                m.CatalogItem.title,
                m.CatalogItem.tags,
            )
            .where(m.CatalogItem.catalog == SHOP)
            .order_by(m.CatalogItem.id)
        ).all()
        users = dict(conn.execute(select(m.User.user_id, m.User.features)).all())
        interactions = conn.execute(
            select(
                m.Interaction.user_id,
                m.Interaction.item_id,
                m.Interaction.type,
                m.Interaction.value,
                m.Interaction.ts,
            ).order_by(m.Interaction.id)
        ).all()
    # File order is the dense index; a quoted comma stays in the title; a blank price is
    # NULL; tags lose blanks and surrounding spaces.
    assert [tuple(row) for row in items] == [
        ("i1", "books", "acme", 12.5, "Dune, the novel", "sci-fi|classic"),
        ("i2", "books", "acme", 8.0, "Foundation", "sci-fi"),
        ("i3", "music", "sonic", 15.0, "Kind of Blue", "jazz|classic"),
        ("i4", "music", "sonic", None, "Blue Train", "jazz"),
        ("i5", "games", "play", 59.99, "Chess set", "board|strategy"),
        ("i6", "games", "play", 20.0, "Go board", "board|strategy"),
    ]
    # Empty cells are missing features, not empty strings.
    assert users == {
        "u1": {"age_band": "25-34", "gender": "f", "occupation": "engineer"},
        "u2": {"age_band": "35-44", "occupation": "teacher"},
        "u4": {"age_band": "18-24", "gender": "m"},
    }
    assert [tuple(row) for row in interactions] == [
        ("u1", "i1", "click", None, datetime(2024, 5, 1, 10, 0, 0)),
        ("u1", "i2", "purchase", 8.0, datetime(2024, 5, 1, 11, 0, 0)),
        ("u1", "i3", "view", None, datetime(2024, 5, 1, 12, 0, 0)),  # 1714564800
        ("u2", "i1", "click", None, datetime(2024, 5, 2, 7, 0, 0)),  # +02:00 -> UTC
        ("u2", "i5", "click", None, datetime(2024, 5, 2, 10, 0, 0)),  # no type -> click
        ("u3", "i3", "rating", 4.5, datetime(2024, 5, 3, 8, 0, 0)),
        ("u3", "i4", "click", None, datetime(2024, 5, 3, 9, 0, 0)),  # "Click" -> click
    ]


def test_the_history_reads_back_for_training(engine: Engine) -> None:
    _load_all(engine)
    with engine.connect() as conn:
        history = load_history(conn, SHOP)
    assert history.catalog.item_ids.tolist() == ["i1", "i2", "i3", "i4", "i5", "i6"]
    assert len(history) == 7
    assert history.user_features["u2"] == {"age_band": "35-44", "occupation": "teacher"}
    assert history.timestamps[0] == 1_714_557_600  # 2024-05-01T10:00:00Z


def test_reingesting_the_same_files_adds_nothing(engine: Engine) -> None:
    _load_all(engine)
    again = _load_all(engine)

    assert again == CatalogIngestSummary(
        catalog=SHOP, items_updated=6, users_updated=3, duplicate_interactions=7
    )
    assert _counts(engine) | {"experiments": 0} == {
        "items": 6,
        "users": 3,
        "interactions": 7,
        "experiments": 0,
        "events": 0,
    }


def test_a_longer_export_adds_only_the_new_rows(engine: Engine, tmp_path: Path) -> None:
    _load_all(engine)
    longer = tmp_path / "interactions.csv"
    text = (DATA / "interactions.csv").read_text(encoding="utf-8")
    # One more click, and a second identical copy of a stored row: identical rows count
    # as many times as they appear, so that copy is new too.
    extra = "u4,i6,2024-05-05T00:00:00Z,click,\nu1,i1,2024-05-01T10:00:00Z,click,\n"
    longer.write_text(text + extra, encoding="utf-8")

    summary = ingest_catalog(engine, SHOP, interactions=longer)

    assert (summary.interactions, summary.duplicate_interactions) == (2, 7)
    assert _counts(engine)["interactions"] == 9
    assert ingest_catalog(engine, SHOP, interactions=longer).interactions == 0


def test_items_are_upserted_and_keep_their_dense_index(engine: Engine) -> None:
    _load_all(engine)
    summary = ingest_catalog(engine, SHOP, items=DATA / "items_update.csv")

    assert (summary.items_added, summary.items_updated) == (1, 1)
    with engine.connect() as conn:
        history = load_history(conn, SHOP)
        i1 = conn.execute(
            select(m.CatalogItem.category, m.CatalogItem.price, m.CatalogItem.tags).where(
                m.CatalogItem.item_id == "i1"
            )
        ).one()
    assert history.catalog.item_ids.tolist() == ["i1", "i2", "i3", "i4", "i5", "i6", "i7"]
    # The file has only item_id and price: the price changes, the other columns stay.
    assert tuple(i1) == ("books", 10.0, "sci-fi|classic")


def test_user_features_are_merged(engine: Engine, tmp_path: Path) -> None:
    _load_all(engine)
    update = tmp_path / "users.csv"
    update.write_text("user_id,gender,plan\nu1,m,gold\n", encoding="utf-8")

    summary = ingest_catalog(engine, SHOP, users=update)

    assert (summary.users_added, summary.users_updated) == (0, 1)
    with engine.connect() as conn:
        features = conn.execute(select(m.User.features).where(m.User.user_id == "u1")).scalar()
    assert features == {
        "age_band": "25-34",
        "gender": "m",
        "occupation": "engineer",
        "plan": "gold",
    }


def test_interactions_may_refer_to_items_stored_earlier(engine: Engine) -> None:
    ingest_catalog(engine, SHOP, items=DATA / "items.csv")
    summary = ingest_catalog(engine, SHOP, interactions=DATA / "interactions.csv")
    assert summary.interactions == 7


def test_catalogues_are_separate(engine: Engine) -> None:
    ingest_catalog(engine, SHOP, items=DATA / "items.csv")
    error = _fails_keeping(engine, "other-shop", interactions=DATA / "interactions.csv")
    assert "unknown item (not in catalogue 'other-shop') (got 'i1')" in error.problems[0]


def _fails_keeping(engine: Engine, catalog: str, **files: Path) -> DataError:
    before = _counts(engine)
    with pytest.raises(DataError) as caught:
        ingest_catalog(engine, catalog, **files)
    assert _counts(engine) == before
    return caught.value


def test_header_only_files_load_nothing(engine: Engine, tmp_path: Path) -> None:
    header_only = tmp_path / "header.csv"
    header_only.write_text("user_id,item_id,timestamp\n", encoding="utf-8")
    summary = ingest_catalog(engine, SHOP, interactions=header_only)
    assert summary == CatalogIngestSummary(catalog=SHOP)


@pytest.mark.parametrize("which", ["items", "interactions", "users"])
def test_an_empty_file_is_an_error_naming_it(engine: Engine, tmp_path: Path, which: str) -> None:
    empty = tmp_path / f"{which}.csv"
    empty.write_text("", encoding="utf-8")
    files = {"items": DATA / "items.csv", which: empty}
    with pytest.raises(DataError) as caught:
        ingest_catalog(engine, SHOP, **files)  # type: ignore[arg-type]
    assert f"cannot ingest {which}.csv: 1 problem" in str(caught.value)
    assert caught.value.problems == [f"{which}.csv line 1: empty file: no header row and no data"]


def test_progress_reports_interaction_lines(engine: Engine) -> None:
    calls: list[tuple[str, int, int]] = []
    ingest_catalog(
        engine,
        SHOP,
        items=DATA / "items.csv",
        interactions=DATA / "interactions.csv",
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert calls[-1] == ("interactions", 8, 8)  # 8 lines: the header and 7 rows


# ---------------------------------------------------------------------------
# Bad input: every problem with its file and line; nothing written
# ---------------------------------------------------------------------------


def test_bad_items_and_interactions_are_listed_with_line_numbers(engine: Engine) -> None:
    error = _fails(engine, items=DATA / "items_bad.csv", interactions=DATA / "interactions_bad.csv")

    assert error.message == (
        "cannot ingest items_bad.csv, interactions_bad.csv: 10 problems; nothing was written"
    )
    unknown = "item_id: unknown item (not in items_bad.csv nor catalogue 'tiny-shop')"
    assert error.problems == [
        "items_bad.csv line 3: price: not a finite number >= 0 (got '-3')",
        "items_bad.csv line 4: item_id: empty",
        "items_bad.csv line 5: item_id: duplicate of line 2 (got 'i1')",
        "items_bad.csv line 6: price: not a finite number >= 0 (got 'cheap')",
        f"interactions_bad.csv line 3: {unknown} (got 'nope')",
        "interactions_bad.csv line 4: timestamp: not ISO 8601 or Unix seconds (got 'yesterday')",
        f"interactions_bad.csv line 5: {unknown} (got 'i3'); timestamp: outside "
        "1970-01-01..2100-01-01 UTC (Unix timestamps must be seconds, not ms) "
        "(got '1714564800000')",
        f"interactions_bad.csv line 6: {unknown} (got 'i4'); type: allowed: view, click, "
        "add_to_cart, purchase, rating (got 'like')",
        f"interactions_bad.csv line 7: {unknown} (got 'i4'); value: not a finite number "
        "(got 'high')",
        "interactions_bad.csv line 8: user_id: empty",
    ]


def test_a_nul_character_is_rejected_with_file_and_line(engine: Engine, tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text((DATA / "items.csv").read_text() + "i\x00z,\n", encoding="utf-8")
    lines = len(items.read_text().splitlines())
    users = tmp_path / "users.csv"
    users.write_text("user_id,age\x00band\nu1,30\n", encoding="utf-8")
    error = _fails(engine, items=items, users=users)
    nul = "a cell contains a NUL character: text " + NUL_PROBLEM
    assert error.problems[:2] == [f"items.csv line {lines}: {nul}", f"users.csv line 1: {nul}"]


def test_missing_required_columns_are_named(engine: Engine) -> None:
    error = _fails(engine, interactions=DATA / "interactions_missing_columns.csv")
    found = "(found: 'user_id', 'item', 'when')"
    assert error.problems == [
        f"interactions_missing_columns.csv line 1: missing required column 'item_id' {found}",
        f"interactions_missing_columns.csv line 1: missing required column 'timestamp' {found}",
        "interactions_missing_columns.csv line 1: unknown columns 'item', 'when' "
        "(required: user_id, item_id, timestamp; optional: type, value)",
    ]


def test_bad_users_files(engine: Engine) -> None:
    error = _fails(engine, users=DATA / "users_bad.csv")
    assert error.problems == [
        "users_bad.csv line 3: user_id: duplicate of line 2 (got 'u1')",
        "users_bad.csv line 4: user_id: empty",
    ]
    error = _fails(engine, users=DATA / "users_missing_user_id.csv")
    assert error.problems == [
        "users_missing_user_id.csv line 1: missing required column 'user_id' "
        "(found: 'id', 'age_band')"
    ]


def test_a_bad_interactions_file_leaves_the_good_items_and_users_unwritten(
    engine: Engine,
) -> None:
    error = _fails(
        engine,
        items=DATA / "items.csv",
        users=DATA / "users.csv",
        interactions=DATA / "interactions_bad.csv",
    )
    # With the good items file, only rows with no known item or other faults remain.
    assert [p.split(":")[0] for p in error.problems] == [
        "interactions_bad.csv line 3",
        "interactions_bad.csv line 4",
        "interactions_bad.csv line 5",
        "interactions_bad.csv line 6",
        "interactions_bad.csv line 7",
        "interactions_bad.csv line 8",
    ]


def test_catalogue_and_experiment_logs_of_one_command_are_all_or_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    config = validate_config(
        {
            "key": "home-recs",
            "catalog": SHOP,
            "variants": [{"key": "control", "weight": 0.5}, {"key": "treatment", "weight": 0.5}],
        }
    )
    from abplatform.catalog_ingest import load_catalog_files

    def shop(conn: Any) -> None:
        load_catalog_files(conn, SHOP, items=DATA / "items_bad.csv")

    # Good logs, bad items: the logs and the experiment are rolled back with the items.
    with pytest.raises(DataError) as caught:
        ingest_logs(engine, config, LOGS / "exposures.csv", LOGS / "events.csv", also=shop)
    assert caught.value.problems[0].startswith("items_bad.csv line 3")
    assert _counts(engine) == EMPTY

    # Bad logs, good items: the items are never written.
    bad_events = tmp_path / "events.csv"
    bad_events.write_text("unit_id,type,timestamp\nu1,click,never\n", encoding="utf-8")

    def good_shop(conn: Any) -> None:
        load_catalog_files(conn, SHOP, items=DATA / "items.csv")

    with pytest.raises(DataError):
        ingest_logs(engine, config, None, bad_events, also=good_shop)
    assert _counts(engine) == EMPTY


def test_problems_are_capped_with_a_count_of_the_rest(engine: Engine, tmp_path: Path) -> None:
    many = tmp_path / "interactions.csv"
    rows = "".join(f"u{i},i1,not-a-time\n" for i in range(MAX_PROBLEMS + 7))
    many.write_text("user_id,item_id,timestamp\n" + rows, encoding="utf-8")
    error = _fails(engine, items=DATA / "items.csv", interactions=many)
    assert len(error.problems) == MAX_PROBLEMS + 1
    assert error.problems[-1] == "... and 7 more"
    assert error.message.startswith(f"cannot ingest interactions.csv: {MAX_PROBLEMS + 7} problems")


def test_a_missing_file_is_named(engine: Engine, tmp_path: Path) -> None:
    error = _fails(engine, items=tmp_path / "nope.csv")
    assert error.message.startswith(f"cannot read {tmp_path / 'nope.csv'}")


# ---------------------------------------------------------------------------
# Reading a held-out file without writing it
# ---------------------------------------------------------------------------


def test_read_interactions_checks_items_against_the_catalogue() -> None:
    rows = read_interactions(DATA / "test_interactions.csv", ["i4", "i6"])
    assert rows.user_ids.tolist() == ["u1", "u9"]
    assert rows.types.tolist() == ["click", "click"]
    assert np.isnan(rows.values).all()
    assert rows.timestamps.tolist() == [1_714_816_800, 1_714_820_400]

    with pytest.raises(DataError) as caught:
        read_interactions(DATA / "test_interactions_bad.csv", ["i4", "i6"], "catalogue 'x'")
    assert caught.value.problems == [
        "test_interactions_bad.csv line 3: item_id: unknown item (not in catalogue 'x') "
        "(got 'i99')",
        "test_interactions_bad.csv line 4: timestamp: not ISO 8601 or Unix seconds (got 'soon')",
    ]


def test_features_are_stored_as_json(engine: Engine) -> None:
    _load_all(engine)
    with engine.connect() as conn:
        raw = conn.execute(select(m.User.features).where(m.User.user_id == "u4")).scalar()
    assert json.loads(json.dumps(raw)) == {"age_band": "18-24", "gender": "m"}


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ABPLATFORM_DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "abplatform.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )


def test_cli_ingest_reports_what_it_wrote_and_every_bad_row(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shop.db'}"
    config = str(DATA / "shop.yaml")
    out = _cli(
        "ingest", config, "--items", str(DATA / "items.csv"),
        "--interactions", str(DATA / "interactions.csv"), "--users", str(DATA / "users.csv"),
        "--db", db,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "catalogue 'tiny-shop': 6 new items, 0 updated; 3 new users, 0 updated; "
        "7 new interactions (0 already stored were skipped)"
    )
    out = _cli(
        "ingest", config, "--catalog", "other", "--items", str(DATA / "items_bad.csv"),
        "--exposures", str(LOGS / "exposures.csv"), "--db", db,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0] == "error: cannot ingest items_bad.csv: 4 problems; nothing was written"
    assert lines[1] == "items_bad.csv line 3: price: not a finite number >= 0 (got '-3')"
    assert lines[-1] == "nothing was written"
    engine = open_database(db)
    try:
        assert _counts(engine) == {
            "items": 6,
            "users": 3,
            "interactions": 7,
            "experiments": 0,
            "events": 0,
        }
    finally:
        engine.dispose()
    out = _cli("ingest", config, "--db", db)
    assert out.returncode == 2 and "nothing to ingest" in out.stderr
