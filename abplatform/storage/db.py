"""Database URLs, engines, sessions and schema migrations."""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from abplatform.errors import AbplatformError

DEFAULT_URL = "sqlite:///abplatform.db"
URL_ENV = "ABPLATFORM_DATABASE_URL"
_PACKAGE = Path(__file__).resolve().parents[1]
# An installed wheel carries the migrations as `abplatform/_migrations`; a checkout has them
# in the top-level `alembic/` folder (see setup.py).
MIGRATIONS_DIR = (
    _PACKAGE / "_migrations"
    if (_PACKAGE / "_migrations" / "env.py").is_file()
    else _PACKAGE.parent / "alembic"
)


def resolve_url(url: str | None = None) -> str:
    """The database URL: the argument, else $ABPLATFORM_DATABASE_URL, else local SQLite."""
    chosen = url or os.environ.get(URL_ENV) or DEFAULT_URL
    for prefix in ("postgresql://", "postgres://"):
        if chosen.startswith(prefix):
            return "postgresql+psycopg://" + chosen[len(prefix) :]
    return chosen


def is_sqlite(engine: Engine) -> bool:
    """Whether the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite connection waits for a lock unless bounded (`bounded_lock_wait`)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers work during a long simulation write; NORMAL is durable in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache for bulk index work
    cursor.close()


def make_engine(
    url: str | None = None, *, connect_timeout: float | None = None, pool_timeout: float = 30.0
) -> Engine:
    """Create an engine for `url` (see `resolve_url`) with sensible per-dialect settings.

    PostgreSQL: a connection attempt gives up after `connect_timeout` seconds (None: the
    driver's default, no bound; the API server sets one so a paused or blackholed server
    cannot hang requests), a pool checkout after `pool_timeout`.
    """
    resolved = resolve_url(url)
    if resolved.startswith("sqlite"):
        engine = create_engine(resolved, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(
            resolved,
            pool_pre_ping=True,
            pool_timeout=pool_timeout,
            connect_args={}
            if connect_timeout is None
            else {"connect_timeout": max(1, math.ceil(connect_timeout))},
        )
    except ModuleNotFoundError as exc:
        raise AbplatformError(
            f"no database driver for {resolved.split(':', 1)[0]!r}: {exc}",
            hint="install the PostgreSQL extra: pip install 'abplatform[postgres]'",
        ) from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to `engine`."""
    return sessionmaker(engine, expire_on_commit=False)


ANALYSED_TABLES = ("exposures", "events", "impressions", "interactions", "item_impressions")
"""The tables an analysis scans, whose PostgreSQL planner statistics must be current."""


def refresh_planner_statistics(
    engine: Engine, tables: tuple[str, ...] = ANALYSED_TABLES
) -> list[str]:
    """On PostgreSQL, ``ANALYZE`` those of ``tables`` whose planner statistics are stale.

    Stale: never analysed (``reltuples < 0``, cheap when empty), or the table's file grew
    by more than 10 % since (``relpages``). Right after a bulk load the planner takes these
    tables for a few rows and joins the analysis's per-unit CTEs with nested loops,
    quadratic in the units (640 s instead of 1 s for 40,000 users); autovacuum may be off
    or not have run yet. The file size, unlike the ``pg_stat`` counters, is current and
    deterministic: the same data gets the same plan. Also stale: more live rows than the
    statistics counted (``pg_stat_get_live_tuples``), which is how a table looks when it was
    analysed while a load was still uncommitted (its pages were there, its rows not yet
    visible to the sample: 185 s instead of 1.7 s for a 40,000-user run). A no-op on SQLite.
    Returns the tables analysed.
    """
    if engine.dialect.name == "sqlite":
        return _refresh_sqlite_statistics(engine, tables)
    if engine.dialect.name != "postgresql":
        return []
    stale: list[str] = []
    with engine.begin() as conn:
        for table in tables:
            row = conn.execute(
                text(
                    "SELECT reltuples, relpages, "
                    "pg_relation_size(oid) / current_setting('block_size')::int, "
                    "pg_stat_get_live_tuples(oid) "
                    "FROM pg_class WHERE oid = to_regclass(:t)"
                ),
                {"t": table},
            ).first()
            if row is None:
                continue
            estimated_rows, planned_pages, pages = float(row[0]), int(row[1]), int(row[2])
            live = int(row[3])
            grown = pages > planned_pages * 1.1 + 8
            committed_since = live > estimated_rows * 1.1 + 1000
            if estimated_rows < 0 or grown or committed_since:
                stale.append(table)
        if stale:
            # Table names come from our own constant, never from input.
            conn.execute(text("ANALYZE " + ", ".join(stale)))
    return stale


