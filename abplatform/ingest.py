"""Load real exposure and event logs from CSV files into the database, all or nothing."""

from __future__ import annotations

import csv
import gc
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import TextIO

from sqlalchemy import Connection, Engine

from abplatform.config.models import ExperimentConfig
from abplatform.domain import EVENT_TYPES
from abplatform.errors import DataError
from abplatform.storage.bulk import bulk_insert, reserve_ids, seconds_to_sql
from abplatform.storage.db import transaction
from abplatform.storage.repository import save_experiment

EXPOSURE_COLUMNS = ("unit_id", "variant", "timestamp")
EXPOSURE_OPTIONAL_COLUMNS = ("propensity", "scene", "slate_size")
EVENT_COLUMNS = ("unit_id", "type", "timestamp")
EVENT_OPTIONAL_COLUMNS = ("event_id", "item_id", "value")

INGESTIBLE_EVENT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t != "impression")
"""Event types a log may carry; impressions are derived from the exposures' `slate_size`."""

MAX_ID_LENGTH = 128
MAX_SCENE_LENGTH = 64
MAX_SLATE_SIZE = 2**31 - 1
MAX_PROBLEMS = 50
# Plausible Unix seconds: outside 1970..2100 a value is almost surely milliseconds or garbage.
MIN_SECONDS = 0
MAX_SECONDS = 4_102_444_800
CHUNK_ROWS = 50_000
SQLITE_CACHE_KIB = -131_072  # negative: KiB, i.e. 128 MiB of page cache while loading
# Event ids per existence query: under old SQLite's 999 bound parameters; one array on PostgreSQL.
ID_QUERY_CHUNK = 900
PG_ID_QUERY_CHUNK = 10_000

_ExposureRow = tuple[str, str, int, float, str | None, int]
_EventRow = tuple[str, str, str, str | None, float | None, int]


@dataclass(frozen=True)
class IngestSummary:
    """What a load wrote: exposures, new events, events already stored, distinct units seen."""

    exposures: int
    events: int
    duplicate_events: int
    units: int
    duplicate_exposures: int = 0


def ingest_logs(
    engine: Engine,
    config: ExperimentConfig,
    exposures: Path | None,
    events: Path | None,
    *,
    catalog: str | None = None,
    also: Callable[[Connection], None] | None = None,
) -> IngestSummary:
    """Save the experiment and load its exposure and event CSV logs in one transaction.

    Any bad row aborts the whole load (nothing is written, not even the experiment
    definition) with a `DataError` listing one line per bad row. Events whose
    `event_id` is already stored are skipped and counted, so re-ingesting a file is
    idempotent; without an `event_id` column the id is derived from the experiment key
    and the row's content. An exposure identical to a stored one (same unit, variant and
    timestamp) is skipped and counted too. `units` counts distinct unit ids in both files.
    `also(conn)`, if given, loads more of the same command's input in the same transaction
    once the logs are in; whatever it raises rolls the logs back too.
    """
    problems = _Problems()
    with ExitStack() as stack:
        exposure_log = (
            _CsvLog.open(exposures, EXPOSURE_COLUMNS, EXPOSURE_OPTIONAL_COLUMNS, stack, problems)
            if exposures is not None
            else None
        )
        event_log = (
            _CsvLog.open(events, EVENT_COLUMNS, EVENT_OPTIONAL_COLUMNS, stack, problems)
            if events is not None
            else None
        )
        problems.raise_if_any()
        with _gc_paused(), transaction(engine) as session:
            stored = save_experiment(session, config, catalog or config.catalog_name)
            conn = session.connection()
            load = _Load(conn, stored.id, config, problems)
            with _sqlite_cache(conn):
                if exposure_log is not None:
                    load.exposures(exposure_log)
                if event_log is not None:
                    load.events(event_log)
            # Raising inside the transaction rolls back every row and the experiment upsert.
            problems.raise_if_any()
            if also is not None:
                also(conn)
    return IngestSummary(
        exposures=load.n_exposures,
        events=load.n_events,
        duplicate_events=load.n_duplicates,
        units=len(load.units),
        duplicate_exposures=load.n_duplicate_exposures,
    )


