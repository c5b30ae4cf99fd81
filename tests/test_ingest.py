"""CSV log ingestion on real SQLite and PostgreSQL: loads, idempotent re-ingest, bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from abplatform import csvcheck, ingest
from abplatform.config import ExperimentConfig, validate_config
from abplatform.errors import DataError
from abplatform.ingest import IngestSummary, ingest_logs
from abplatform.storage import models as m
from abplatform.storage.db import open_database
from abplatform.values import NUL_PROBLEM

DATA = Path(__file__).parent / "data" / "ingest"
EXPOSURE_HEADER = "unit_id,variant,timestamp,propensity,scene,slate_size\n"
EVENT_HEADER = "unit_id,type,timestamp,item_id,value\n"


def _config(**changes: Any) -> ExperimentConfig:
    document: dict[str, Any] = {
        "key": "home-recs",
        "description": "two-tower vs popularity",
        "catalog": "shop",
        "variants": [
            {"key": "control", "weight": 0.5},
            {"key": "treatment", "weight": 0.5},
        ],
    }
    document.update(changes)
    return validate_config(document)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def _counts(engine: Engine) -> dict[str, int]:
    tables = {
        "experiments": m.Experiment,
        "exposures": m.Exposure,
        "events": m.Event,
    }
    with engine.connect() as conn:
        return {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in tables.items()
        }


EMPTY = {"experiments": 0, "exposures": 0, "events": 0}


def _fails(
    engine: Engine,
    *,
    exposures: Path | None = None,
    events: Path | None = None,
    config: ExperimentConfig | None = None,
) -> DataError:
    with pytest.raises(DataError) as caught:
        ingest_logs(engine, config or _config(), exposures, events)
    return caught.value


# ---------------------------------------------------------------------------
# Loads that succeed
# ---------------------------------------------------------------------------


def test_happy_path_stores_rows_with_utc_times_and_default_propensity(engine: Engine) -> None:
    summary = ingest_logs(engine, _config(), DATA / "exposures.csv", DATA / "events.csv")

    # Catalogue 'shop' holds no items here: the events update no features (see
    # test_ingest_features.py), counted.
    assert summary == IngestSummary(
        exposures=4, events=4, duplicate_events=0, units=4, unfeatured_events=4
    )
    assert _counts(engine) == {"experiments": 1, "exposures": 4, "events": 4}
    with engine.connect() as conn:
        experiment = conn.execute(select(m.Experiment.id, m.Experiment.catalog)).one()
        exposures = {
            row.unit_id: row
            for row in conn.execute(
                select(
                    m.Exposure.unit_id,
                    m.Exposure.experiment_id,
                    m.Exposure.variant,
                    m.Exposure.ts,
                    m.Exposure.propensity,
                    m.Exposure.scene,
                    m.Exposure.slate_size,
                )
            )
        }
        events = conn.execute(
            select(
                m.Event.event_id,
                m.Event.experiment_id,
                m.Event.unit_id,
                m.Event.type,
                m.Event.item_id,
                m.Event.value,
                m.Event.ts,
            ).order_by(m.Event.ts)
        ).all()
    assert experiment.catalog == "shop"
    assert {row.experiment_id for row in exposures.values()} == {experiment.id}
    # "Z", "+02:00", Unix seconds and a naive time (taken as UTC) all end up naive UTC.
    assert exposures["u1"].ts == datetime(2024, 5, 1, 10, 0, 0)
    assert exposures["u2"].ts == datetime(2024, 5, 1, 10, 30, 0)
    assert exposures["u3"].ts == datetime(2024, 5, 1, 12, 0, 0)
    assert exposures["u4"].ts == datetime(2024, 5, 1, 9, 15, 0)
    # No propensity column value -> the variant's configured weight.
    assert exposures["u1"].propensity == 0.5
    assert exposures["u2"].propensity == 0.25
    assert (exposures["u2"].variant, exposures["u2"].scene, exposures["u2"].slate_size) == (
        "treatment",
        "product_detail",
        5,
    )
    assert (exposures["u3"].scene, exposures["u3"].slate_size) == (None, 0)

    assert [(e.unit_id, e.type, e.item_id, e.value) for e in events] == [
        ("u1", "click", "item-7", None),
        ("u1", "purchase", "item-7", 19.99),
        ("u2", "view", "item-3", None),
        ("u3", "add_to_cart", None, None),
    ]
    assert {e.experiment_id for e in events} == {experiment.id}
    # seconds_to_sql stores whole seconds: .750 and .5 are dropped.
    assert [e.ts for e in events] == [
        datetime(2024, 5, 1, 10, 1, 0),
        datetime(2024, 5, 1, 10, 5, 0),
        datetime(2024, 5, 1, 10, 30, 0),
        datetime(2024, 5, 1, 12, 2, 0),
    ]
    # Without an event_id column the id is "<Unix seconds>-<sha1 of experiment key and row>".
    assert [e.event_id.split("-")[0] for e in events] == [
        "1714557660",
        "1714557900",
        "1714559400",
        "1714564920",
    ]
    assert all(re.fullmatch(r"\d{10}-[0-9a-f]{40}", e.event_id) for e in events)
    assert len({e.event_id for e in events}) == 4


def test_reingesting_the_same_events_adds_nothing_and_counts_duplicates(engine: Engine) -> None:
    first = ingest_logs(engine, _config(), DATA / "exposures.csv", DATA / "events.csv")
    second = ingest_logs(engine, _config(), None, DATA / "events.csv")

    assert (first.events, first.duplicate_events) == (4, 0)
    assert second == IngestSummary(exposures=0, events=0, duplicate_events=4, units=3)
    assert _counts(engine)["events"] == 4


def test_reingesting_the_same_exposures_adds_nothing(engine: Engine, tmp_path: Path) -> None:
    first = ingest_logs(engine, _config(), DATA / "exposures.csv", None)
    second = ingest_logs(engine, _config(), DATA / "exposures.csv", None)

    assert (first.exposures, first.duplicate_exposures) == (4, 0)
    assert (second.exposures, second.duplicate_exposures) == (0, 4)
    assert _counts(engine)["exposures"] == 4
    # A new exposure of a known unit (later timestamp) is still added; a row repeated
    # within one file counts once.
    extra = tmp_path / "more.csv"
    lines = (DATA / "exposures.csv").read_text(encoding="utf-8").splitlines()
    header, first_row = lines[0], lines[1].split(",")
    columns = header.split(",")
    later = list(first_row)
    later[columns.index("timestamp")] = "2030-01-01T00:00:00Z"
    extra.write_text("\n".join([header, ",".join(later), ",".join(later)]) + "\n")
    third = ingest_logs(engine, _config(), extra, None)
    assert (third.exposures, third.duplicate_exposures) == (1, 1)
    assert _counts(engine)["exposures"] == 5


def test_explicit_event_ids_are_kept_and_skipped_when_already_stored(
    engine: Engine, tmp_path: Path
) -> None:
    ingest_logs(engine, _config(), None, DATA / "events_with_ids.csv")
    more = _write(
        tmp_path,
        "more.csv",
        "event_id,unit_id,type,timestamp\nev-2,u2,rating,1714560000\nev-3,u3,click,1714560000\n",
    )
    summary = ingest_logs(engine, _config(), None, more)

    assert (summary.events, summary.duplicate_events) == (1, 1)
    with engine.connect() as conn:
        stored = conn.execute(select(m.Event.event_id, m.Event.value).order_by(m.Event.event_id))
        assert stored.all() == [("ev-1", None), ("ev-2", 4.0), ("ev-3", None)]


def test_derived_ids_differ_between_experiments(engine: Engine) -> None:
    ingest_logs(engine, _config(), None, DATA / "events.csv")
    other = ingest_logs(engine, _config(key="other-exp"), None, DATA / "events.csv")

    assert (other.events, other.duplicate_events) == (4, 0)
    assert _counts(engine)["events"] == 8


def test_header_only_files_load_nothing_but_save_the_experiment(
    engine: Engine, tmp_path: Path
) -> None:
    header_only = _write(tmp_path, "events.csv", EVENT_HEADER)

    summary = ingest_logs(engine, _config(), None, header_only)

    assert summary == IngestSummary(exposures=0, events=0, duplicate_events=0, units=0)
    assert _counts(engine) == {"experiments": 1, "exposures": 0, "events": 0}


@pytest.mark.parametrize("content", ["", "\n\r\n\n"])
def test_an_empty_file_is_an_error_naming_it(engine: Engine, tmp_path: Path, content: str) -> None:
    empty = _write(tmp_path, "exposures.csv", content)
    header_only = _write(tmp_path, "events.csv", EVENT_HEADER)

    with pytest.raises(DataError) as caught:
        ingest_logs(engine, _config(), empty, header_only)

    message = str(caught.value).splitlines()[0]
    assert message == "cannot ingest exposures.csv: 1 problem; nothing was written"
    assert caught.value.problems == ["exposures.csv line 1: empty file: no header row and no data"]
    assert _counts(engine) == {"experiments": 0, "exposures": 0, "events": 0}


def test_bom_crlf_blank_lines_quotes_and_spaces_are_read(engine: Engine, tmp_path: Path) -> None:
    content = (
        "\ufeffunit_id , variant,timestamp,scene\r\n"
        "\r\n"
        '"u,1",control,2024-05-01T10:00:00Z,home_page\r\n'
        " u2 ,treatment , 1714521600 ,\r\n"
    )
    exposures = _write(tmp_path, "exposures.csv", content)

    summary = ingest_logs(engine, _config(), exposures, None, catalog="override")

    assert (summary.exposures, summary.units) == (2, 2)
    with engine.connect() as conn:
        assert conn.execute(select(m.Experiment.catalog)).scalar_one() == "override"
        units = conn.execute(select(m.Exposure.unit_id, m.Exposure.variant)).all()
    assert sorted(units) == [("u,1", "control"), ("u2", "treatment")]


# ---------------------------------------------------------------------------
# Bad input: every problem names file, line, column and value; nothing is written
# ---------------------------------------------------------------------------


def test_missing_required_column_names_it_and_the_columns_found(
    engine: Engine, tmp_path: Path
) -> None:
    exposures = _write(tmp_path, "exposures.csv", "unit_id,variant,ts\nu1,control,1714521600\n")

    error = _fails(engine, exposures=exposures)

    assert error.problems[0] == (
        "exposures.csv line 1: missing required column 'timestamp' "
        "(found: 'unit_id', 'variant', 'ts')"
    )
    assert "exposures.csv line 1: unknown column 'ts'" in error.problems[1]
    assert "nothing was written" in error.message
    assert _counts(engine) == EMPTY


def test_misspelt_column_is_not_silently_ignored(engine: Engine, tmp_path: Path) -> None:
    events = _write(tmp_path, "events.csv", "unitid,type,timestamp\nu1,click,1714521600\n")

    error = _fails(engine, events=events)

    assert error.problems == [
        "events.csv line 1: missing required column 'unit_id' (found: 'unitid', 'type', "
        "'timestamp')",
        "events.csv line 1: unknown column 'unitid' (required: unit_id, type, timestamp; "
        "optional: event_id, item_id, value)",
    ]
    assert _counts(engine) == EMPTY


def test_bad_timestamp_reports_file_line_field_and_value(engine: Engine, tmp_path: Path) -> None:
    exposures = _write(
        tmp_path,
        "exposures.csv",
        EXPOSURE_HEADER
        + "u1,control,2024-05-01T10:00:00Z,,,\n"
        + "u2,control,yesterday,,,\n"
        + "u3,control,1714521600000,,,\n",
    )

    error = _fails(engine, exposures=exposures)

    assert error.problems == [
        "exposures.csv line 3: timestamp: not ISO 8601 or Unix seconds (got 'yesterday')",
        "exposures.csv line 4: timestamp: outside 1970-01-01..2100-01-01 UTC "
        "(Unix timestamps must be seconds, not ms) (got '1714521600000')",
    ]
    assert error.message == "cannot ingest exposures.csv: 2 problems; nothing was written"
    assert _counts(engine) == EMPTY


def test_a_nul_character_is_rejected_with_file_and_line(engine: Engine, tmp_path: Path) -> None:
    """The API's rule for text on both databases: a NUL is a problem, nothing is written."""
    exposures = _write(
        tmp_path, "exposures.csv", EXPOSURE_HEADER + "u1,control,1714521600,,,\n" * 3
    )
    events = _write(
        tmp_path,
        "events.csv",
        EVENT_HEADER
        + "u1,click,1714521600,i\x001,\n"
        + "u1,click,1714521600,i2,\n" * 2
        + '"u\x00\n2",click,1714521600,i3,\n',
    )

    error = _fails(engine, exposures=exposures, events=events)

    nul = "a cell contains a NUL character: text " + NUL_PROBLEM
    assert error.problems == [f"events.csv line 2: {nul}", f"events.csv line 5: {nul}"]
    assert error.message == "cannot ingest events.csv: 2 problems; nothing was written"
    assert _counts(engine) == EMPTY


