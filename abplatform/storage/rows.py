"""The exposures, impressions and events tables: their columns, row encoding and every write."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import numpy.typing as npt
import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    ScalarSelect,
    String,
    Table,
    bindparam,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from abplatform.storage import models as m
from abplatform.storage.bulk import (
    Column,
    bulk_insert,
    insert_rows,
    seconds_to_sql,
)
from abplatform.storage.exposure_ids import runs
from abplatform.storage.item_impressions import (
    add_impressions,
    count_columns,
    count_slates,
    delete_item_impressions,
)

EXPOSURE_COLUMNS = (
    "id",
    "experiment_id",
    "variant",
    "unit_id",
    "ts",
    "propensity",
    "bucket",
    "scene",
    "slate_size",
    "context",
    "weight_version",
    "model_id",
)
IMPRESSION_COLUMNS = ("exposure_id", "position", "item_id", "source")
EVENT_COLUMNS = (
    "event_id",
    "experiment_id",
    "exposure_id",
    "unit_id",
    "type",
    "item_id",
    "value",
    "ts",
)
"""The columns written of each table (`events.id` is the database's own)."""
EXPOSURES: Table = m.Base.metadata.tables["exposures"]
IMPRESSIONS: Table = m.Base.metadata.tables["impressions"]
EVENTS: Table = m.Base.metadata.tables["events"]

# Event ids or units per existence query: under old SQLite's 999 bound parameters; one array on
# PostgreSQL.
ID_QUERY_CHUNK = 900
PG_ID_QUERY_CHUNK = 10_000


@dataclass(frozen=True)
class ExposureRow:
    """An exposure to record with the item ids of its slate (one impression each)."""

    experiment_id: int
    variant: str
    unit_id: str
    ts: datetime
    propensity: float
    bucket: float | None
    scene: str | None
    context: dict[str, Any] | None
    items: tuple[str, ...]
    # The bandit weight version the decision was drawn from; None for hashed experiments.
    weight_version: int | None = None
    # The registered model that served the slate; None when fitted at start.
    model_id: int | None = None
    # Each item's retrieval source (a pipeline's); None when the strategy has none.
    sources: tuple[str | None, ...] | None = None


@dataclass(frozen=True)
class EventRow:
    """A feedback event to record once (by `event_id`)."""

    event_id: str
    experiment_id: int | None
    exposure_id: int | None
    unit_id: str
    type: str
    item_id: str | None
    value: float | None
    ts: datetime


def _sql_time(ts: datetime, sqlite_db: bool) -> datetime | str:
    """The text SQLAlchemy's SQLite DateTime stores; PostgreSQL takes datetimes."""
    return ts.isoformat(" ", "microseconds") if sqlite_db else ts


def _json_text(value: dict[str, Any] | None) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# Column-wise writes (simulator, CSV ingest): parallel columns, timestamps in Unix seconds.


@dataclass(frozen=True)
class ExposureColumns:
    """Exposures as parallel columns: timestamps in Unix seconds, `context` as JSON text.

    A column left None is stored NULL; `slate_size` may be one size for every exposure.
    """

    variant: Column
    unit_id: Column
    seconds: npt.ArrayLike
    propensity: Column
    scene: Column | None = None
    slate_size: int | Column = 0
    bucket: Column | None = None
    context: Column | None = None
    weight_version: Column | None = None
    model_id: Column | None = None


@dataclass(frozen=True)
class EventColumns:
    """Events as parallel columns (timestamps in Unix seconds); a None column is stored NULL."""

    event_id: Column
    unit_id: Column
    type: Column
    item_id: Column | None
    value: Column
    seconds: npt.ArrayLike
    exposure_id: Column | None = None
    position: Column | None = None  # each item's slate position, when the writer knows it


def insert_exposures(
    conn: Connection, ids: Column, experiment_id: int, exposures: ExposureColumns
) -> int:
    """Insert exposures with their reserved ids; return how many."""
    n = len(ids)
    sizes = exposures.slate_size
    slate_size = [sizes] * n if isinstance(sizes, int) else sizes
    fixed: dict[str, Column] = {"id": ids, "experiment_id": [experiment_id] * n}
    return _insert_columns(conn, "exposures", fixed, exposures, {"slate_size": slate_size})


def insert_impressions(
    conn: Connection,
    experiment_id: int,
    exposure_ids: Column,
    positions: Column,
    item_ids: Column,
    variants: Column,
    sources: Column | None = None,
) -> int:
    """Insert impressions as parallel columns (`variants`: each one's exposure's variant;
    `sources` None: every source NULL, and the column is not sent at all) and count them per
    item; return how many."""
    columns = {"exposure_id": exposure_ids, "position": positions, "item_id": item_ids}
    if sources is not None:
        columns["source"] = sources
    n = bulk_insert(conn, "impressions", columns)
    add_impressions(conn, experiment_id, count_columns(variants, item_ids, sources))
    return n


def insert_events(conn: Connection, experiment_id: int, events: EventColumns) -> int:
    """Insert events whose ids are known to be new; return how many."""
    fixed: dict[str, Column] = {"experiment_id": [experiment_id] * len(events.event_id)}
    return _insert_columns(conn, "events", fixed, events)


def _insert_columns(
    conn: Connection,
    table: str,
    fixed: dict[str, Column],
    given: ExposureColumns | EventColumns,
    replaced: dict[str, Column] | None = None,
) -> int:
    """Insert `fixed` and the columns `given` (None ones left out, so NULL); Unix `seconds`
    are stored as the `ts` text both databases read."""
    columns = dict(fixed)
    for field in fields(given):
        values = (replaced or {}).get(field.name, getattr(given, field.name))
        if values is None:
            continue
        if field.name == "seconds":
            columns["ts"] = seconds_to_sql(values)
        else:
            columns[field.name] = values
    return bulk_insert(conn, table, columns)


def delete_experiment_rows(conn: Connection, experiment_id: int) -> None:
    """Delete an experiment's exposures with their impressions, and its events."""
    exposure_ids = select(EXPOSURES.c.id).where(EXPOSURES.c.experiment_id == experiment_id)
    conn.execute(IMPRESSIONS.delete().where(IMPRESSIONS.c.exposure_id.in_(exposure_ids)))
    conn.execute(EXPOSURES.delete().where(EXPOSURES.c.experiment_id == experiment_id))
    conn.execute(EVENTS.delete().where(EVENTS.c.experiment_id == experiment_id))
    delete_item_impressions(conn, [experiment_id])


def stored_event_ids(conn: Connection, event_ids: Sequence[str]) -> set[str]:
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


def stored_exposures(
    conn: Connection, experiment_id: int, units: set[str]
) -> set[tuple[str, str, str]]:
    """(unit, variant, timestamp text) of the experiment's stored exposures of these units.

    The timestamp text is `seconds_to_sql`'s, so a row about to be written can be compared.
    """
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


# Row-wise writes (the API's buffered writer): typed rows, ids reserved ahead.


def write_exposures(
    conn: Connection, ids: Sequence[int], rows: Sequence[ExposureRow], *, idempotent: bool
) -> None:
    """Insert exposures with their reserved ids and one impression per slate item.

    Set-based: COPY on PostgreSQL, multi-row INSERTs on SQLite. `idempotent` (journal
    replay, retries after an unknown outcome) skips rows whose key is already stored.
    """
    if not rows:
        return
    sqlite_db = conn.dialect.name == "sqlite"
    exposures = [
        (
            exposure_id,
            r.experiment_id,
            r.variant,
            r.unit_id,
            _sql_time(r.ts, sqlite_db),
            r.propensity,
            r.bucket,
            r.scene,
            len(r.items),
            _json_text(r.context),
            r.weight_version,
            r.model_id,
        )
        for exposure_id, r in zip(ids, rows, strict=True)
    ]
    impressions = [
        (exposure_id, position, item, None if r.sources is None else r.sources[position])
        for exposure_id, r in zip(ids, rows, strict=True)
        for position, item in enumerate(r.items)
    ]
    # Counted per item only for exposures this call stores (a replay skips stored ones).
    stored = _stored_ids(conn, ids) if idempotent else set()
    new = [(i, r) for i, r in zip(ids, rows, strict=True) if i not in stored]
    by_experiment: dict[int, list[ExposureRow]] = {}
    for _, r in new:
        by_experiment.setdefault(r.experiment_id, []).append(r)
    insert_rows(
        conn,
        "exposures",
        EXPOSURE_COLUMNS,
        exposures,
        conflict_key="id" if idempotent else None,
        json_columns=("context",),
    )
    insert_rows(
        conn,
        "impressions",
        IMPRESSION_COLUMNS,
        impressions,
        conflict_key="exposure_id, position" if idempotent else None,
    )
    for experiment_id, stored_rows in by_experiment.items():
        counts = count_slates(
            [r.variant for r in stored_rows],
            [r.items for r in stored_rows],
            [r.sources for r in stored_rows],
        )
        add_impressions(conn, experiment_id, counts)


def _stored_ids(conn: Connection, ids: Sequence[int]) -> set[int]:
    """Which of these exposure ids are stored (asked per run of consecutive ids)."""
    stored: set[int] = set()
    for run in runs(sorted(set(ids))):
        stored.update(
            conn.execute(
                select(EXPOSURES.c.id).where(EXPOSURES.c.id.between(run.start, run.stop - 1))
            ).scalars()
        )
    return stored


_EventInsert = tuple[str, tuple[tuple[int, int], ...], tuple[str, ...] | None]
_event_inserts: dict[tuple[str, int], _EventInsert] = {}


def _event_insert(conn: Connection, n_rows: int) -> _EventInsert:
    """The dialect's multi-row INSERT ... ON CONFLICT (event_id) DO NOTHING for n rows.

    Compiled once per (dialect, n) from SQLAlchemy's sqlite/postgresql `insert`: the SQL,
    each bound parameter's (row, column) and, for positional styles, the parameter order.
    One statement per batch: one driver call (one GIL hand-off) instead of one per row.
    """
    cache_key = (conn.dialect.name, n_rows)
    cached = _event_inserts.get(cache_key)
    if cached is not None:
        return cached
    table = EVENTS
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    # Sentinel values name every parameter after its (row, column).
    rows: list[dict[str, Any]] = [
        {c: f"{i}:{j}" for j, c in enumerate(EVENT_COLUMNS)} for i in range(n_rows)
    ]
    exposure_col, item_col = EVENT_COLUMNS.index("exposure_id"), EVENT_COLUMNS.index("item_id")
    for i, row in enumerate(rows):
        row["position"] = _slate_position(f"{i}:{exposure_col}", f"{i}:{item_col}")
    statement = (
        dialect_insert(table).values(rows).on_conflict_do_nothing(index_elements=[table.c.event_id])
    )
    compiled = statement.compile(dialect=conn.dialect)
    names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.params)
    where = tuple((int(r), int(c)) for r, c in (str(compiled.params[n]).split(":") for n in names))
    cached = (str(compiled), where, names if not compiled.positional else None)
    _event_inserts[cache_key] = cached
    return cached


