"""The catalogue tables (catalog_items, users, interactions): every write, delete and read."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import BigInteger, Connection, Integer, Table, bindparam, func, select

from abplatform.domain import Catalog, InteractionLog
from abplatform.storage import models as m
from abplatform.storage.bulk import Column, as_list, bulk_insert, seconds_to_sql

ITEMS: Table = m.Base.metadata.tables["catalog_items"]
USERS: Table = m.Base.metadata.tables["users"]
INTERACTIONS: Table = m.Base.metadata.tables["interactions"]

EPOCH = np.datetime64("1970-01-01T00:00:00", "us")

StoredInteraction = tuple[str, str, str, float | None, int]
"""(user id, item id, type, value or None, Unix seconds) of a stored interaction."""


@dataclass(frozen=True)
class ItemFields:
    """The optional columns of items, parallel to their ids; a column left None is not written."""

    category: Column | None = None
    brand: Column | None = None
    price: Column | None = None
    title: Column | None = None
    tags: Column | None = None

    def given(self) -> dict[str, Column]:
        """The columns given, by name, in table order."""
        found = ((field.name, getattr(self, field.name)) for field in fields(self))
        return {name: values for name, values in found if values is not None}


@dataclass(frozen=True)
class StoredUser:
    """A stored user's row id and profile features."""

    row_id: int
    features: dict[str, str]


# Writes and deletes.


def insert_items(conn: Connection, catalog: str, item_ids: Column, items: ItemFields) -> int:
    """Insert new items (dense index = row id, in this order); return how many."""
    n = len(item_ids)
    columns = {"catalog": [catalog] * n, "item_id": item_ids, **items.given()}
    return bulk_insert(conn, "catalog_items", columns)


def update_items(conn: Connection, row_ids: Sequence[int], items: ItemFields) -> None:
    """Set the given columns of stored items, by row id (the other columns keep their values)."""
    given = items.given()
    if not row_ids or not given:
        return
    statement = (
        ITEMS.update()
        .where(ITEMS.c.id == bindparam("row_id"))
        .values({name: bindparam(f"new_{name}") for name in given})
    )
    names = [f"new_{name}" for name in given]
    columns = [as_list(values) for values in given.values()]
    conn.execute(
        statement,
        [
            {"row_id": row_id, **dict(zip(names, values, strict=True))}
            for row_id, *values in zip(row_ids, *columns, strict=True)
        ],
    )


def insert_users(
    conn: Connection,
    catalog: str,
    user_ids: Column,
    features: Sequence[dict[str, str]] | None = None,
) -> int:
    """Insert new users with their profile features (None: none for anyone); return how many."""
    n = len(user_ids)
    encoded = ["{}"] * n if features is None else [json.dumps(f, sort_keys=True) for f in features]
    columns = {"catalog": [catalog] * n, "user_id": user_ids, "features": encoded}
    return bulk_insert(conn, "users", columns)


def update_user_features(
    conn: Connection, row_ids: Sequence[int], features: Sequence[dict[str, str]]
) -> None:
    """Replace the profile features of stored users, by row id."""
    if not row_ids:
        return
    statement = (
        USERS.update()
        .where(USERS.c.id == bindparam("row_id"))
        .values(features=bindparam("new_features"))
    )
    rows = zip(row_ids, features, strict=True)
    conn.execute(statement, [{"row_id": r, "new_features": f} for r, f in rows])


def insert_interactions(
    conn: Connection,
    catalog: str,
    *,
    user_ids: Column,
    item_ids: Column,
    types: Column,
    values: Column,
    seconds: npt.ArrayLike,
) -> int:
    """Insert history interactions as parallel columns; return how many.

    `values` holds None where no value was given (a float array may hold NaN there);
    `seconds` are Unix seconds.
    """
    if isinstance(values, np.ndarray):
        values = [None if math.isnan(v) else v for v in values.tolist()]
    columns = {
        "catalog": [catalog] * len(user_ids),
        "user_id": user_ids,
        "item_id": item_ids,
        "type": types,
        "value": values,
        "ts": seconds_to_sql(seconds),
    }
    return bulk_insert(conn, "interactions", columns)


