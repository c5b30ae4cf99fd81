"""Write-time facts of slates: per-item impression counts and each event's slate position.

Both are derived when the rows are stored (`storage.rows`), so they must always equal what
the stored impressions say: checked here against the impressions themselves, after a
simulated run and after API-style writes that include a journal replay of stored rows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Engine, text

from abplatform.config import load_experiment_text
from abplatform.storage.db import open_database, transaction
from abplatform.storage.repository import save_experiment
from abplatform.storage.rows import EventRow, ExposureRow, write_events, write_exposures
from reports.ranking import ranking_quality
from simulator.runner import simulate

CONFIG = """
key: counted
variants:
  - {key: control, weight: 0.5, strategy: {kind: popularity}}
  - {key: treatment, weight: 0.5, strategy: {kind: random}}
metrics: [{name: ctr, type: ratio, numerator: {event: click}, denominator: {event: impression}}]
simulation: {users: 300, days: 2, items: 120, slate_size: 5, seed: 4}
"""


def _counted(conn: Connection) -> list[tuple[int, str, str, int]]:
    rows = conn.execute(
        text(
            "SELECT experiment_id, variant, item_id, impressions FROM item_impressions "
            "ORDER BY 1, 2, 3"
        )
    )
    return [(int(e), str(v), str(i), int(n)) for e, v, i, n in rows]


def _grouped(conn: Connection) -> list[tuple[int, str, str, int]]:
    rows = conn.execute(
        text(
            "SELECT x.experiment_id, x.variant, i.item_id, COUNT(*) FROM impressions i "
            "JOIN exposures x ON x.id = i.exposure_id GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
    )
    return [(int(e), str(v), str(i), int(n)) for e, v, i, n in rows]


def _positions(conn: Connection) -> list[tuple[str, int | None, int | None]]:
    """(event id, stored position, position looked up in the impressions) of every event."""
    rows = conn.execute(
        text(
            "SELECT e.event_id, e.position, (SELECT MIN(i.position) FROM impressions i "
            "WHERE i.exposure_id = e.exposure_id AND i.item_id = e.item_id) "
            "FROM events e ORDER BY e.event_id"
        )
    )
    return [(str(a), b, c) for a, b, c in rows]


def test_a_simulated_run_counts_every_impression_and_positions_every_event(db_url: str) -> None:
    engine = open_database(db_url)
    simulate(engine, load_experiment_text(CONFIG))
    with engine.connect() as conn:
        counted = _counted(conn)
        assert counted and counted == _grouped(conn)
        positions = _positions(conn)
    assert positions and all(stored == found for _, stored, found in positions)
    assert all(stored is not None for _, stored, _ in positions)  # every sim event is shown
    engine.dispose()


def _exposure(experiment_id: int, variant: str, items: tuple[str, ...]) -> ExposureRow:
    return ExposureRow(
        experiment_id=experiment_id,
        variant=variant,
        unit_id="u1",
        ts=datetime(2026, 1, 1),
        propensity=0.5,
        bucket=None,
        scene="home",
        context=None,
        items=items,
    )


def _event(event_id: str, experiment_id: int, exposure_id: int, item: str) -> EventRow:
    return EventRow(
        event_id=event_id,
        experiment_id=experiment_id,
        exposure_id=exposure_id,
        unit_id="u1",
        type="click",
        item_id=item,
        value=None,
        ts=datetime(2026, 1, 1, 0, 1),
    )


def _api_writes(engine: Engine) -> int:
    with transaction(engine) as session:
        experiment_id = save_experiment(session, load_experiment_text(CONFIG), "shop").id
    with engine.begin() as conn:
        write_exposures(
            conn,
            [101, 102],
            [
                _exposure(experiment_id, "control", ("a", "b", "a")),
                _exposure(experiment_id, "treatment", ("c",)),
            ],
            idempotent=False,
        )
        # A click on a shown item, one on an item shown twice (its first position counts),
        # one on an item the slate did not show, and one whose exposure is not stored.
        write_events(
            conn,
            [
                [
                    _event("e1", experiment_id, 101, "b"),
                    _event("e2", experiment_id, 101, "a"),
                    _event("e3", experiment_id, 102, "z"),
                    _event("e4", experiment_id, 999, "a"),
                ]
            ],
        )
    with engine.begin() as conn:  # a journal replay: stored rows are skipped, not recounted
        write_exposures(
            conn,
            [101, 103],
            [
                _exposure(experiment_id, "control", ("a", "b", "a")),
                _exposure(experiment_id, "control", ("b",)),
            ],
            idempotent=True,
        )
    return experiment_id


def test_api_writes_count_once_and_store_first_positions(db_url: str) -> None:
    engine = open_database(db_url)
    experiment_id = _api_writes(engine)
    with engine.connect() as conn:
        counted = _counted(conn)
        positions = _positions(conn)
    # control: a twice (exposure 101), b once in 101 and once in 103; treatment: c once.
    assert counted == [
        (experiment_id, "control", "a", 2),
        (experiment_id, "control", "b", 2),
        (experiment_id, "treatment", "c", 1),
    ]
    assert positions == [("e1", 1, 1), ("e2", 0, 0), ("e3", None, None), ("e4", None, None)]
    engine.dispose()


def test_ranking_is_the_same_from_stored_and_looked_up_positions(sqlite_url: str) -> None:
    """Every number of ranking quality is unchanged when the stored positions are missing
    (events written before their exposure) and looked up in the impressions instead."""
    engine = open_database(sqlite_url)
    simulate(engine, load_experiment_text(CONFIG))
    with engine.connect() as conn:
        experiment_id = conn.execute(text("SELECT id FROM experiments")).scalar_one()
    stored = ranking_quality(engine, experiment_id, "sim:counted")
    with engine.begin() as conn:
        conn.execute(text("UPDATE events SET position = NULL"))
    looked_up = ranking_quality(engine, experiment_id, "sim:counted")
    assert stored == looked_up
    assert stored["control"].hit_rate > 0
    engine.dispose()
