"""`abplatform ingest` updates the feature store in the transaction that stores the events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from abplatform.catalog_ingest import ingest_catalog
from abplatform.csvcheck import CHUNK_ROWS
from abplatform.domain import RecentInteraction
from abplatform.errors import DataError
from abplatform.ingest import ingest_logs
from abplatform.storage import models as m
from abplatform.storage.db import open_database
from abplatform.storage.features import read_features
from tests.factories import cli
from tests.test_ingest import _config, _write

ITEMS = "item_id,category,brand,price\ni1,books,acme,10\ni2,books,acme,12\ni3,toys,zed,5\n"
EXPOSURES = (
    "unit_id,variant,timestamp\n"
    "u1,control,2024-05-01T09:00:00Z\n"
    "u2,treatment,2024-05-01T09:00:00Z\n"
)
# Out of time order on purpose; u9 is never exposed and no user; i9 is no catalogue item.
EVENTS = (
    "event_id,unit_id,type,timestamp,item_id\n"
    "e3,u1,purchase,2024-05-01T10:03:00Z,i2\n"
    "e1,u1,view,2024-05-01T10:01:00Z,i1\n"
    "e2,u1,add_to_cart,2024-05-01T10:02:00Z,i2\n"
    "e4,u1,add_to_cart,2024-05-01T10:04:00Z,i3\n"
    "e5,u2,click,2024-05-01T10:00:00Z,i3\n"
    "e6,u9,click,2024-05-01T10:00:00Z,i1\n"
    "e7,u2,click,2024-05-01T10:05:00Z,i9\n"
    "e8,u2,rating,2024-05-01T10:06:00Z,\n"
)
# 2024-05-01T10:00:00Z in Unix seconds: python -c "import calendar, time;
# print(calendar.timegm(time.strptime('2024-05-01T10', '%Y-%m-%dT%H')))"
T = 1714557600


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_database(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _store(engine: Engine) -> dict[str, tuple[int, tuple[RecentInteraction, ...], tuple[str, ...]]]:
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(m.UnitFeature)).scalar_one()
        found = read_features(conn, "shop", ["u1", "u2", "u9"])
    assert rows == len(found)
    return {unit: (f.version, f.recent, f.cart) for unit, f in found.items()}


def _event_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(m.Event)).scalar_one())


def test_ingested_events_update_the_store_in_time_order(engine: Engine, tmp_path: Path) -> None:
    ingest_catalog(engine, "shop", items=_write(tmp_path, "items.csv", ITEMS))
    summary = ingest_logs(
        engine,
        _config(),
        _write(tmp_path, "exposures.csv", EXPOSURES),
        _write(tmp_path, "events.csv", EVENTS),
    )
    assert (summary.events, summary.featured_events, summary.unfeatured_events) == (8, 5, 3)
    store = _store(engine)
    assert store == {
        # Newest first; the purchase (10:03) took i2 out of the cart it entered at 10:02.
        "u1": (
            1,
            (
                RecentInteraction("i3", "add_to_cart", T + 240),
                RecentInteraction("i2", "purchase", T + 180),
                RecentInteraction("i2", "add_to_cart", T + 120),
                RecentInteraction("i1", "view", T + 60),
            ),
            ("i3",),
        ),
        "u2": (1, (RecentInteraction("i3", "click", T),), ()),
    }
    # Re-ingesting the same file stores nothing and changes no feature (no version step).
    again = ingest_logs(engine, _config(), None, _write(tmp_path, "events.csv", EVENTS))
    assert (again.events, again.duplicate_events, again.featured_events) == (0, 8, 0)
    assert _store(engine) == store


def test_a_bad_row_stores_no_event_and_leaves_the_store_unchanged(
    engine: Engine, tmp_path: Path
) -> None:
    ingest_catalog(engine, "shop", items=_write(tmp_path, "items.csv", ITEMS))
    ingest_logs(engine, _config(), _write(tmp_path, "exposures.csv", EXPOSURES), None)
    first = "event_id,unit_id,type,timestamp,item_id\nf1,u1,click,2024-05-01T11:00:00Z,i1\n"
    ingest_logs(engine, _config(), None, _write(tmp_path, "first.csv", first))
    before, events_before = _store(engine), _event_count(engine)
    assert before["u1"][0] == 1
    # Good rows for both units (a first chunk is written before the bad row is read).
    good = "".join(
        f"g{n},u{1 + n % 2},click,2024-05-01T12:00:{n % 60:02d}Z,i{1 + n % 3}\n"
        for n in range(CHUNK_ROWS + 10)
    )
    bad = "event_id,unit_id,type,timestamp,item_id\n" + good + "gx,u1,click,not-a-time,i1\n"
    with pytest.raises(DataError, match=r"bad\.csv: 1 problem; nothing was written"):
        ingest_logs(engine, _config(), None, _write(tmp_path, "bad.csv", bad))
    assert _store(engine) == before
    assert _event_count(engine) == events_before


def test_a_failing_catalogue_file_rolls_back_events_and_features(
    engine: Engine, tmp_path: Path
) -> None:
    """`ingest --events --items` with a bad items file: no event, no feature, no item."""
    config = _write(
        tmp_path,
        "shop.yaml",
        "key: home-recs\ncatalog: shop\nvariants:\n"
        "  - {key: control, weight: 0.5}\n  - {key: treatment, weight: 0.5}\n",
    )
    items = _write(tmp_path, "items.csv", ITEMS + "i4,toys,zed,not-a-price\n")
    events = _write(tmp_path, "events.csv", EVENTS)
    url = engine.url.render_as_string(hide_password=False)
    out = cli("ingest", str(config), "--events", str(events), "--items", str(items), "--db", url)
    assert out.returncode != 0 and "price" in out.stderr, out.stderr
    assert _store(engine) == {} and _event_count(engine) == 0
    items = _write(tmp_path, "items.csv", ITEMS)
    exposures = _write(tmp_path, "exposures.csv", EXPOSURES)
    out = cli(
        "ingest", str(config), "--exposures", str(exposures), "--events", str(events),
        "--items", str(items), "--db", url,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "feature store: 5 events applied, 3 left out (unknown item or unit)" in out.stdout
    assert set(_store(engine)) == {"u1", "u2"}