def _slate_position(exposure_sentinel: str, item_sentinel: str) -> ScalarSelect[Any]:
    """The first position of an item in an exposure's slate (NULL if not shown), in SQL."""
    return (
        select(func.min(IMPRESSIONS.c.position))
        .where(
            IMPRESSIONS.c.exposure_id == bindparam(None, exposure_sentinel, type_=BigInteger),
            IMPRESSIONS.c.item_id == bindparam(None, item_sentinel, type_=String),
        )
        .scalar_subquery()
    )


def write_events(
    conn: Connection, batches: list[Sequence[EventRow]], new: list[EventRow] | None = None
) -> list[tuple[int, int]]:
    """Insert each batch ON CONFLICT DO NOTHING; per batch (new, duplicates).

    With `new`, the statement also returns the ids it inserted and the inserted rows are
    appended to `new` (for the bandit's rewards).

    Each event's slate position is looked up in the same statement (`events.position`: its
    item's first position among its exposure's impressions, NULL if not found).

    Batches run one after the other in the same transaction, so an id sent twice (in one
    batch, or by two requests of the same group) is new once and a duplicate after. Each
    batch is one multi-row statement whose row count is the number of rows inserted.
    """
    if not any(batches):
        return [(0, 0)] * len(batches)
    sqlite_db = conn.dialect.name == "sqlite"
    raw: Any = conn.connection.driver_connection
    cursor = raw.cursor()
    counts = []
    try:
        for batch in batches:
            if not batch:
                counts.append((0, 0))
                continue
            sql, where, names = _event_insert(conn, len(batch))
            rows = [
                (
                    e.event_id,
                    e.experiment_id,
                    e.exposure_id,
                    e.unit_id,
                    e.type,
                    e.item_id,
                    e.value,
                    _sql_time(e.ts, sqlite_db),
                )
                for e in batch
            ]
            values = [rows[r][c] for r, c in where]
            params: Any = values if names is None else dict(zip(names, values, strict=True))
            if new is None:
                cursor.execute(sql, params)
                inserted = int(cursor.rowcount)
            else:
                cursor.execute(sql + " RETURNING event_id", params)
                stored = {row[0] for row in cursor.fetchall()}
                inserted = len(stored)
                for e in batch:  # an id twice in one batch was inserted once
                    if e.event_id in stored:
                        new.append(e)
                        stored.discard(e.event_id)
            counts.append((inserted, len(batch) - inserted))
    finally:
        cursor.close()
    return counts