class _Problems:
    """Problems found so far, one line per bad row (or header): MAX_PROBLEMS kept, rest counted."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0
        self.files: list[str] = []

    def add(self, file: str, line: int, what: str) -> None:
        self.count += 1
        if file not in self.files:
            self.files.append(file)
        if len(self.lines) < MAX_PROBLEMS:
            self.lines.append(f"{file} line {line}: {what}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        listed = list(self.lines)
        if self.count > len(listed):
            listed.append(f"... and {self.count - len(listed)} more")
        plural = "s" if self.count != 1 else ""
        raise DataError(
            f"cannot ingest {', '.join(self.files)}: {self.count} problem{plural}; "
            "nothing was written",
            listed,
            hint="fix the rows listed (line numbers count the header too) and run the ingest again",
        )


class _CsvLog:
    """An open CSV log whose header has been checked; yields rows with their line numbers."""

    def __init__(self, path: Path, handle: TextIO) -> None:
        self.path = path
        self.name = path.name
        self.reader = csv.reader(handle, strict=True)
        self.columns: dict[str, int] = {}
        self.width = 0
        self.header_line = 1
        self._last_line = 0

    @classmethod
    def start(
        cls, path: Path, stack: ExitStack, problems: _Problems, what: str = "log"
    ) -> tuple[_CsvLog, list[str] | None]:
        """Open `path` and read its header: the log and the stripped names (None if empty)."""
        try:
            handle = stack.enter_context(path.open(encoding="utf-8-sig", newline=""))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise DataError(
                f"cannot read {path}: {reason}",
                [f"{path.name}: {reason}"],
                hint=f"check the path of the {what} file",
            ) from None
        log = cls(path, handle)
        header = log.header(problems)
        return log, None if header is None else [name.strip() for name in header]

    def set_columns(self, names: list[str], problems: _Problems) -> None:
        """Index the columns by name; a repeated name is a problem."""
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            problems.add(
                self.name, self.header_line, f"repeated column {', '.join(map(repr, repeated))}"
            )
        self.columns = {name: i for i, name in enumerate(names)}
        self.width = len(names)

    @classmethod
    def open(
        cls,
        path: Path,
        required: Sequence[str],
        optional: Sequence[str],
        stack: ExitStack,
        problems: _Problems,
    ) -> _CsvLog:
        log, names = cls.start(path, stack, problems)
        if names is None:  # an empty file is an empty log
            return log
        found = ", ".join(repr(name) for name in names)
        for column in required:
            if column not in names:
                problems.add(
                    log.name,
                    log.header_line,
                    f"missing required column {column!r} (found: {found})",
                )
        unknown = [name for name in names if name not in required and name not in optional]
        if unknown:
            problems.add(
                log.name,
                log.header_line,
                f"unknown column{'s' * (len(unknown) > 1)} "
                f"{', '.join(repr(name) for name in unknown)} "
                f"(required: {', '.join(required)}; optional: {', '.join(optional)})",
            )
        log.set_columns(names, problems)
        return log

    def rows(self, problems: _Problems) -> Iterator[tuple[int, list[str]]]:
        """Data rows with the 1-based line they start on; blank lines are skipped."""
        reader, width, last = self.reader, self.width, self._last_line
        try:
            for row in reader:
                line, last = last + 1, reader.line_num  # a quoted field may span lines
                if len(row) == width:
                    yield line, row
                elif row:
                    problems.add(self.name, line, f"expected {width} fields, found {len(row)}")
        except (UnicodeDecodeError, csv.Error) as exc:
            self._unreadable(exc, problems)

    def header(self, problems: _Problems) -> list[str] | None:
        """The first non-blank record, or None for an empty file."""
        last = 0
        try:
            for row in self.reader:
                start, last = last + 1, self.reader.line_num
                if row:
                    self.header_line, self._last_line = start, last
                    return row
        except (UnicodeDecodeError, csv.Error) as exc:
            self._unreadable(exc, problems)
        return None

    def _unreadable(self, exc: UnicodeDecodeError | csv.Error, problems: _Problems) -> None:
        if isinstance(exc, UnicodeDecodeError):
            line, reason = _first_bad_utf8_line(self.path)
            problems.add(self.name, line, f"not UTF-8 ({reason}); reading stopped here")
        else:
            line = self.reader.line_num
            problems.add(self.name, line, f"malformed CSV ({exc}); reading stopped here")


def _first_bad_utf8_line(path: Path) -> tuple[int, str]:
    """Where a file stops being UTF-8; scanned again only when decoding has failed."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, f"{exc.reason} at byte {exc.start + 1} of the line"
    return 0, "undecodable bytes"


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _bad(column: str, message: str, value: str) -> str:
    return f"{column}: {message} (got {_show(value)})"