def test_unknown_variant_lists_the_known_ones(engine: Engine, tmp_path: Path) -> None:
    exposures = _write(tmp_path, "exposures.csv", EXPOSURE_HEADER + "u1,contrl,1714521600,,,\n")

    error = _fails(engine, exposures=exposures)

    assert error.problems == [
        "exposures.csv line 2: variant: unknown variant; known: control, treatment (got 'contrl')"
    ]
    assert _counts(engine) == EMPTY


def test_empty_and_overlong_ids_are_rejected(engine: Engine, tmp_path: Path) -> None:
    long_id = "u" * 129
    exposures = _write(
        tmp_path,
        "exposures.csv",
        EXPOSURE_HEADER + ",control,1714521600,,,\n" + f"{long_id},control,1714521600,,,\n",
    )
    events = _write(tmp_path, "events.csv", EVENT_HEADER + f"u1,click,1714521600,{'i' * 129},\n")

    error = _fails(engine, exposures=exposures, events=events)

    assert error.problems == [
        "exposures.csv line 2: unit_id: empty",
        f"exposures.csv line 3: unit_id: longer than 128 characters (got '{'u' * 57}...')",
        f"events.csv line 2: item_id: longer than 128 characters (got '{'i' * 57}...')",
    ]
    assert _counts(engine) == EMPTY


