"""Buffered writer: exposures, impressions and events go to SQL in group commits.

Requests hand their rows to `BufferedWriter.submit` and await the returned future,
which resolves only after the transaction holding their rows has committed (so a 2xx
means durable). One writer thread drains everything queued since its last commit
into the next transaction: under load many requests share one commit, idle latency
is one commit. The queue is bounded in rows; a full queue raises `WriterFull`
(HTTP 503 + Retry-After), it never drops rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert
from sqlalchemy.dialects import postgresql, sqlite

from abplatform.storage import models as m
from abplatform.storage.bulk import bulk_insert

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 200_000
DEFAULT_FLUSH_ROWS = 20_000


class WriterFull(Exception):
    """The write queue is at its bound; the client should retry later."""


class WriteFailed(Exception):
    """The database refused the rows (rolled back, nothing written); the client may retry."""


class WriterClosed(Exception):
    """The writer is shutting down and accepts no more rows."""


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


@dataclass(frozen=True)
class WriteResult:
    """What a submission wrote: exposure ids in order, new events, duplicate events."""

    exposure_ids: tuple[int, ...]
    new_events: int
    duplicate_events: int


@dataclass
class _Job:
    exposures: Sequence[ExposureRow]
    events: Sequence[EventRow]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[WriteResult]
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = len(self.exposures) + len(self.events)


def _resolve(future: asyncio.Future[WriteResult], result: WriteResult | BaseException) -> None:
    if future.done():  # the request was cancelled (client gone); its rows are written anyway
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class BufferedWriter:
    """Group-committing writer thread with a bounded queue (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        flush_rows: int = DEFAULT_FLUSH_ROWS,
    ) -> None:
        self.engine = engine
        self.max_rows = max_rows
        self.flush_rows = flush_rows
        self._jobs: deque[_Job] = deque()
        self._pending_rows = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="abplatform-writer", daemon=True)
        self.commits = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    @property
    def pending_rows(self) -> int:
        """Rows queued and not yet committed."""
        return self._pending_rows

    def submit(
        self, exposures: Sequence[ExposureRow], events: Sequence[EventRow]
    ) -> asyncio.Future[WriteResult]:
        """Queue rows; the future resolves after their commit. Raises WriterFull/WriterClosed."""
        loop = asyncio.get_running_loop()
        job = _Job(exposures, events, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise WriterClosed("the server is shutting down")
            if self._pending_rows and self._pending_rows + job.rows > self.max_rows:
                raise WriterFull(f"{self._pending_rows} rows are waiting to be written")
            self._jobs.append(job)
            self._pending_rows += job.rows
            self._cond.notify()
        return job.future

    async def close(self) -> None:
        """Stop accepting rows, write everything queued, and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None  # closed and drained
            jobs: list[_Job] = []
            rows = 0
            while self._jobs and (not jobs or rows + self._jobs[0].rows <= self.flush_rows):
                job = self._jobs.popleft()
                jobs.append(job)
                rows += job.rows
            return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            outcomes = self._write_isolated(jobs)
            with self._cond:
                self._pending_rows -= sum(job.rows for job in jobs)
            for job, outcome in zip(jobs, outcomes, strict=True):
                # RuntimeError: the loop is closed, nobody is waiting any more.
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(_resolve, job.future, outcome)

    def _write_isolated(self, jobs: list[_Job]) -> list[WriteResult | BaseException]:
        """One commit for the group; if it fails, each submission alone, so one bad
        submission cannot fail the others (a failed transaction wrote nothing)."""
        try:
            return list(self._write(jobs))
        except Exception as exc:
            if len(jobs) == 1:
                log.exception("writing a submission of %d rows failed", jobs[0].rows)
                return [WriteFailed(f"the database refused the rows: {type(exc).__name__}")]
        return [self._write_isolated([job])[0] for job in jobs]

    def _write(self, jobs: list[_Job]) -> list[WriteResult]:
        self.commits += 1
        with self.engine.begin() as conn:
            exposure_ids = _write_exposures(conn, [e for job in jobs for e in job.exposures])
            counts = _write_events(conn, [job.events for job in jobs])
        results = []
        start = 0
        for job, (new, duplicates) in zip(jobs, counts, strict=True):
            end = start + len(job.exposures)
            results.append(WriteResult(tuple(exposure_ids[start:end]), new, duplicates))
            start = end
        return results


def _write_exposures(conn: Connection, rows: list[ExposureRow]) -> list[int]:
    if not rows:
        return []
    table: Table = m.Exposure.__table__  # type: ignore[assignment]
    # Ids come from the database inside this transaction (one statement for the whole
    # group), so concurrent workers and processes never collide and no request waits on it.
    statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    ids = list(
        conn.execute(
            statement,
            [
                {
                    "experiment_id": r.experiment_id,
                    "variant": r.variant,
                    "unit_id": r.unit_id,
                    "ts": r.ts,
                    "propensity": r.propensity,
                    "bucket": r.bucket,
                    "scene": r.scene,
                    "slate_size": len(r.items),
                    "context": r.context,
                }
                for r in rows
            ],
        ).scalars()
    )
    exposure_col: list[int] = []
    position_col: list[int] = []
    item_col: list[str] = []
    for exposure_id, row in zip(ids, rows, strict=True):
        for position, item in enumerate(row.items):
            exposure_col.append(exposure_id)
            position_col.append(position)
            item_col.append(item)
    bulk_insert(
        conn,
        "impressions",
        {"exposure_id": exposure_col, "position": position_col, "item_id": item_col},
    )
    return ids


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
    table: Table = m.Event.__table__  # type: ignore[assignment]
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    # Sentinel values name every parameter after its (row, column).
    rows = [{c: f"{i}:{j}" for j, c in enumerate(EVENT_COLUMNS)} for i in range(n_rows)]
    statement = (
        dialect_insert(table).values(rows).on_conflict_do_nothing(index_elements=[table.c.event_id])
    )
    compiled = statement.compile(dialect=conn.dialect)
    names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.params)
    where = tuple((int(r), int(c)) for r, c in (str(compiled.params[n]).split(":") for n in names))
    cached = (str(compiled), where, names if not compiled.positional else None)
    _event_inserts[cache_key] = cached
    return cached


def _write_events(conn: Connection, batches: list[Sequence[EventRow]]) -> list[tuple[int, int]]:
    """Insert each batch ON CONFLICT DO NOTHING; per batch (new, duplicates).

    Batches run one after the other in the same transaction, so an id sent twice (in one
    batch, or by two requests of the same group) is new once and a duplicate after. Each
    batch is one multi-row statement whose row count is the number of rows inserted.
    """
    sqlite_times = conn.dialect.name == "sqlite"
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
                    # The text SQLAlchemy's SQLite DateTime stores; PostgreSQL takes datetimes.
                    e.ts.isoformat(" ", "microseconds") if sqlite_times else e.ts,
                )
                for e in batch
            ]
            values = [rows[r][c] for r, c in where]
            params: Any = values if names is None else dict(zip(names, values, strict=True))
            cursor.execute(sql, params)
            new = int(cursor.rowcount)
            counts.append((new, len(batch) - new))
    finally:
        cursor.close()
    return counts
