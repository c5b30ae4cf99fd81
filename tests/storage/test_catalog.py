"""The catalogue tables: writing items, users and history, reading them back, deleting them."""

from __future__ import annotations

import json

import numpy as np

from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.catalog import (
    ItemFields,
    StoredUser,
    delete_catalog,
    insert_interactions,
    insert_items,
    insert_users,
    load_history,
    stored_interactions,
    stored_item_ids,
    stored_users,
    update_items,
    update_user_features,
)
from abplatform.storage.db import open_database


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


def test_catalogue_writes_reads_and_delete(db_url: str) -> None:
    engine = open_database(db_url)
    with engine.begin() as conn:
        added = insert_items(conn, "shop", ["a", "b"], ItemFields(category=["x", "y"]))
        insert_items(conn, "other", ["a"], ItemFields())
        ids = stored_item_ids(conn, "shop")
        update_items(conn, [ids["b"]], ItemFields(brand=np.array(["k"]), price=[2.5]))
        insert_users(conn, "shop", ["u1"], [{"age_band": "25-34"}])
        insert_users(conn, "shop", np.array(["u2"]))  # no features
        users = stored_users(conn, "shop")
        update_user_features(conn, [users["u2"].row_id], [{"plan": "pro"}])
        history = insert_interactions(
            conn,
            "shop",
            user_ids=["u1", "u2"],
            item_ids=["b", "a"],
            types=["click", "rating"],
            values=np.array([np.nan, 4.0]),  # NaN is stored NULL
            seconds=[200, 100],
        )
        stored = sorted(stored_interactions(conn, "shop"))
    assert (added, history) == (2, 2)
    assert stored == [("u1", "b", "click", None, 200), ("u2", "a", "rating", 4.0, 100)]
    assert ids == {"a": ids["a"], "b": ids["a"] + 1}  # the dense index follows the insert order
    assert users["u1"] == StoredUser(users["u1"].row_id, {"age_band": "25-34"})
    assert users["u2"].features == {}
    with engine.begin() as conn:
        log = load_history(conn, "shop")
        delete_catalog(conn, "shop")
        assert stored_item_ids(conn, "shop") == {}
        assert stored_users(conn, "shop") == {}
        assert list(stored_interactions(conn, "shop")) == []
        assert list(stored_item_ids(conn, "other")) == ["a"]  # other catalogues stay
    assert log.catalog.categories.tolist() == ["x", "y"]
    assert log.catalog.brands.tolist() == ["", "k"]
    assert log.catalog.prices.tolist()[1] == 2.5
    assert log.user_features == {"u1": {"age_band": "25-34"}, "u2": {"plan": "pro"}}
    assert log.values[0] == 4.0 and np.isnan(log.values[1])
    engine.dispose()