@pytest.mark.parametrize("propensity", ["0", "1.5", "abc", "nan"])
def test_propensity_outside_zero_one_is_rejected(
    engine: Engine, tmp_path: Path, propensity: str
) -> None:
    exposures = _write(
        tmp_path, "exposures.csv", EXPOSURE_HEADER + f"u1,control,1714521600,{propensity},,\n"
    )

    error = _fails(engine, exposures=exposures)

    assert error.problems == [
        f"exposures.csv line 2: propensity: not a number in (0, 1] (got {propensity!r})"
    ]
    assert _counts(engine) == EMPTY


def test_zero_weight_variant_needs_an_explicit_propensity(engine: Engine, tmp_path: Path) -> None:
    config = _config(
        variants=[
            {"key": "control", "weight": 1.0},
            {"key": "holdout", "weight": 0.0},
        ]
    )
    exposures = _write(
        tmp_path,
        "exposures.csv",
        EXPOSURE_HEADER + "u1,holdout,1714521600,0.01,,\n" + "u2,holdout,1714521600,,,\n",
    )

    error = _fails(engine, exposures=exposures, config=config)

    assert error.problems == [
        "exposures.csv line 3: propensity: missing, and variant 'holdout' has weight 0 in the "
        "config, so no default (got '')"
    ]
    assert _counts(engine) == EMPTY


