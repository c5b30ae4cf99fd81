"""Set-based bulk writes: executemany on SQLite, COPY on PostgreSQL, never an ORM row loop."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping, Sequence
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


def _as_list(values: Column) -> list[Any]:
    if isinstance(values, np.ndarray):
        return values.tolist()  # type: ignore[no-any-return]
    return list(values)


def bulk_insert(conn: Connection, table: str, columns: Mapping[str, Column]) -> int:
    """Insert parallel columns into `table` inside the connection's transaction; return rows."""
    names = list(columns)
    lists = [_as_list(columns[name]) for name in names]
    n_rows = len(lists[0]) if lists else 0
    for name, values in zip(names, lists, strict=True):
        if len(values) != n_rows:
            raise ValueError(f"column {name!r} has {len(values)} values, expected {n_rows}")
    if n_rows == 0:
        return 0
    raw = conn.connection.driver_connection
    quoted = ", ".join(f'"{name}"' for name in names)
    if conn.dialect.name == "postgresql":
        cursor = raw.cursor()  # type: ignore[union-attr]
        with cursor.copy(f'COPY "{table}" ({quoted}) FROM STDIN') as copy:
            for row in zip(*lists, strict=True):
                copy.write_row(row)
        cursor.close()
    else:
        marks = ", ".join("?" for _ in names)
        cursor = raw.cursor()  # type: ignore[union-attr]
        cursor.executemany(
            f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})', zip(*lists, strict=True)
        )
        cursor.close()
    return n_rows


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
