"""The public CSV checks shared by `ingest` and `catalog_ingest`."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from abplatform.csvcheck import (
    MAX_PROBLEMS,
    CsvLog,
    Problems,
    id_problems,
    parse_seconds,
    timestamp_problems,
)
from abplatform.errors import DataError


def test_timestamps_are_iso_or_unix_seconds_within_1970_to_2100() -> None:
    assert parse_seconds("1970-01-01T00:00:10") == 10
    assert parse_seconds("1970-01-01T01:00:10+01:00") == 10
    assert parse_seconds("10.9") == 10
    assert parse_seconds("1764000000000") is None  # milliseconds
    assert parse_seconds("yesterday") is None
    assert timestamp_problems("10") == []
    assert timestamp_problems("yesterday") == [
        "timestamp: not ISO 8601 or Unix seconds (got 'yesterday')"
    ]
    assert timestamp_problems("1764000000000")[0].startswith("timestamp: outside 1970-01-01")


def test_id_problems() -> None:
    assert id_problems("unit_id", "") == ["unit_id: empty"]
    assert id_problems("item_id", "", required=False) == []
    assert id_problems("unit_id", "u" * 129) == [
        f"unit_id: longer than 128 characters (got {'u' * 57 + '...'!r})"
    ]


def test_problems_keep_the_first_lines_and_count_the_rest() -> None:
    problems = Problems()
    problems.raise_if_any()  # nothing found: no error
    for line in range(2, MAX_PROBLEMS + 5):
        problems.add("a.csv", line, "bad")
    assert problems.listed()[0] == "a.csv line 2: bad"
    assert problems.listed()[-1] == "... and 3 more"
    with pytest.raises(DataError) as caught:
        problems.raise_if_any()
    assert caught.value.message == (
        f"cannot ingest a.csv: {MAX_PROBLEMS + 3} problems; nothing was written"
    )
    assert problems.error("cannot use a.csv", hint="h").problems == problems.listed()


def test_open_checks_the_header(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("unit_id,colour\nu1,red\n")
    problems = Problems()
    with ExitStack() as stack:
        assert CsvLog.open_if_given(None, ("unit_id",), (), stack, problems) is None
        log = CsvLog.open_if_given(path, ("unit_id", "ts"), ("value",), stack, problems)
        assert log is not None
        assert list(log.rows(problems)) == [(2, ["u1", "red"])]
    assert problems.lines == [
        "log.csv line 1: missing required column 'ts' (found: 'unit_id', 'colour')",
        "log.csv line 1: unknown column 'colour' (required: unit_id, ts; optional: value)",
    ]
