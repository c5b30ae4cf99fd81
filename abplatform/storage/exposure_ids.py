"""Exposure ids reserved ahead of the writes that use them (server processes, simulate, ingest)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from abplatform.errors import DatabaseUnavailable
from abplatform.storage import models as m
from abplatform.storage.bulk import id_mark_path, reserve_above_mark, reserve_ids
from abplatform.storage.db import is_unavailable

ID_BLOCK = 1024
"""Exposure ids a server process reserves at a time."""


def reserve_exposure_ids(conn: Connection, n: int) -> npt.NDArray[np.int64]:
    """Ids for `n` exposures about to be written, never ones a server process reserved."""
    return reserve_ids(conn, "exposures", n)


class ExposureIds:
    """Exposure ids reserved in blocks before they are needed, so assigning never waits.

    PostgreSQL: `nextval` of the id sequence, a block per round trip. SQLite: the next id
    above both MAX(id) and a high-water mark kept in `<db file>.exposure-ids` under `flock`,
    so several server processes on one file never hand out the same id; `simulate` and
    `ingest` reserve through the same mark (`reserve_exposure_ids`).
    """

    def __init__(self, engine: Engine, block: int = ID_BLOCK) -> None:
        self.engine = engine
        self.block = block
        self._free: deque[range] = deque()
        self._available = 0
        self._lock = threading.Lock()
        self._refilling = False
        self._mark: Path | None = None
        if engine.dialect.name == "sqlite":
            self._mark = id_mark_path(engine.url.database, "exposures")
        self._local_next = 0  # in-memory SQLite: one process, ids above MAX(id)
        # The last reservation failed for want of the database (cleared by the next success).
        self.unreachable = False

    def take(self, n: int) -> list[int]:
        """`n` fresh ids; reserves a block synchronously only if the reserve ran dry.

        While the database is away the ids left keep being handed out; once too few are
        left for `n`, DatabaseUnavailable (no id taken). After a failed reservation no
        request waits on the database: the writer thread retries until one succeeds.
        """
        if (self.unreachable or self._refilling) and self._available < n:
            # Never wait in a request for a reservation that failed or hangs in a thread.
            raise DatabaseUnavailable("the database is unreachable: no exposure ids are left")
        ids: list[int] = []
        while len(ids) < n:
            with self._lock:
                while self._free and len(ids) < n:
                    first = self._free[0]
                    count = min(n - len(ids), len(first))
                    ids.extend(first[:count])
                    self._available -= count
                    if count == len(first):
                        self._free.popleft()
                    else:
                        self._free[0] = first[count:]
            if len(ids) < n:
                try:
                    self.refill(max(self.block, n - len(ids)))
                except DatabaseUnavailable:
                    with self._lock:  # all or nothing: the ids go back, in order
                        pieces = runs(ids)
                        self._free.extendleft(reversed(pieces))
                        self._available += len(ids)
                    raise
        return ids

    @property
    def low(self) -> bool:
        """Whether less than half a block is left (time to reserve the next one)."""
        return self._available < self.block // 2 and not self._refilling

    @property
    def available(self) -> int:
        """Ids reserved and not yet handed out."""
        return self._available

    def refill(self, n: int | None = None) -> None:
        """Reserve another block (called from a thread; one database round trip).

        Raises DatabaseUnavailable if the database is away (and `unreachable` stays true
        until a reservation succeeds).
        """
        self._refilling = True
        try:
            fresh = self._reserve(n or self.block)
        except (DBAPIError, PoolTimeout) as exc:
            if isinstance(exc, DBAPIError) and not is_unavailable(exc):
                raise
            self.unreachable = True
            reason = type(getattr(exc, "orig", None) or exc).__name__
            raise DatabaseUnavailable(
                f"the database is unreachable ({reason}): reserving exposure ids failed"
            ) from exc
        finally:
            self._refilling = False
        self.unreachable = False
        with self._lock:
            self._free.extend(fresh)
            self._available += sum(len(run) for run in fresh)

    def _reserve(self, n: int) -> list[range]:
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as conn:
                ids = reserve_exposure_ids(conn, n).tolist()
            # nextval hands out increasing values, interleaved with other sessions': keep
            # the contiguous runs.
            return runs(ids)
        with self.engine.connect() as conn:
            top = int(conn.execute(select(func.coalesce(func.max(m.Exposure.id), 0))).scalar_one())
        if self._mark is None:
            start = max(top + 1, self._local_next)
            self._local_next = start + n
            return [range(start, start + n)]
        start = reserve_above_mark(self._mark, top, n)
        return [range(start, start + n)]


def runs(values: Sequence[int]) -> list[range]:
    """Increasing `values` as their contiguous runs."""
    runs: list[range] = []
    if not values:
        return runs
    start = previous = values[0]
    for value in values[1:]:
        if value != previous + 1:
            runs.append(range(start, previous + 1))
            start = value
        previous = value
    runs.append(range(start, previous + 1))
    return runs
