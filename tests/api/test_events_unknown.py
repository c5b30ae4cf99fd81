"""`/v1/events` for unknown items or units: stored, update no features, reported, never a 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from abplatform.api.schemas import UNFEATURED_LISTED
from abplatform.storage import models as m
from abplatform.storage.db import open_database
from abplatform.storage.features import read_features
from tests.api.conftest import KEY
from tests.api.test_realtime_features import CATALOG, categories

pytestmark = pytest.mark.anyio

KNOWN_UNIT = "u000001"  # a simulated user of the catalogue
UNIT_REASON = "unknown unit 'nobody' (not assigned in this experiment, not a user of its catalogue)"


def _event(event_id: str, unit: str, item: str | None, **extra: Any) -> dict[str, Any]:
    body = {"event_id": event_id, "unit_id": unit, "type": "click", "experiment": KEY}
    return {**body, **({} if item is None else {"item_id": item}), **extra}


def _store(url: str) -> tuple[int, dict[str, tuple[int, list[str]]]]:
    """(rows of the feature store, {unit: (version, recent items)} of the two test units)."""
    engine = open_database(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(m.UnitFeature)).scalar_one()
            found = read_features(conn, CATALOG, [KNOWN_UNIT, "nobody"])
    finally:
        engine.dispose()
    state = {u: (f.version, [r.item_id for r in f.recent]) for u, f in found.items()}
    return int(rows), state


async def test_unknown_items_and_units_update_nothing_and_are_reported(
    both_lanes: httpx.AsyncClient, seeded_url: str
) -> None:
    started = await both_lanes.post(f"/v1/experiments/{KEY}/start")
    assert started.status_code == 200, started.text
    item = sorted(categories(seeded_url).items())[0][1][0]
    rows_before, _ = _store(seeded_url)
    events = [_event("ok", KNOWN_UNIT, item)]
    events += [_event(f"item-{n}", KNOWN_UNIT, f"no-such-item-{n}") for n in range(150)]
    events += [_event(f"unit-{n}", "nobody", item) for n in range(3)]
    events += [_event("no-item", KNOWN_UNIT, None)]
    sent = await both_lanes.post("/v1/events", json={"events": events})
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert (body["received"], body["new"], body["featured"]) == (155, 155, 1)
    assert body["unfeatured_count"] == 154 == body["new"] - body["featured"]
    listed = body["unfeatured"]
    assert len(listed) == UNFEATURED_LISTED
    assert [u["index"] for u in listed] == list(range(1, UNFEATURED_LISTED + 1))
    assert listed[0] == {
        "index": 1,
        "event_id": "item-0",
        "reason": f"unknown item 'no-such-item-0' (not in catalogue {CATALOG!r})",
    }
    rows_after, state = _store(seeded_url)
    # Only the one good event changed the store: one row more, one item, no row of `nobody`.
    assert state == {KNOWN_UNIT: (1, [item])}
    assert rows_after == rows_before + 1

    # A batch of nothing but unknown units and items: all reported, the store unchanged.
    bad = [_event(f"unit-b{n}", "nobody", item) for n in range(2)]
    bad += [_event("item-b", KNOWN_UNIT, "no-such-item-b")]
    again = await both_lanes.post("/v1/events", json={"events": bad})
    assert again.status_code == 200, again.text
    assert again.json() == {
        "received": 3,
        "new": 3,
        "duplicates": 0,
        "featured": 0,
        "unfeatured_count": 3,
        "unfeatured": [
            {"index": 0, "event_id": "unit-b0", "reason": UNIT_REASON},
            {"index": 1, "event_id": "unit-b1", "reason": UNIT_REASON},
            {
                "index": 2,
                "event_id": "item-b",
                "reason": f"unknown item 'no-such-item-b' (not in catalogue {CATALOG!r})",
            },
        ],
    }
    assert _store(seeded_url) == (rows_after, state)
    # The events themselves are stored (a retry is all duplicates, nothing reported twice).
    retried = (await both_lanes.post("/v1/events", json={"events": bad})).json()
    assert (retried["duplicates"], retried["unfeatured_count"], retried["unfeatured"]) == (3, 0, [])