def test_bad_slate_size_and_long_scene_are_rejected_on_one_line(
    engine: Engine, tmp_path: Path
) -> None:
    exposures = _write(
        tmp_path, "exposures.csv", EXPOSURE_HEADER + f"u1,control,1714521600,,{'s' * 65},-1\n"
    )

    error = _fails(engine, exposures=exposures)

    assert error.problems == [
        f"exposures.csv line 2: scene: longer than 64 characters (got '{'s' * 57}...'); "
        "slate_size: not a whole number >= 0 (got '-1')"
    ]
    assert _counts(engine) == EMPTY


def test_event_type_must_be_a_known_non_impression_type(engine: Engine, tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        "events.csv",
        EVENT_HEADER + "u1,clik,1714521600,,\n" + "u1,impression,1714521600,item-1,\n",
    )

    error = _fails(engine, events=events)

    allowed = "allowed: view, click, add_to_cart, purchase, rating"
    assert error.problems == [
        f"events.csv line 2: type: {allowed} (got 'clik')",
        "events.csv line 3: type: impressions come from the exposures' slate_size; "
        f"{allowed} (got 'impression')",
    ]
    assert _counts(engine) == EMPTY


@pytest.mark.parametrize("value", ["abc", "nan", "inf"])
def test_event_value_must_be_finite(engine: Engine, tmp_path: Path, value: str) -> None:
    events = _write(tmp_path, "events.csv", EVENT_HEADER + f"u1,purchase,1714521600,i1,{value}\n")

    error = _fails(engine, events=events)

    assert error.problems == [f"events.csv line 2: value: not a finite number (got {value!r})"]
    assert _counts(engine) == EMPTY


