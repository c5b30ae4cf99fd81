"""The buffered writer: bounded queue, accepted exposures, journal replay, id reservation."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, func, select

from abplatform.api.errors import problem_response
from abplatform.errors import AbplatformError, WriteFailed, WriterClosed, WriterFull
from abplatform.journal import Journal, replay
from abplatform.storage import models as m
from abplatform.storage.db import open_database
from abplatform.storage.exposure_ids import ExposureIds
from abplatform.storage.rows import EventRow, ExposureRow
from abplatform.writer import BufferedWriter, journal_line, replay_journal

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


def _exposures(n: int, prefix: str, experiment_id: int) -> list[ExposureRow]:
    stamp = datetime(2026, 11, 27, 12, 0, 0, 123456)
    items = ("a", "b")
    return [
        ExposureRow(experiment_id, "control", f"{prefix}{i}", stamp, 0.5, 0.25, None, None, items)
        for i in range(n)
    ]


def _stored(engine: Engine) -> dict[int, tuple[str, int]]:
    """Exposure id -> (unit, impressions)."""
    with engine.connect() as conn:
        impressions = dict(
            conn.execute(
                select(m.Impression.exposure_id, func.count()).group_by(m.Impression.exposure_id)
            ).all()
        )
        rows = conn.execute(select(m.Exposure.id, m.Exposure.unit_id)).all()
    return {r.id: (r.unit_id, impressions.get(r.id, 0)) for r in rows}


async def test_recorded_exposures_are_answered_at_once_and_committed(
    seeded_url: str, tmp_path: Path
) -> None:
    engine = open_database(seeded_url)
    experiment_id = _experiment_id(engine)
    before = set(_stored(engine))
    writer = BufferedWriter(engine, journal=Journal(tmp_path / "journal"))
    writer.start()
    ids = writer.record(_exposures(3, "r", experiment_id))
    ids += writer.record(_exposures(2, "s", experiment_id))
    assert len(set(ids)) == 5 and not set(ids) & before
    assert len(list((tmp_path / "journal").glob("*.journal"))) == 1
    await writer.flush()
    stored = _stored(engine)
    units = ["r0", "r1", "r2", "s0", "s1"]
    assert [stored[i] for i in ids] == [(u, 2) for u in units]
    await writer.close()
    assert list((tmp_path / "journal").iterdir()) == []  # everything committed: no journal left
    engine.dispose()


async def test_journal_replay_inserts_each_exposure_once(seeded_url: str, tmp_path: Path) -> None:
    engine = open_database(seeded_url)
    experiment_id = _experiment_id(engine)
    writer = BufferedWriter(engine)
    writer.start()
    committed = writer.record(_exposures(2, "c", experiment_id))
    await writer.flush()
    await writer.close()
    lost = ExposureIds(engine).take(2)  # ids a dead process answered but never committed
    directory = tmp_path / "journal"
    directory.mkdir()
    line_committed = journal_line(committed, _exposures(2, "c", experiment_id))
    line_lost = journal_line(lost, _exposures(2, "l", experiment_id))
    torn = journal_line([lost[-1] + 1], _exposures(1, "t", experiment_id))[:20]
    (directory / "123-dead.journal").write_bytes(line_committed + line_lost + torn + b"\0" * 64)
    apply = partial(replay_journal, engine)
    assert replay(directory, apply) == 2
    assert replay(directory, apply) == 0  # the segment is gone
    stored = _stored(engine)
    assert [stored[i] for i in committed + lost] == [("c0", 2), ("c1", 2), ("l0", 2), ("l1", 2)]
    assert lost[-1] + 1 not in stored  # the torn line's request was never answered
    engine.dispose()


async def test_two_processes_reserve_disjoint_exposure_ids(sqlite_url: str) -> None:
    first, second = open_database(sqlite_url), open_database(sqlite_url)
    a, b = ExposureIds(first, block=100), ExposureIds(second, block=100)
    ids = a.take(150) + b.take(150) + a.take(60)
    assert len(set(ids)) == len(ids) == 360
    first.dispose()
    second.dispose()


def _experiment_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(m.Experiment.id).limit(1)).scalar_one())


@pytest.mark.parametrize(
    "refusal",
    [
        WriterFull("3 rows are waiting to be written"),
        WriterClosed("the server is shutting down"),
        WriteFailed("the database refused the rows: IntegrityError"),
    ],
)
def test_writer_refusals_are_platform_errors_answered_503(refusal: AbplatformError) -> None:
    assert isinstance(refusal, AbplatformError)
    response = problem_response(refusal)
    assert response is not None
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert orjson.loads(response.body) == {
        "detail": f"{refusal.message}; nothing of this request was recorded, retry",
        "problems": [],
    }


async def test_exposures_keep_their_model_id_through_the_writer_and_the_journal(
    seeded_url: str, tmp_path: Path
) -> None:
    from abplatform.storage.db import transaction
    from abplatform.storage.model_registry import list_models

    engine = open_database(seeded_url)
    experiment_id = _experiment_id(engine)
    with transaction(engine) as session:
        model_id = list_models(session)[0].id  # the seeding simulation registered its models
    served = [replace(row, model_id=model_id) for row in _exposures(2, "m", experiment_id)]
    writer = BufferedWriter(engine)
    writer.start()
    ids = writer.record([*served, *_exposures(1, "f", experiment_id)])
    await writer.flush()
    await writer.close()
    # A journal line of this format keeps the model id; one of the previous format (11
    # fields, before model ids) replays with none.
    lost = ExposureIds(engine).take(2)
    new_line = journal_line(lost[:1], [replace(served[0], unit_id="j-new")])
    old_item = orjson.loads(journal_line(lost[1:], _exposures(1, "j-old", experiment_id)))[0]
    old_line = orjson.dumps([old_item[:11]]) + b"\n"
    directory = tmp_path / "journal"
    directory.mkdir()
    (directory / "1-dead.journal").write_bytes(new_line + old_line)
    assert replay(directory, partial(replay_journal, engine)) == 2
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(m.Exposure.id, m.Exposure.model_id).where(m.Exposure.id.in_(ids + lost))
            ).all()
        )
    assert [stored[i] for i in ids + lost] == [model_id, model_id, None, model_id, None]
    engine.dispose()


async def test_impressions_keep_their_sources_through_the_writer_and_the_journal(
    seeded_url: str, tmp_path: Path
) -> None:
    engine = open_database(seeded_url)
    experiment_id = _experiment_id(engine)
    sourced = [replace(r, sources=("two_tower", None)) for r in _exposures(2, "s", experiment_id)]
    writer = BufferedWriter(engine)
    writer.start()
    ids = writer.record([*sourced, *_exposures(1, "n", experiment_id)])
    await writer.flush()
    await writer.close()
    # A journal line keeps the sources; one of the previous format (12 fields) replays NULL.
    lost = ExposureIds(engine).take(2)
    new_line = journal_line(lost[:1], [replace(sourced[0], unit_id="j-new")])
    old_item = orjson.loads(journal_line(lost[1:], _exposures(1, "j-old", experiment_id)))[0]
    old_line = orjson.dumps([old_item[:12]]) + b"\n"
    directory = tmp_path / "journal"
    directory.mkdir()
    (directory / "1-dead.journal").write_bytes(new_line + old_line)
    assert replay(directory, partial(replay_journal, engine)) == 2
    with engine.connect() as conn:
        rows = conn.execute(
            select(m.Impression.exposure_id, m.Impression.position, m.Impression.source)
            .where(m.Impression.exposure_id.in_(ids + lost))
            .order_by(m.Impression.exposure_id, m.Impression.position)
        ).all()
    stored = {(e, p): s for e, p, s in rows}
    for exposure_id, expected in zip(
        ids + lost, ["two_tower", "two_tower", None, "two_tower", None], strict=True
    ):
        assert (stored[(exposure_id, 0)], stored[(exposure_id, 1)]) == (expected, None)
    engine.dispose()