def delete_catalog(conn: Connection, catalog: str) -> None:
    """Delete a catalogue's history, users and items."""
    conn.execute(INTERACTIONS.delete().where(INTERACTIONS.c.catalog == catalog))
    conn.execute(USERS.delete().where(USERS.c.catalog == catalog))
    conn.execute(ITEMS.delete().where(ITEMS.c.catalog == catalog))


# Reads.


def item_count(conn: Connection, catalog: str) -> int:
    """How many items the catalogue holds."""
    count = conn.execute(
        select(func.count()).select_from(ITEMS).where(ITEMS.c.catalog == catalog)
    ).scalar_one()
    return int(count)


def stored_item_ids(conn: Connection, catalog: str) -> dict[str, int]:
    """Item id -> row id of the catalogue's stored items."""
    rows = conn.execute(select(ITEMS.c.item_id, ITEMS.c.id).where(ITEMS.c.catalog == catalog))
    return {str(item): int(row_id) for item, row_id in rows}


def stored_users(conn: Connection, catalog: str) -> dict[str, StoredUser]:
    """User id -> row id and features of the catalogue's stored users."""
    rows = conn.execute(
        select(USERS.c.id, USERS.c.user_id, USERS.c.features).where(USERS.c.catalog == catalog)
    )
    return {
        str(user): StoredUser(int(row_id), dict(features or {})) for row_id, user, features in rows
    }


def stored_interactions(conn: Connection, catalog: str) -> Iterator[StoredInteraction]:
    """Every stored interaction of the catalogue, streamed from the query (in no order)."""
    t = INTERACTIONS
    if conn.dialect.name == "postgresql":
        seconds: Any = func.cast(func.extract("epoch", t.c.ts), BigInteger)
    else:
        seconds = func.cast(func.strftime("%s", t.c.ts), Integer)
    rows = conn.execute(
        select(t.c.user_id, t.c.item_id, t.c.type, t.c.value, seconds).where(t.c.catalog == catalog)
    )
    return ((u, i, k, v, int(s)) for u, i, k, v, s in rows)


def _seconds(values: list[object]) -> np.ndarray:
    stamps = np.array(values, dtype="datetime64[us]")
    return ((stamps - EPOCH) // np.timedelta64(1, "s")).astype(np.int64)


def load_catalog(conn: Connection, catalog: str) -> Catalog:
    """Items of a catalogue ordered by their row id (the dense index)."""
    t = ITEMS
    rows = conn.execute(
        select(t.c.item_id, t.c.category, t.c.brand, t.c.price, t.c.tags)
        .where(t.c.catalog == catalog)
        .order_by(t.c.id)
    ).all()
    return Catalog(
        item_ids=np.array([r[0] for r in rows], dtype=str),
        categories=np.array([r[1] or "" for r in rows], dtype=str),
        brands=np.array([r[2] or "" for r in rows], dtype=str),
        prices=np.array([r[3] if r[3] is not None else np.nan for r in rows], dtype=np.float64),
        tags=np.array([r[4] or "" for r in rows], dtype=str),
    )


def load_history(conn: Connection, catalog: str) -> InteractionLog:
    """The catalogue, every interaction of its history in time order, and user profiles."""
    t = INTERACTIONS
    rows = conn.execute(
        select(t.c.user_id, t.c.item_id, t.c.type, t.c.value, t.c.ts)
        .where(t.c.catalog == catalog)
        .order_by(t.c.ts, t.c.id)
    ).all()
    if rows:
        users, items, types, values, stamps = (list(col) for col in zip(*rows, strict=True))
    else:
        users, items, types, values, stamps = [], [], [], [], []
    features = {
        str(user): dict(values)
        for user, values in conn.execute(
            select(USERS.c.user_id, USERS.c.features).where(USERS.c.catalog == catalog)
        )
        if values
    }
    return InteractionLog(
        catalog=load_catalog(conn, catalog),
        user_ids=np.array(users, dtype=str),
        item_ids=np.array(items, dtype=str),
        event_types=np.array(types, dtype=str),
        values=np.array([v if v is not None else np.nan for v in values], dtype=np.float64),
        timestamps=_seconds(stamps) if stamps else np.zeros(0, dtype=np.int64),
        user_features=features,
    )