def test_duplicate_event_ids_in_the_file_name_both_lines(engine: Engine, tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        "events.csv",
        "event_id,unit_id,type,timestamp\n"
        "e1,u1,click,1714521600\n"
        "e2,u1,view,1714521600\n"
        "e1,u2,click,1714521700\n",
    )

    error = _fails(engine, events=events)

    assert error.problems == ["events.csv line 4: event_id: duplicate of line 2 (got 'e1')"]
    assert _counts(engine) == EMPTY


def test_identical_rows_without_event_id_are_duplicates(engine: Engine, tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        "events.csv",
        EVENT_HEADER + "u1,click,1714521600,i1,\n" + "u2,click,1714521600,i1,\n"
        "u1,click,1714521600,i1,\n",
    )

    error = _fails(engine, events=events)

    assert len(error.problems) == 1
    assert error.problems[0].startswith(
        "events.csv line 4: event_id: duplicate of line 2 (same content gives the same "
        "derived id) (got '"
    )
    assert _counts(engine) == EMPTY


def test_row_with_wrong_number_of_fields_is_reported(engine: Engine, tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        "events.csv",
        EVENT_HEADER + '"u1","click","1714521600","multi\nline item",\n' + "u1,click\n",
    )

    error = _fails(engine, events=events)

    # The quoted field spans lines 2-3, so the short row starts on line 4.
    assert error.problems == ["events.csv line 4: expected 5 fields, found 2"]
    assert _counts(engine) == EMPTY


def test_non_utf8_bytes_are_reported_with_their_line(engine: Engine, tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        "events.csv",
        (EVENT_HEADER + "u1,click,1714521600,i1,\n").encode() + b"u\xe9,click,1714521600,,\n",
    )

    error = _fails(engine, events=events)

    assert len(error.problems) == 1
    assert error.problems[0].startswith("events.csv line 3: not UTF-8 (invalid continuation")
    assert _counts(engine) == EMPTY


