"""Reading a catalogue's history and user profiles back from SQL."""

from __future__ import annotations

import json

from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.db import open_database
from abplatform.storage.history import load_history


def test_history_with_user_profiles(db_url: str) -> None:
    engine = open_database(db_url)
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "catalog_items",
            {
                "catalog": ["shop", "shop"],
                "item_id": ["a", "b"],
                "category": ["x", "y"],
                "brand": [None, "k"],
                "price": [1.5, None],
            },
        )
        bulk_insert(
            conn,
            "users",
            {
                "catalog": ["shop", "shop"],
                "user_id": ["u1", "u2"],
                "features": [json.dumps({"age_band": "25-34"}), json.dumps({})],
            },
        )
        bulk_insert(
            conn,
            "interactions",
            {
                "catalog": ["shop", "shop"],
                "user_id": ["u1", "u2"],
                "item_id": ["b", "a"],
                "type": ["click", "purchase"],
                "value": [None, 1.5],
                "ts": seconds_to_sql([200, 100]),
            },
        )
    with engine.connect() as conn:
        log = load_history(conn, "shop")
    assert log.catalog.item_ids.tolist() == ["a", "b"]
    assert log.catalog.brands.tolist() == ["", "k"]
    assert log.user_ids.tolist() == ["u2", "u1"]  # time order
    assert log.timestamps.tolist() == [100, 200]
    assert log.user_features == {"u1": {"age_band": "25-34"}}  # empty profiles are left out
    engine.dispose()
