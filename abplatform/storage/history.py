"""Read a catalogue and its interaction history from SQL into columnar domain objects."""

from __future__ import annotations

import numpy as np
from sqlalchemy import Connection, select

from abplatform.domain import Catalog, InteractionLog
from abplatform.storage import models as m

EPOCH = np.datetime64("1970-01-01T00:00:00", "us")


def _seconds(values: list[object]) -> np.ndarray:
    stamps = np.array(values, dtype="datetime64[us]")
    return ((stamps - EPOCH) // np.timedelta64(1, "s")).astype(np.int64)


def load_catalog(conn: Connection, catalog: str) -> Catalog:
    """Items of a catalogue ordered by their row id (the dense index)."""
    t = m.CatalogItem.__table__
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
    t = m.Interaction.__table__
    rows = conn.execute(
        select(t.c.user_id, t.c.item_id, t.c.type, t.c.value, t.c.ts)
        .where(t.c.catalog == catalog)
        .order_by(t.c.ts, t.c.id)
    ).all()
    if rows:
        users, items, types, values, stamps = (list(col) for col in zip(*rows, strict=True))
    else:
        users, items, types, values, stamps = [], [], [], [], []
    profiles = m.User.__table__
    features = {
        str(user): dict(values)
        for user, values in conn.execute(
            select(profiles.c.user_id, profiles.c.features).where(profiles.c.catalog == catalog)
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
