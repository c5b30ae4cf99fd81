"""The buffered writer: bounded queue (full -> WriterFull, never a drop), close flushes."""

from __future__ import annotations

from datetime import datetime

import pytest

from abplatform.storage.db import open_database
from abplatform.writer import BufferedWriter, EventRow, WriterClosed, WriterFull

pytestmark = pytest.mark.anyio


def _events(n: int, prefix: str) -> list[EventRow]:
    stamp = datetime(2026, 11, 27, 12)
    return [EventRow(f"{prefix}{i}", None, None, "u", "click", None, None, stamp) for i in range(n)]


async def test_full_queue_refuses_and_close_writes_everything(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    writer = BufferedWriter(engine, max_rows=10)
    first = writer.submit((), _events(8, "a"))  # the thread is not started: rows stay queued
    with pytest.raises(WriterFull):
        writer.submit((), _events(3, "b"))
    second = writer.submit((), _events(2, "c"))
    writer.start()
    assert (await first).new_events == 8
    assert (await second).new_events == 2
    await writer.close()
    with pytest.raises(WriterClosed):
        writer.submit((), _events(1, "d"))
    engine.dispose()


async def test_duplicates_across_concurrent_submissions_count_once(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    writer = BufferedWriter(engine)
    one = writer.submit((), _events(5, "x"))
    two = writer.submit((), _events(5, "x"))  # same ids, same group commit
    writer.start()
    results = [await one, await two]
    assert [(r.new_events, r.duplicate_events) for r in results] == [(5, 0), (0, 5)]
    await writer.close()
    engine.dispose()
