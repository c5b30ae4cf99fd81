"""Serving online features: each unit's fresh feature row, and a cache of computed slates.

`FeatureReader` answers "what are this unit's online features now" so that an assignment
never uses features older than the unit's last acknowledged event, on any worker:

- SQLite file: the slot file of `storage.feature_signals` says, without a database read,
  whether the unit's row changed since this process last read it (a slot of 0: it never
  had one); only then is the row read.
- PostgreSQL: the row is read on every request; requests arriving in one event-loop turn
  share one query (``unit_id = ANY(...)``) in one thread hop.

While the database is unreachable no event can be acknowledged; an assign then gets the
features this process read last for the unit (experiments are served from memory then too)
and its slate is neither taken from nor put in the cache.

`SlateCache` keeps computed slates by (experiment, variant, model, unit, scene, context,
k) together with the unit's feature version they were computed from: an entry is served
only for the same version (so a changed unit misses and is recomputed), for at most `ttl`
seconds, and at most `max_entries` are kept (least recently used dropped first).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Hashable
from functools import partial
from typing import Any

from sqlalchemy import Engine

from abplatform.api.outage import DatabaseHealth, unavailable
from abplatform.domain import OnlineFeatures
from abplatform.errors import DatabaseUnavailable
from abplatform.storage.db import is_unavailable
from abplatform.storage.feature_signals import FeatureSignals
from abplatform.storage.features import StoredRow, online_features, read_stored

FeatureKey = tuple[str, str]
READER_UNITS = 200_000
"""Units whose last read features a process keeps (SQLite; then the map starts afresh)."""


class FeatureReader:
    """Per process: each unit's current online features (see the module docstring)."""

    def __init__(
        self, engine: Engine, health: DatabaseHealth, signals: FeatureSignals | None
    ) -> None:
        self.engine = engine
        self.health = health
        self.signals = signals
        self.reads = 0  # rows read from the database
        self.checks = 0  # look-ups answered from the slot file alone
        self.outage_answers = 0  # look-ups answered from memory, the database away
        self._known: dict[FeatureKey, tuple[int, OnlineFeatures | None]] = {}
        # The last row read of each unit and its decoded features: an unchanged row (e.g. on
        # PostgreSQL, read on every request) is answered with the same object, not decoded.
        self._decoded: dict[FeatureKey, tuple[StoredRow, OnlineFeatures]] = {}
        self._pending: dict[FeatureKey, list[asyncio.Future[OnlineFeatures | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, catalogue: str, unit_id: str) -> tuple[OnlineFeatures | None, bool]:
        """The unit's online features as of now (None: it has none), and whether they are
        current: while the database is unreachable the features this process read last
        are answered (as experiments are served from memory then), flagged not current."""
        key = (catalogue, unit_id)
        seen = 0
        if self.signals is not None:
            seen = self.signals.value(catalogue, unit_id)
            if seen == 0:
                self.checks += 1
                return None, True
            known = self._known.get(key)
            if known is not None and known[0] == seen:
                self.checks += 1
                return known[1], True
        try:
            features = await self._read(key)
        except Exception as exc:
            if not unavailable(exc):
                raise
            self.outage_answers += 1
            last = self._known.get(key)
            return (last[1] if last is not None else None), False
        if len(self._known) >= READER_UNITS:
            self._known.clear()
        # The slot was read before the row: a change committed in between bumps the slot
        # again, so the next request reads once more (never the other way round).
        self._known[key] = (seen, features)
        return features, True

    def _read(self, key: FeatureKey) -> asyncio.Future[OnlineFeatures | None]:
        """The row of `key`, read together with the other rows asked for in this turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[OnlineFeatures | None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._start_reading)
        self._pending.setdefault(key, []).append(future)
        return future

    def _start_reading(self) -> None:
        task = asyncio.get_running_loop().create_task(self._read_pending())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_pending(self) -> None:
        pending, self._pending = self._pending, {}
        try:
            found = await self.health.call(partial(self._read_rows, list(pending)))
        except Exception as exc:
            for futures in pending.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for key, futures in pending.items():
            for future in futures:
                if not future.done():  # the client went away
                    future.set_result(found.get(key))

    def _read_rows(self, keys: list[FeatureKey]) -> dict[FeatureKey, OnlineFeatures]:
        by_catalogue: dict[str, list[str]] = {}
        for catalogue, unit in keys:
            by_catalogue.setdefault(catalogue, []).append(unit)
        out: dict[FeatureKey, OnlineFeatures] = {}
        try:
            with self.engine.connect() as conn:
                for catalogue, units in by_catalogue.items():
                    for unit, row in read_stored(conn, catalogue, units).items():
                        out[(catalogue, unit)] = self._decode((catalogue, unit), row)
        except Exception as exc:
            if is_unavailable(exc):  # the driver's own error (read with its cursor)
                raise DatabaseUnavailable(f"reading unit features failed: {exc}") from exc
            raise
        self.reads += len(keys)
        return out

    def _decode(self, key: FeatureKey, row: StoredRow) -> OnlineFeatures:
        known = self._decoded.get(key)
        if known is not None and known[0] == row:
            return known[1]
        if len(self._decoded) >= READER_UNITS:
            self._decoded.clear()
        features = online_features(*row)
        self._decoded[key] = (row, features)
        return features

    def close(self) -> None:
        """Unmap the slot file."""
        if self.signals is not None:
            self.signals.close()


class SlateCache:
    """Computed slates by request, served only for the feature version they came from."""

    def __init__(self, max_entries: int, ttl: float) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[Hashable, tuple[int, float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, version: int) -> Any | None:
        """The slate cached for `key` at feature `version` and younger than the TTL."""
        if self.max_entries <= 0:
            return None
        entry = self._entries.get(key)
        if entry is None or entry[0] != version or entry[1] < time.monotonic():
            self.misses += 1
            if entry is not None:
                del self._entries[key]  # another version, or expired: invalidated
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[2]

    def put(self, key: Hashable, version: int, slate: Any) -> None:
        """Keep a slate computed from feature `version`."""
        if self.max_entries <= 0:
            return
        self._entries[key] = (version, time.monotonic() + self.ttl, slate)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        """Forget every slate."""
        self._entries.clear()