SQLITE_SKIPPED = frozenset({"impressions"})
"""Tables an analysis reads only by primary key on SQLite: never worth an ``ANALYZE``."""


def _refresh_sqlite_statistics(engine: Engine, tables: tuple[str, ...]) -> list[str]:
    """``ANALYZE`` those tables whose row count moved by more than 10 % since their last one.

    Without statistics SQLite takes every index equality for selective, so an analysis
    reads an experiment's half of the exposures through the unit index, a random row at a
    time (3x the CPU of a scan); with them it scans. A database another process is writing
    to keeps its statistics (``ANALYZE`` needs the write lock; the analysis does not wait).
    """
    stale: list[str] = []
    with engine.connect() as conn:
        counted = (
            {
                str(name): int(str(stat).split()[0])
                for name, stat in conn.exec_driver_sql("SELECT tbl, stat FROM sqlite_stat1")
                if str(stat).split()
            }
            if _has_sqlite_stat(conn)
            else {}
        )
        for table in tables:
            if table in SQLITE_SKIPPED or not _sqlite_table(conn, table):
                continue
            rows = int(conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{table}"').scalar_one())
            before = counted.get(table)
            if rows and (before is None or abs(rows - before) > before * 0.1 + 1000):
                stale.append(table)
        if not stale:
            return []
        try:
            conn.exec_driver_sql("PRAGMA busy_timeout = 0")
            for table in stale:
                conn.exec_driver_sql(f'ANALYZE "{table}"')
            conn.commit()
        except DBAPIError:
            conn.rollback()
            return []
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    return stale


def _has_sqlite_stat(conn: Connection) -> bool:
    return _sqlite_table(conn, "sqlite_stat1")


def _sqlite_table(conn: Connection, name: str) -> bool:
    found = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).first()
    return found is not None


def with_local_settings(engine: Engine, settings: dict[str, str]) -> Engine:
    """``engine`` (same pool) running ``SET LOCAL name = value`` before each statement.

    PostgreSQL only (``engine`` itself elsewhere). ``SET LOCAL`` ends with the statement's
    transaction, so the pooled connections keep the server's settings for other work.
    """
    if engine.dialect.name != "postgresql":
        return engine
    local = engine.execution_options()
    # Names and values come from our own code, never from input.
    commands = [f"SET LOCAL {name} = {value}" for name, value in settings.items()]

    @event.listens_for(local, "before_cursor_execute")
    def _set(_conn: Any, cursor: Any, *_: Any) -> None:
        # On the connection, not the cursor: a server-side (streaming) cursor can only
        # DECLARE a query.
        for command in commands:
            cursor.connection.execute(command)

    return local


@contextmanager
def bounded_lock_wait(conn: Connection, seconds: float | None) -> Iterator[None]:
    """Within the block, ``conn`` waits at most ``seconds`` for each lock (None: unbounded).

    Enter it before ``conn.begin()`` and leave it after the commit. PostgreSQL: ``SET
    LOCAL lock_timeout`` as the transaction's first statement (it ends with the
    transaction); a wait past it raises LockNotAvailable. SQLite: the connection's busy
    timeout, set back to `SQLITE_BUSY_TIMEOUT_MS` after the block; a wait past it raises
    "database is locked". `is_unavailable` recognises both.
    """
    if seconds is None:
        yield
        return
    milliseconds = max(1, round(seconds * 1000))
    raw: Any = conn.connection.driver_connection
    if not is_sqlite(conn.engine):
        # The driver opens the transaction with this statement; SQLAlchemy's begin() that
        # follows joins it (psycopg begins implicitly) and its commit ends both.
        with raw.cursor() as cursor:
            cursor.execute(f"SET LOCAL lock_timeout = {milliseconds}")
        yield
        return
    raw.execute(f"PRAGMA busy_timeout = {milliseconds}")
    try:
        yield
    finally:
        if not conn.invalidated:
            raw.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")


