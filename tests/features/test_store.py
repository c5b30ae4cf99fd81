"""The feature store: what one event batch changes, what it leaves out, concurrent writers.

Events go through the real `BufferedWriter` (the path of `/v1/events`), so the features are
updated in the transaction that stores the events; both databases.
"""

from __future__ import annotations

import multiprocessing
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from abplatform.domain import RecentInteraction
from abplatform.storage import models as m
from abplatform.storage.features import read_features
from abplatform.storage.rows import EventRow
from abplatform.writer import BufferedWriter
from tests.features.conftest import Store
from tests.features.workers import batches_of, child

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 1, 12, 0, 0)


def event(
    store: Store, event_id: str, unit: str, kind: str, item: str | None, second: int
) -> EventRow:
    return EventRow(
        event_id=event_id,
        experiment_id=store.experiment_id,
        exposure_id=None,
        unit_id=unit,
        type=kind,
        item_id=item,
        value=None,
        ts=T0 + timedelta(seconds=second),
    )


async def test_a_batch_updates_recent_items_cart_counts_and_version(store: Store) -> None:
    writer = BufferedWriter(store.engine)
    writer.start()
    try:
        first = await writer.commit(
            (),
            [
                event(store, "a", "u0", "view", "item1", 1),
                event(store, "b", "u0", "add_to_cart", "item2", 3),
                event(store, "c", "u0", "click", "item4", 2),  # older than b: sorted by time
                event(store, "d", "u1", "add_to_cart", "item5", 1),
            ],
        )
        second = await writer.commit(
            (),
            [
                event(store, "e", "u0", "purchase", "item2", 5),  # bought: out of the cart
                event(store, "a", "u0", "view", "item1", 1),  # a retry: counted once
            ],
        )
    finally:
        await writer.close()
    assert (first.new_events, first.featured_events, first.unfeatured) == (4, 4, ())
    assert (second.new_events, second.duplicate_events, second.featured_events) == (1, 1, 1)
    with store.engine.connect() as conn:
        features = read_features(conn, "shop", ["u0", "u1", "u2"])
    assert set(features) == {"u0", "u1"}  # u2 had no event: no row
    u0 = features["u0"]
    assert u0.version == 2  # one step per acknowledged batch touching the unit
    start = int((T0 - datetime(1970, 1, 1)).total_seconds())
    assert u0.recent == (
        RecentInteraction("item2", "purchase", start + 5),
        RecentInteraction("item2", "add_to_cart", start + 3),
        RecentInteraction("item4", "click", start + 2),
        RecentInteraction("item1", "view", start + 1),
    )
    assert u0.cart == ()
    assert u0.counts == {"view": 1, "add_to_cart": 1, "click": 1, "purchase": 1}
    assert (features["u1"].version, features["u1"].cart) == (1, ("item5",))


async def test_events_for_unknown_items_units_or_experiments_update_nothing(
    store: Store,
) -> None:
    writer = BufferedWriter(store.engine)
    writer.start()
    free = EventRow("f", None, None, "u0", "click", "item1", None, T0)
    try:
        result = await writer.commit(
            (),
            [
                event(store, "ok", "u0", "click", "item1", 1),
                event(store, "x1", "u0", "click", "no-such-item", 2),
                event(store, "x2", "stranger", "click", "item1", 3),
                event(store, "x3", "u0", "purchase", None, 4),
                free,
            ],
        )
    finally:
        await writer.close()
    assert (result.new_events, result.featured_events) == (5, 1)
    reasons = {u.index: (u.event_id, u.reason) for u in result.unfeatured}
    assert reasons == {
        1: ("x1", "unknown item 'no-such-item' (not in catalogue 'shop')"),
        2: (
            "x2",
            "unknown unit 'stranger' (not assigned in this experiment, "
            "not a user of its catalogue)",
        ),
        3: ("x3", "no item_id"),
        4: ("f", "no experiment: the event's catalogue is unknown"),
    }
    with store.engine.connect() as conn:
        features = read_features(conn, "shop", ["u0", "stranger"])
        rows = conn.execute(select(func.count()).select_from(m.UnitFeature)).scalar_one()
    assert rows == 1
    assert [e.item_id for e in features["u0"].recent] == ["item1"]


def test_concurrent_writers_of_one_unit_lose_no_update(store: Store) -> None:
    """Four processes, each with its own `BufferedWriter`, update the same unit at once."""
    processes, batches, size = 4, 15, 5
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = ctx.Barrier(processes)
    args = (store.url, batches, size, store.experiment_id, start)
    procs = [
        ctx.Process(target=child, args=(queue, store.url, w, *args[1:])) for w in range(processes)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert [error for _, _, error in results if error is not None] == []
    assert sum(featured for _, featured, _ in results) == processes * batches * size
    with store.engine.connect() as conn:
        u0 = read_features(conn, "shop", ["u0"])["u0"]
    assert u0.version == processes * batches  # every batch's step, none lost
    assert sum(u0.counts.values()) == processes * batches * size
    every = [e for w in range(processes) for b in batches_of(w, batches, size, 0) for e in b]
    expected = sorted(every, key=lambda e: e.ts, reverse=True)[:50]
    assert [(e.item_id, e.type) for e in u0.recent] == [(e.item_id, e.type) for e in expected]