def _float(value: str) -> float:
    """The number, or NaN when the text is not one (NaN then fails every range check)."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def _int(value: str) -> int:
    """The whole number, or -1 when the text is not one."""
    try:
        return int(value)
    except ValueError:
        return -1


def _seconds(value: str) -> int | None:
    """ISO 8601 (naive means UTC) or Unix seconds -> whole Unix seconds; None if neither."""
    if value[4:5] == "-":  # YYYY-...: skip float(), whose failure is the slow path
        seconds = _iso_seconds(value)
    else:
        try:
            seconds = float(value)
        except ValueError:
            seconds = _iso_seconds(value)
    if MIN_SECONDS <= seconds < MAX_SECONDS:  # False for NaN too
        return math.floor(seconds)
    return None


def _iso_seconds(value: str) -> float:
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return math.nan
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def _derived_event_id(
    key: str, seconds: int, unit: str, kind: str, stamp: str, item: str, value: str
) -> str:
    """A stable id from the experiment and the row's content, so re-ingesting is idempotent.

    The Unix-seconds prefix makes ids roughly time-ordered (like UUIDv7): a log's inserts
    then land near each other in the unique index instead of all over it.
    """
    content = "\x1f".join((key, unit, kind, stamp, item, value))
    digest = hashlib.sha1(content.encode("utf-8"), usedforsecurity=False).hexdigest()
    return f"{seconds:010d}-{digest}"


# Diagnosis of a bad row: only run once the fast checks have failed, so it may be slow.


def _id_problems(column: str, value: str, *, required: bool = True) -> list[str]:
    if not value:
        return [f"{column}: empty"] if required else []
    if len(value) > MAX_ID_LENGTH:
        return [_bad(column, f"longer than {MAX_ID_LENGTH} characters", value)]
    return []


def _timestamp_problems(value: str) -> list[str]:
    if _seconds(value) is not None:
        return []
    seconds = _iso_seconds(value)
    if math.isnan(seconds):
        seconds = _float(value)
    if not math.isfinite(seconds):
        return [_bad("timestamp", "not ISO 8601 or Unix seconds", value)]
    why = "outside 1970-01-01..2100-01-01 UTC (Unix timestamps must be seconds, not ms)"
    return [_bad("timestamp", why, value)]


def _exposure_problems(
    unit: str,
    variant: str,
    stamp: str,
    propensity: str,
    scene: str,
    slate_size: str,
    known: dict[str, float],
) -> str:
    problems = _id_problems("unit_id", unit)
    weight = known.get(variant)
    if weight is None:
        problems.append(_bad("variant", f"unknown variant; known: {', '.join(known)}", variant))
    problems += _timestamp_problems(stamp)
    if propensity:
        if not 0.0 < _float(propensity) <= 1.0:
            problems.append(_bad("propensity", "not a number in (0, 1]", propensity))
    elif weight is not None and weight <= 0.0:
        why = f"missing, and variant {variant!r} has weight 0 in the config, so no default"
        problems.append(_bad("propensity", why, propensity))
    if len(scene) > MAX_SCENE_LENGTH:
        problems.append(_bad("scene", f"longer than {MAX_SCENE_LENGTH} characters", scene))
    if slate_size and not 0 <= _int(slate_size) <= MAX_SLATE_SIZE:
        problems.append(_bad("slate_size", "not a whole number >= 0", slate_size))
    return "; ".join(problems)


def _event_problems(
    unit: str, kind: str, stamp: str, item: str, value: str, event_id: str, duplicate: str
) -> str:
    problems = _id_problems("unit_id", unit)
    if kind not in INGESTIBLE_EVENT_TYPES:
        why = "impressions come from the exposures' slate_size; " * (kind == "impression")
        problems.append(_bad("type", f"{why}allowed: {', '.join(INGESTIBLE_EVENT_TYPES)}", kind))
    problems += _timestamp_problems(stamp)
    problems += _id_problems("item_id", item, required=False)
    if value and not math.isfinite(_float(value)):
        problems.append(_bad("value", "not a finite number", value))
    problems += _id_problems("event_id", event_id, required=False)
    if duplicate:
        problems.append(duplicate)
    return "; ".join(problems)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: a load allocates millions of acyclic rows, and its scans cost ~20%."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _sqlite_cache(conn: Connection) -> Iterator[None]:
    """Give SQLite a large page cache for the load, so index pages stay in memory; then restore."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    previous = int(raw.execute("PRAGMA cache_size").fetchone()[0])
    raw.execute(f"PRAGMA cache_size={SQLITE_CACHE_KIB}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA cache_size={previous}")