def test_problems_are_capped_with_a_count_of_the_rest(engine: Engine, tmp_path: Path) -> None:
    rows = "".join(f"u{i},control,soon,,,\n" for i in range(60))
    exposures = _write(tmp_path, "exposures.csv", EXPOSURE_HEADER + rows)

    error = _fails(engine, exposures=exposures)

    assert len(error.problems) == csvcheck.MAX_PROBLEMS + 1
    assert error.problems[0].startswith("exposures.csv line 2: timestamp:")
    assert error.problems[-2].startswith("exposures.csv line 51: timestamp:")
    assert error.problems[-1] == "... and 10 more"
    assert "60 problems" in error.message
    assert _counts(engine) == EMPTY


def test_failed_load_rolls_back_written_chunks_and_the_experiment_update(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_logs(engine, _config(), DATA / "exposures.csv", DATA / "events.csv")
    before = _counts(engine)
    # Tiny chunks: the good exposures are written before the bad event is read.
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 2)
    exposures = _write(
        tmp_path,
        "exposures.csv",
        EXPOSURE_HEADER + "".join(f"n{i},treatment,1714600000,,,\n" for i in range(5)),
    )
    events = _write(
        tmp_path, "events.csv", EVENT_HEADER + "n1,click,1714600100,,\n" + "n2,click,,,\n"
    )

    error = _fails(
        engine,
        exposures=exposures,
        events=events,
        config=_config(
            description="changed",
            variants=[{"key": "control", "weight": 0.2}, {"key": "treatment", "weight": 0.8}],
        ),
    )

    assert error.problems == ["events.csv line 3: timestamp: not ISO 8601 or Unix seconds (got '')"]
    assert _counts(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(m.Experiment.description)).scalar_one() == (
            "two-tower vs popularity"
        )


def test_missing_file_is_a_data_error(engine: Engine, tmp_path: Path) -> None:
    error = _fails(engine, events=tmp_path / "nope.csv")

    assert error.problems == ["nope.csv: No such file or directory"]
    assert _counts(engine) == EMPTY


def test_cli_ingest_keeps_a_simulated_catalogue_and_refuses_orphaning_it(
    db_url: str, tmp_path: Path
) -> None:
    """`abplatform ingest` of the simulated example's own YAML keeps `sim:<key>`; a YAML
    naming another catalogue while exposures exist exits 2 with the reason, nothing written."""
    from simulator.runner import simulate
    from tests.api.conftest import EXAMPLE, KEY, small_config
    from tests.factories import cli

    engine = open_database(db_url)
    simulate(engine, small_config())
    with engine.connect() as conn:
        unit = conn.execute(select(m.Exposure.unit_id).limit(1)).scalar_one()
    events = _write(tmp_path, "events.csv", f"{EVENT_HEADER}{unit},click,2026-11-27T10:00:00Z,,\n")
    before = _counts(engine)

    kept = cli("ingest", str(EXAMPLE), "--events", str(events), db=db_url)
    assert kept.returncode == 0, kept.stderr
    assert "1 new events" in kept.stdout
    with engine.connect() as conn:
        catalog = conn.execute(select(m.Experiment.catalog)).scalar_one()
    assert catalog == f"sim:{KEY}"

    moved = _write(tmp_path, "moved.yaml", EXAMPLE.read_text() + "\ncatalog: shop\n")
    refused = cli("ingest", str(moved), "--events", str(events), db=db_url)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert f"catalogue 'sim:{KEY}'; catalog: 'shop' would orphan them" in refused.stderr
    assert "nothing was written" in refused.stderr
    with engine.connect() as conn:
        assert conn.execute(select(m.Experiment.catalog)).scalar_one() == f"sim:{KEY}"
    assert _counts(engine) == before | {"events": before["events"] + 1}
    engine.dispose()
