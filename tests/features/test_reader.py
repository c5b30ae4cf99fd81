"""The API's feature reader: an unchanged row answers the same decoded object, a changed one
is read and decoded afresh (the merge and the two-tower's query are cached by it)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from abplatform.api.online import FeatureReader
from abplatform.api.outage import DatabaseHealth
from abplatform.storage.feature_signals import signals_for
from abplatform.storage.rows import EventRow
from abplatform.writer import BufferedWriter
from tests.features.conftest import Store

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 1, 12, 0, 0)


def click(store: Store, event_id: str, item: str, second: int) -> EventRow:
    return EventRow(
        event_id,
        store.experiment_id,
        None,
        "u0",
        "click",
        item,
        None,
        T0 + timedelta(seconds=second),
    )


@pytest.mark.parametrize("slot_file", [False, True])
async def test_an_unchanged_row_is_not_decoded_again_a_changed_one_is(
    store: Store, slot_file: bool
) -> None:
    """Without the slot file (PostgreSQL, or SQLite in memory) the row is read on every
    look-up but decoded only when it changed; with it (SQLite file) not even read."""
    signals = signals_for(store.engine) if slot_file else None
    if slot_file and signals is None:
        # Only a SQLite file has a slot file; PostgreSQL reads the row (the other case).
        assert store.engine.dialect.name == "postgresql"
        return
    reader = FeatureReader(store.engine, DatabaseHealth(4.0), signals)
    writer = BufferedWriter(store.engine)
    writer.start()
    try:
        assert await reader.get("shop", "u0") == (None, True)
        await writer.commit((), [click(store, "a", "item1", 1)])
        first, current = await reader.get("shop", "u0")
        assert current and first is not None and first.version == 1
        again, _ = await reader.get("shop", "u0")
        assert again is first
        reads = reader.reads
        await writer.commit((), [click(store, "b", "item2", 2)])
        second, _ = await reader.get("shop", "u0")
        assert second is not None and second is not first
        assert second.version == 2
        assert [e.item_id for e in second.recent] == ["item2", "item1"]
        assert reader.reads == reads + 1
        assert (await reader.get("shop", "u0"))[0] is second
        assert reader.reads == reads + (1 if slot_file else 2)
    finally:
        await writer.close()
        reader.close()