class _Load:
    """Streams validated rows into the open transaction chunk by chunk; stops writing at a bad row.

    After the first bad row the rest of the input is still checked, so one run reports
    every bad row; the caller then raises and the transaction rolls back.
    """

    def __init__(
        self, conn: Connection, experiment_id: int, config: ExperimentConfig, problems: _Problems
    ) -> None:
        self.conn = conn
        self.experiment_id = experiment_id
        self.key = config.key
        self.weights = {variant.key: variant.weight for variant in config.variants}
        self.problems = problems
        self.units: set[str] = set()
        self.n_exposures = 0
        self.n_events = 0
        self.n_duplicates = 0
        self.n_duplicate_exposures = 0

    def exposures(self, log: _CsvLog) -> None:
        if not log.columns:  # an empty file
            return
        i_unit, i_variant, i_ts = (log.columns[c] for c in EXPOSURE_COLUMNS)
        i_prop, i_scene, i_slate = (log.columns.get(c) for c in EXPOSURE_OPTIONAL_COLUMNS)
        weights, add_unit = self.weights, self.units.add
        chunk: list[_ExposureRow] = []
        for line, row in log.rows(self.problems):
            unit = row[i_unit].strip()
            variant = row[i_variant].strip()
            stamp = row[i_ts].strip()
            raw_propensity = row[i_prop].strip() if i_prop is not None else ""
            scene = row[i_scene].strip() if i_scene is not None else ""
            raw_slate_size = row[i_slate].strip() if i_slate is not None else ""
            weight = weights.get(variant)
            ts = _seconds(stamp)
            # An unknown variant has no weight; 0.0 then fails the propensity check below.
            propensity = _float(raw_propensity) if raw_propensity else (weight or 0.0)
            slate_size = _int(raw_slate_size) if raw_slate_size else 0
            if (
                0 < len(unit) <= MAX_ID_LENGTH
                and weight is not None
                and ts is not None
                and 0.0 < propensity <= 1.0
                and len(scene) <= MAX_SCENE_LENGTH
                and 0 <= slate_size <= MAX_SLATE_SIZE
            ):
                add_unit(unit)
                chunk.append((variant, unit, ts, propensity, scene or None, slate_size))
                if len(chunk) >= CHUNK_ROWS:
                    self._write_exposures(chunk)
            else:
                what = _exposure_problems(
                    unit, variant, stamp, raw_propensity, scene, raw_slate_size, weights
                )
                self.problems.add(log.name, line, what)
        self._write_exposures(chunk)

    def _write_exposures(self, chunk: list[_ExposureRow]) -> None:
        if chunk and not self.problems.count:
            stamps = seconds_to_sql([row[2] for row in chunk])
            stored = _stored_exposures(self.conn, self.experiment_id, {row[1] for row in chunk})
            fresh: list[_ExposureRow] = []
            for row, stamp in zip(chunk, stamps, strict=True):
                key = (row[1], row[0], stamp)
                if key in stored:
                    self.n_duplicate_exposures += 1
                else:
                    stored.add(key)  # identical rows within the load count once too
                    fresh.append(row)
            chunk[:] = fresh
        if chunk and not self.problems.count:
            variants, units, seconds, propensities, scenes, slate_sizes = zip(*chunk, strict=True)
            self.n_exposures += bulk_insert(
                self.conn,
                "exposures",
                {
                    # Reserved like the API's writer does, so a running server's ids never clash.
                    "id": reserve_ids(self.conn, "exposures", len(chunk)),
                    "experiment_id": [self.experiment_id] * len(chunk),
                    "variant": variants,
                    "unit_id": units,
                    "ts": seconds_to_sql(seconds),
                    "propensity": propensities,
                    "scene": scenes,
                    "slate_size": slate_sizes,
                },
            )
        chunk.clear()

    def events(self, log: _CsvLog) -> None:
        if not log.columns:  # an empty file
            return
        i_unit, i_type, i_ts = (log.columns[c] for c in EVENT_COLUMNS)
        i_event, i_item, i_value = (log.columns.get(c) for c in EVENT_OPTIONAL_COLUMNS)
        allowed = frozenset(INGESTIBLE_EVENT_TYPES)
        key, add_unit = self.key, self.units.add
        same_content = "" if i_event is not None else " (same content gives the same derived id)"
        first_line: dict[str, int] = {}
        chunk: list[_EventRow] = []
        for line, row in log.rows(self.problems):
            unit = row[i_unit].strip()
            kind = row[i_type].strip()
            stamp = row[i_ts].strip()
            item = row[i_item].strip() if i_item is not None else ""
            raw_value = row[i_value].strip() if i_value is not None else ""
            event_id = row[i_event].strip() if i_event is not None else ""
            ts = _seconds(stamp)
            value = _float(raw_value) if raw_value else None
            valid = (
                0 < len(unit) <= MAX_ID_LENGTH
                and kind in allowed
                and len(item) <= MAX_ID_LENGTH
                and (value is None or math.isfinite(value))
                and len(event_id) <= MAX_ID_LENGTH
            )
            if valid and ts is not None and not event_id:
                event_id = _derived_event_id(key, ts, unit, kind, stamp, item, raw_value)
            duplicate = ""
            if event_id and len(event_id) <= MAX_ID_LENGTH:
                earlier = first_line.setdefault(event_id, line)
                if earlier != line:
                    why = f"duplicate of line {earlier}{same_content}"
                    duplicate = _bad("event_id", why, event_id)
            if valid and ts is not None and not duplicate:
                add_unit(unit)
                chunk.append((event_id, unit, kind, item or None, value, ts))
                if len(chunk) >= CHUNK_ROWS:
                    self._write_events(chunk)
            else:
                what = _event_problems(unit, kind, stamp, item, raw_value, event_id, duplicate)
                self.problems.add(log.name, line, what)
        self._write_events(chunk)

    def _write_events(self, chunk: list[_EventRow]) -> None:
        if chunk and not self.problems.count:
            # In event_id order, lookups and inserts walk the unique index's pages in order.
            chunk.sort(key=itemgetter(0))
            stored = _stored_event_ids(self.conn, [row[0] for row in chunk])
            fresh = [row for row in chunk if row[0] not in stored] if stored else chunk
            self.n_duplicates += len(chunk) - len(fresh)
            if fresh:
                event_ids, units, kinds, items, values, seconds = zip(*fresh, strict=True)
                self.n_events += bulk_insert(
                    self.conn,
                    "events",
                    {
                        "event_id": event_ids,
                        "experiment_id": [self.experiment_id] * len(fresh),
                        "unit_id": units,
                        "type": kinds,
                        "item_id": items,
                        "value": values,
                        "ts": seconds_to_sql(seconds),
                    },
                )
        chunk.clear()


