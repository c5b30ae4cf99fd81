"""Set-based bulk writes: executemany on SQLite, COPY on PostgreSQL, never an ORM row loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    start = conn.execute(text(f'SELECT COALESCE(MAX(id), 0) + 1 FROM "{table}"')).scalar_one()
    return np.arange(int(start), int(start) + n, dtype=np.int64)
