"""Change signals of experiment state across server processes: a counter per database.

Writers of experiment state (create, update, status, model switches) signal the change
with `experiment_changed(session, key)` inside their transaction, or with
`experiments_changed(engine, keys)` after their commit. Readers (each API worker) open a
`ChangeFeed` once and ask it on every request whether anything they cached changed since
they read it; that check never touches the database.

- SQLite file: an 8-byte counter in `<db file>.experiment-changes`, bumped under `flock`
  after the commit and memory-mapped by every reader (one read of the mapped bytes per
  check). It does not say which experiment changed: a bump concerns them all.
- PostgreSQL: `NOTIFY abplatform_experiments, '<key>'` in the writer's transaction
  (delivered at its commit); each reader process has one LISTEN thread on its own
  connection that counts notifications per key. After a reconnect everything counts as
  changed, since notifications sent meanwhile are lost.
- Anything else (in-memory SQLite): no feed; readers rely on their TTL.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Pool, event, text
from sqlalchemy.orm import Session

CHANNEL = "abplatform_experiments"
"""The PostgreSQL notification channel; the payload is the key ('' for every experiment)."""
_NOTIFY = text("SELECT pg_notify(:channel, :key)")
# Connection.info (per DBAPI connection): the SQLite counter to bump at commit, and once
# committed, at the connection's return to the pool.
_PENDING = "abplatform_experiment_change"
_COMMITTED = "abplatform_experiment_change_committed"
_COUNTER = struct.Struct("<Q")
RECONNECT_FIRST_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
POLL_SECONDS = 0.2  # how often the LISTEN thread looks up from waiting, to notice close()

log = logging.getLogger(__name__)


def counter_path(database: str | None) -> Path | None:
    """The change-counter file beside a SQLite database file (None: in memory)."""
    if not database or database == ":memory:":
        return None
    path = Path(database).resolve()
    return path.with_name(path.name + ".experiment-changes")


def _sqlite_counter(engine: Engine) -> Path | None:
    if engine.dialect.name != "sqlite":
        return None
    return counter_path(engine.url.database)


def experiment_changed(session: Session, key: str) -> None:
    """Signal, once `session`'s transaction commits, that experiment `key` changed.

    PostgreSQL: a NOTIFY in the transaction (delivered at commit, dropped on rollback).
    SQLite: the counter file is bumped when the committed connection goes back to the pool
    (nothing on rollback); that holds for a session bound to the caller's connection too.
    """
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": CHANNEL, "key": key})
        return
    path = _sqlite_counter(conn.engine)
    if path is not None:
        conn.info[_PENDING] = path


def experiments_changed(engine: Engine, keys: list[str] | None = None) -> None:
    """Signal, after their commit, that these experiments changed (None: every one).

    For writers outside a session that used `experiment_changed` (e.g. a model promotion
    that committed on its own connection): every server process re-reads them.
    """
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for key in [""] if keys is None else keys:
                conn.execute(_NOTIFY, {"channel": CHANNEL, "key": key})
        return
    path = _sqlite_counter(engine)
    if path is not None:
        bump(path)


def bump(path: Path) -> int:
    """Add one to the counter file (created if missing) under `flock`; returns the new value.

    A failure is logged, not raised: the change is committed, and readers still see it
    within their TTL.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        log.warning("cannot signal an experiment change in %s: %s", path, exc)
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, _COUNTER.size, 0)
        value = (_COUNTER.unpack(raw)[0] if len(raw) == _COUNTER.size else 0) + 1
        os.pwrite(fd, _COUNTER.pack(value), 0)
        return value
    except OSError as exc:
        log.warning("cannot signal an experiment change in %s: %s", path, exc)
        return 0
    finally:
        os.close(fd)  # releases the lock


@event.listens_for(Engine, "commit")
def _committing(conn: Connection) -> None:
    """A signalled change is committed (this fires just before the DBAPI commit) ..."""
    path = conn.info.pop(_PENDING, None)
    if path is not None:
        conn.info[_COMMITTED] = path


@event.listens_for(Engine, "rollback")
def _rolling_back(conn: Connection) -> None:
    """A rolled-back change is no change."""
    conn.info.pop(_PENDING, None)


@event.listens_for(Pool, "checkin")
def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    """... and bumped once the connection is back in the pool, after its commit finished.

    Bumped earlier, a reader could re-read before the commit and keep the old state at
    the new version.
    """
    path = record.info.pop(_COMMITTED, None) if record is not None else None
    if path is not None:
        bump(path)


