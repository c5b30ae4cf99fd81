"""Experiment change signals: the SQLite counter file and PostgreSQL LISTEN/NOTIFY.

A committed create or status change is signalled to a feed opened before it; a rolled-back
one is not; the SQLite counter is shared across processes and left unlocked; a PostgreSQL
feed that lost its connection reconnects and then counts everything as changed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from abplatform.errors import AbplatformError, NotFoundError
from abplatform.storage import models as m
from abplatform.storage.changes import (
    CHANNEL,
    ChangeFeed,
    CounterFeed,
    NotifyFeed,
    counter_path,
    experiments_changed,
    open_feed,
)
from abplatform.storage.db import open_database, transaction
from abplatform.storage.repository import get_experiment, save_experiment, set_status
from tests.factories import small_config

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 5.0  # a notification is delivered in milliseconds; this only bounds a failure


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def feed(engine: Engine) -> Iterator[ChangeFeed]:
    feed = open_feed(engine)
    if isinstance(feed, NotifyFeed):
        assert feed.listening.wait(WAIT_SECONDS)
    yield feed
    feed.close()


def _until(condition: Callable[[], bool]) -> bool:
    """Whether `condition` holds within `WAIT_SECONDS` (at once on SQLite)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def test_the_feed_of_each_database(engine: Engine, feed: ChangeFeed) -> None:
    expected = NotifyFeed if engine.dialect.name == "postgresql" else CounterFeed
    assert isinstance(feed, expected)


def test_committed_changes_are_signalled_and_rolled_back_ones_are_not(
    engine: Engine, feed: ChangeFeed
) -> None:
    config = small_config()
    before = feed.changed_at(config.key)
    with transaction(engine) as session:
        save_experiment(session, config, "shop")
    assert _until(lambda: feed.changed_at(config.key) > before)  # created

    created = feed.changed_at(config.key)
    with pytest.raises(RuntimeError), transaction(engine) as session:
        set_status(session, config.key, "running")
        raise RuntimeError("rolled back")
    assert feed.version() == created  # SQLite: the bump would have been at once
    other = config.model_copy(update={"key": "other"})
    with transaction(engine) as session:  # PostgreSQL: a later change arrives after it would
        save_experiment(session, other, "shop")
    assert _until(lambda: feed.changed_at("other") > created)
    if engine.dialect.name == "postgresql":  # notifications name their experiment
        assert feed.changed_at(config.key) == created
    with transaction(engine) as session:
        assert get_experiment(session, config.key).status == "draft"

    seen = feed.changed_at(config.key)
    with transaction(engine) as session:
        stored = set_status(session, config.key, "running")
    assert stored.status == "running"
    assert _until(lambda: feed.changed_at(config.key) > seen)


def test_a_session_on_the_callers_connection_signals_at_its_commit(
    engine: Engine, feed: ChangeFeed
) -> None:
    """As the simulator writes: a Session bound to a connection whose transaction it commits."""
    before = feed.version()
    with engine.begin() as conn:
        save_experiment(Session(bind=conn), small_config(), "shop")
        if engine.dialect.name == "sqlite":
            assert feed.version() == before  # not before the commit
    assert _until(lambda: feed.changed_at(small_config().key) > before)


def test_a_change_committed_elsewhere_is_signalled_explicitly(
    engine: Engine, feed: ChangeFeed
) -> None:
    before = feed.changed_at("any")
    experiments_changed(engine)  # every experiment
    assert _until(lambda: feed.changed_at("any") > before)
    named = feed.changed_at("named")
    experiments_changed(engine, ["named"])
    assert _until(lambda: feed.changed_at("named") > named)


def test_a_bad_status_or_key_is_refused_naming_it(engine: Engine) -> None:
    with transaction(engine) as session:
        save_experiment(session, small_config(), "shop")
    key = small_config().key
    paused = r"status: 'paused' is not one of draft, running, stopped"
    with pytest.raises(AbplatformError, match=paused), transaction(engine) as session:
        set_status(session, key, "paused")
    unknown = rf"no experiment 'nope'.*known: {key}"
    with pytest.raises(NotFoundError, match=unknown), transaction(engine) as session:
        set_status(session, "nope", "running")
    with engine.connect() as conn:
        statuses = conn.execute(
            select(m.Experiment.status, func.count()).group_by(m.Experiment.status)
        )
        assert statuses.all() == [("draft", 1)]


def test_the_counter_is_shared_across_processes_and_left_unlocked(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = open_database(sqlite_url)
    path = counter_path(engine.url.database)
    assert path is not None and path.parent == tmp_path
    feed = CounterFeed(path)
    second = CounterFeed(path)  # another worker opening it: not blocked by the first
    try:
        before = feed.version()
        script = (
            "from abplatform.storage.db import open_database\n"
            "from abplatform.storage.changes import experiments_changed\n"
            f"experiments_changed(open_database({sqlite_url!r}))\n"
        )
        # A feed holding the file's lock would block this bump for ever.
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=30)
        assert feed.version() == second.version() == before + 1
    finally:
        feed.close()
        second.close()
        engine.dispose()


@pytest.mark.postgres
def test_a_lost_listen_connection_reconnects_and_counts_everything_changed(pg_url: str) -> None:
    engine = open_database(pg_url)
    feed = open_feed(engine)
    try:
        assert isinstance(feed, NotifyFeed) and feed.listening.wait(WAIT_SECONDS)
        before = feed.changed_at("any")
        with engine.begin() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query = :listen AND datname = current_database()"
                ),
                {"listen": f"LISTEN {CHANNEL}"},
            ).all()
        assert ended == [(True,)]
        assert _until(lambda: feed.changed_at("any") > before)  # reconnected: all changed
        assert feed.listening.is_set()
        with transaction(engine) as session:  # and notifications arrive again
            save_experiment(session, small_config(), "shop")
        again = feed.changed_at("any")
        assert _until(lambda: feed.changed_at(small_config().key) > again)
    finally:
        feed.close()
        engine.dispose()
