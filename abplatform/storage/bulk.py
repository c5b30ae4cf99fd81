"""Set-based bulk writes: multi-row INSERTs on SQLite, COPY on PostgreSQL, never an ORM row loop."""

from __future__ import annotations

import fcntl
import gc
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, text

Column = Sequence[Any] | npt.NDArray[Any]


def seconds_to_sql(seconds: npt.ArrayLike) -> list[str]:
    """Unix seconds -> 'YYYY-MM-DD HH:MM:SS.ffffff' strings, the format both databases read."""
    stamps = np.asarray(seconds, dtype="datetime64[s]").astype("datetime64[us]")
    return [s.replace("T", " ") for s in np.datetime_as_string(stamps, unit="us").tolist()]


def as_list(values: Column) -> list[Any]:
    """A column as a list of Python values (NumPy scalars converted)."""
    if isinstance(values, np.ndarray):
        return values.tolist()  # type: ignore[no-any-return]
    return list(values)


def bulk_insert(conn: Connection, table: str, columns: Mapping[str, Column]) -> int:
    """Insert parallel columns into `table` inside the connection's transaction; return rows."""
    names = list(columns)
    lists = [as_list(columns[name]) for name in names]
    n_rows = len(lists[0]) if lists else 0
    for name, values in zip(names, lists, strict=True):
        if len(values) != n_rows:
            raise ValueError(f"column {name!r} has {len(values)} values, expected {n_rows}")
    if n_rows == 0:
        return 0
    rows = zip(*lists, strict=True)
    if conn.dialect.name == "postgresql":
        _copy(conn, table, names, rows)
    else:
        _insert_sqlite(conn, table, names, rows, None)
    return n_rows


def insert_rows(
    conn: Connection,
    table: str,
    names: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    conflict_key: str | None = None,
    json_columns: Sequence[str] = (),
) -> None:
    """Insert row tuples: multi-row INSERTs on SQLite, COPY on PostgreSQL.

    With `conflict_key`, rows whose key is already stored are skipped (ON CONFLICT DO
    NOTHING; on PostgreSQL an executemany, where `json_columns` are cast from text).
    """
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        _insert_sqlite(conn, table, names, rows, conflict_key)
    elif conflict_key is None:
        _copy(conn, table, names, rows)
    else:
        values = ", ".join(f"CAST(:{n} AS JSON)" if n in json_columns else f":{n}" for n in names)
        statement = text(
            f'INSERT INTO "{table}" ({_quoted(names)}) VALUES ({values}) '
            f"ON CONFLICT ({conflict_key}) DO NOTHING"
        )
        conn.execute(statement, [dict(zip(names, row, strict=True)) for row in rows])


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _copy(
    conn: Connection, table: str, names: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f'COPY "{table}" ({_quoted(names)}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(row)
    cursor.close()


# Rows per multi-row INSERT on SQLite (10 columns x 256 = 2,560 bound values, far below
# SQLite's 32,766); shorter tails go in power-of-two statements, so few statements exist.
SQLITE_CHUNK_VALUES = 2048
_sqlite_inserts: dict[tuple[str, tuple[str, ...], int, str | None], str] = {}


def _insert_sqlite(
    conn: Connection,
    table: str,
    names: Sequence[str],
    rows: Iterable[tuple[Any, ...]],
    conflict_key: str | None,
) -> None:
    """Insert rows with multi-row INSERT statements: one driver call (one GIL hand-off) per
    chunk instead of one per row, which a busy event loop thread would make wait each time
    (and less CPU than executemany for the simulator's rows: see bench/README.md)."""
    width = len(names)
    chunk = max(1, SQLITE_CHUNK_VALUES // width)
    raw: Any = conn.connection.driver_connection
    cursor = raw.cursor()
    pending = iter(rows)
    try:
        while batch := list(islice(pending, chunk)):
            start = 0
            while start < len(batch):
                left = len(batch) - start
                n = chunk if left >= chunk else 1 << (left.bit_length() - 1)
                values = [value for row in batch[start : start + n] for value in row]
                cursor.execute(_sqlite_insert(table, names, n, conflict_key), values)
                start += n
    finally:
        cursor.close()


def _sqlite_insert(table: str, names: Sequence[str], n: int, conflict_key: str | None) -> str:
    cache_key = (table, tuple(names), n, conflict_key)
    sql = _sqlite_inserts.get(cache_key)
    if sql is None:
        marks = "(" + ", ".join("?" * len(names)) + ")"
        sql = f'INSERT INTO "{table}" ({_quoted(names)}) VALUES ' + ", ".join([marks] * n)
        if conflict_key is not None:
            sql += f" ON CONFLICT ({conflict_key}) DO NOTHING"
        _sqlite_inserts[cache_key] = sql
    return sql


def reserve_ids(conn: Connection, table: str, n: int) -> npt.NDArray[np.int64]:
    """Reserve `n` primary-key values of `table` for rows about to be bulk-inserted."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table, "n": n},
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    top = int(conn.execute(text(f'SELECT COALESCE(MAX(id), 0) FROM "{table}"')).scalar_one())
    mark = id_mark_path(conn.engine.url.database, table)
    start = top + 1 if mark is None else reserve_above_mark(mark, top, n)
    return np.arange(start, start + n, dtype=np.int64)


def id_mark_path(database: str | None, table: str) -> Path | None:
    """The high-water-mark file of `table`'s reserved ids beside a SQLite file, if any.

    Only exposures are reserved ahead of insertion (by the API's writer processes), so only
    they have a mark; every process reserving exposure ids on the file goes through it.
    """
    if table != "exposures" or not database or database == ":memory:":
        return None
    path = Path(database).resolve()
    return path.with_name(path.name + ".exposure-ids")


def reserve_above_mark(mark: Path, top: int, n: int) -> int:
    """First of `n` ids above both `top` (MAX(id)) and the mark file, which moves past them.

    `flock` on the mark makes this atomic across processes sharing the SQLite file.
    """
    fd = os.open(mark, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 64, 0).strip()
        start = max(int(raw or b"0"), top) + 1
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(start + n - 1).encode("ascii"), 0)
    finally:
        os.close(fd)  # releases the lock
    return start


SQLITE_CACHE_KIB = -131_072  # negative: KiB, i.e. 128 MiB of page cache while loading


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: a load allocates millions of acyclic rows, and its scans cost ~20%."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def sqlite_cache(conn: Connection) -> Iterator[None]:
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