class ChangeFeed(Protocol):
    """What a reader asks per request: versions of the changes it has been told of."""

    def version(self) -> int:
        """The current version; take it before reading an experiment, keep it with the read."""
        ...

    def changed_at(self, key: str) -> int:
        """The version of the latest change that may concern `key` (a read is stale if its
        version is lower)."""
        ...

    def close(self) -> None:
        """Stop watching (unmap the counter, end the LISTEN thread)."""
        ...


class NoFeed:
    """No signal (in-memory SQLite): nothing counts as changed; readers rely on their TTL."""

    def version(self) -> int:
        """Always 0."""
        return 0

    def changed_at(self, key: str) -> int:
        """Always 0."""
        return 0

    def close(self) -> None:
        """Nothing to close."""


class CounterFeed:
    """The SQLite counter file, memory-mapped: a check is one read of 8 mapped bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size < _COUNTER.size:
                os.ftruncate(fd, _COUNTER.size)  # zeros: version 0
            self._map = mmap.mmap(fd, _COUNTER.size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            # Explicitly: the mapping holds a duplicate of `fd`, which would keep the lock.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)  # the mapping stays valid

    def version(self) -> int:
        """The counter as it is in the file now."""
        value: int = _COUNTER.unpack_from(self._map, 0)[0]
        return value

    def changed_at(self, key: str) -> int:
        """The counter: a bump concerns every experiment."""
        value: int = _COUNTER.unpack_from(self._map, 0)[0]
        return value

    def close(self) -> None:
        """Unmap the counter."""
        self._map.close()


class NotifyFeed:
    """PostgreSQL LISTEN on `CHANNEL` in a thread with its own connection, reconnecting.

    Each notification takes the next version and records it for its key ('' for all);
    each (re)connection records a version for every key, since notifications sent while
    no connection listened are lost.
    """

    def __init__(self, conninfo: str, connect_timeout: float = 3.0) -> None:
        self._conninfo = conninfo
        self._connect_timeout = max(1, round(connect_timeout))
        self._version = 0
        self._all = 0  # version of the latest change of every experiment
        self._keys: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="experiment-changes", daemon=True)
        self._thread.start()

    def version(self) -> int:
        """The number of changes (and reconnections) seen so far."""
        return self._version

    def changed_at(self, key: str) -> int:
        """The version of the latest notification for `key` or for every experiment."""
        return max(self._all, self._keys.get(key, 0))

    def close(self) -> None:
        """End the LISTEN thread (within `POLL_SECONDS`)."""
        self._closed.set()
        self._thread.join(timeout=5.0)

    def _changed(self, key: str) -> None:
        with self._lock:
            version = self._version + 1
            if key:
                self._keys[key] = version
            else:
                self._all = version
            self._version = version

    def _run(self) -> None:
        wait = RECONNECT_FIRST_SECONDS
        while not self._closed.is_set():
            try:
                self._listen()
                wait = RECONNECT_FIRST_SECONDS
            except Exception as exc:  # the database is away: try again, backing off
                if self.listening.is_set():
                    log.warning("experiment changes: LISTEN connection lost: %s", exc)
                self.listening.clear()
                self._closed.wait(wait)
                wait = min(wait * 2, RECONNECT_MAX_SECONDS)

    def _listen(self) -> None:
        import psycopg

        keepalive: dict[str, Any] = {
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        with psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_timeout, **keepalive
        ) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._changed("")  # missed notifications: everything may have changed
            if not self.listening.is_set():
                log.info("experiment changes: listening on %s", CHANNEL)
            self.listening.set()
            while not self._closed.is_set():
                for notify in conn.notifies(timeout=POLL_SECONDS):
                    self._changed(notify.payload)


def open_feed(engine: Engine, connect_timeout: float = 3.0) -> ChangeFeed:
    """The change feed of `engine`'s database (see the module docstring)."""
    if engine.dialect.name == "postgresql":
        url = engine.url.set(drivername="postgresql")
        return NotifyFeed(url.render_as_string(hide_password=False), connect_timeout)
    path = _sqlite_counter(engine)
    if path is None:
        return NoFeed()
    try:
        return CounterFeed(path)
    except OSError as exc:
        log.warning("experiment changes: no counter at %s (%s); relying on the TTL", path, exc)
        return NoFeed()