def with_statement_timeout(engine: Engine, seconds: float) -> Engine:
    """``engine`` (same pool) whose every statement is cancelled after ``seconds``.

    PostgreSQL: ``SET LOCAL statement_timeout`` on the statement's cursor, in its
    transaction. SQLite: a progress handler that interrupts the statement at the deadline.
    A cancelled statement raises a ``DBAPIError`` that `is_statement_timeout` recognises.
    """
    if not is_sqlite(engine):
        return with_local_settings(
            engine, {"statement_timeout": str(max(1, round(seconds * 1000)))}
        )
    bounded = engine.execution_options()

    @event.listens_for(bounded, "before_cursor_execute")
    def _bound(conn: Any, *_: Any) -> None:
        deadline = time.monotonic() + seconds
        conn.connection.driver_connection.set_progress_handler(
            lambda: int(time.monotonic() > deadline), 1000
        )

    def _clear(conn: Any, *_: Any) -> None:
        if conn is not None and not conn.invalidated:
            conn.connection.driver_connection.set_progress_handler(None, 0)

    event.listen(bounded, "after_cursor_execute", _clear)
    event.listen(bounded, "handle_error", lambda ctx: _clear(ctx.connection))
    return bounded


def is_statement_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a statement cancelled by `with_statement_timeout`'s bound."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if type(orig).__name__ == "QueryCanceled":  # psycopg: canceling statement due to timeout
        return True
    return type(orig).__name__ == "OperationalError" and str(orig) == "interrupted"


_SQLITE_UNAVAILABLE = (
    "database is locked",
    "database table is locked",
    "unable to open",
    "disk i/o",
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable, gone mid-statement, or locked.

    Connection refused or lost, server shutting down, a lock wait past its bound, SQLite's
    "database is locked": the same request may succeed later. A statement timeout of an
    analysis, a constraint or bad SQL is something else (SQLite reports bad SQL as an
    OperationalError too, so there only the messages above count).
    """
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if not isinstance(exc, DBAPIError):
        return _driver_unavailable(exc)  # raised by a driver cursor (COPY, bulk inserts)
    if is_statement_timeout(exc):
        return False
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    return exc.orig is not None and _driver_unavailable(exc.orig)


def _driver_unavailable(orig: BaseException) -> bool:
    """`is_unavailable` for the driver's own exception (sqlite3 or psycopg)."""
    module = type(orig).__module__
    if module.startswith("sqlite3"):
        message = str(orig).lower()
        return isinstance(orig, sqlite3.OperationalError) and any(
            part in message for part in _SQLITE_UNAVAILABLE
        )
    if not module.startswith("psycopg") or type(orig).__name__ == "QueryCanceled":
        return False
    import psycopg

    # Connection failure, AdminShutdown, LockNotAvailable (lock_timeout) ...
    return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with session_factory(engine)() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision`."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Run the Alembic migrations down to `revision`."""
    from alembic import command

    command.downgrade(_alembic_config(engine), revision)


def head_revision() -> str | None:
    """The newest migration revision shipped with the package."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(
        _alembic_config(create_engine("sqlite://"))
    ).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_schema(engine: Engine) -> None:
    """Make sure the schema is at head: SQLite upgrades itself, other databases must be migrated."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if is_sqlite(engine):
        upgrade(engine)
        return
    state = "empty" if current is None else f"at revision {current}"
    raise AbplatformError(
        f"the database is {state}, but this version of abplatform needs revision {head}",
        hint="run: abplatform db upgrade --db URL",
    )


def table_names(engine: Engine) -> list[str]:
    """Tables present in the database."""
    return sorted(inspect(engine).get_table_names())


def open_database(
    url: str | None = None, *, connect_timeout: float | None = None, pool_timeout: float = 30.0
) -> Engine:
    """An engine whose schema is ready to use (timeouts: see `make_engine`)."""
    engine = make_engine(url, connect_timeout=connect_timeout, pool_timeout=pool_timeout)
    ensure_schema(engine)
    return engine