def _stored_event_ids(conn: Connection, event_ids: Sequence[str]) -> set[str]:
    """Which of these event ids the database already holds, asked a chunk of ids at a time.

    The driver's cursor is used directly, as in `bulk_insert`: SQLAlchemy's expansion of
    a 900-value IN list per query costs more than the lookups themselves.
    """
    stored: set[str] = set()
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            for start in range(0, len(event_ids), PG_ID_QUERY_CHUNK):
                ids = list(event_ids[start : start + PG_ID_QUERY_CHUNK])
                cursor.execute("SELECT event_id FROM events WHERE event_id = ANY(%s)", (ids,))
                stored.update(row[0] for row in cursor.fetchall())
        else:
            for start in range(0, len(event_ids), ID_QUERY_CHUNK):
                ids = list(event_ids[start : start + ID_QUERY_CHUNK])
                marks = ", ".join("?" * len(ids))
                cursor.execute(f"SELECT event_id FROM events WHERE event_id IN ({marks})", ids)
                stored.update(row[0] for row in cursor.fetchall())
    finally:
        cursor.close()
    return stored


def _stored_exposures(
    conn: Connection, experiment_id: int, units: set[str]
) -> set[tuple[str, str, str]]:
    """(unit, variant, timestamp text) of the experiment's stored exposures of these units."""
    found: set[tuple[str, str, str]] = set()
    ordered = sorted(units)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            for start in range(0, len(ordered), PG_ID_QUERY_CHUNK):
                cursor.execute(
                    "SELECT unit_id, variant, ts FROM exposures "
                    "WHERE experiment_id = %s AND unit_id = ANY(%s)",
                    (experiment_id, ordered[start : start + PG_ID_QUERY_CHUNK]),
                )
                found.update(
                    (unit, variant, ts.strftime("%Y-%m-%d %H:%M:%S.%f"))
                    for unit, variant, ts in cursor.fetchall()
                )
        else:
            for start in range(0, len(ordered), ID_QUERY_CHUNK):
                ids = ordered[start : start + ID_QUERY_CHUNK]
                marks = ", ".join("?" * len(ids))
                cursor.execute(
                    "SELECT unit_id, variant, ts FROM exposures "
                    f"WHERE experiment_id = ? AND unit_id IN ({marks})",
                    [experiment_id, *ids],
                )
                found.update((unit, variant, ts) for unit, variant, ts in cursor.fetchall())
    finally:
        cursor.close()
    return found
