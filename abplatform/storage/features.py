"""The feature store (`unit_features`): each unit's online features, every read and write.

`update_features` runs inside the transaction that stores the events (the API writer's), so
an acknowledged event batch and the features it changed commit together. Only events the
transaction newly stored count (a retried batch changes nothing twice), and only those of a
known experiment, on an item of its catalogue, by a known unit (one the experiment has
assigned, or a user of the catalogue); the others update nothing and are returned with the
reason.

Concurrency: on SQLite the writer's transaction holds the database's write lock from its
first insert, so a read-modify-write of a row cannot interleave with another process'. On
PostgreSQL missing rows are first inserted empty (ON CONFLICT DO NOTHING), then every row
is locked with SELECT ... FOR UPDATE in key order (no deadlock between two writers), read,
changed and updated: a concurrent writer of the same unit waits and then reads the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Table

from abplatform.domain import OnlineFeatures, RecentInteraction
from abplatform.storage import models as m
from abplatform.storage.rows import EventRow

FEATURES: Table = m.Base.metadata.tables["unit_features"]
RECENT_LIMIT = 50
"""Interactions kept per unit by default (newest first); `abplatform serve` may change it."""
CART_LIMIT = 100
"""Items a cart holds at most (the oldest are dropped first), as a request's cart."""
# Keys per IN query on SQLite (below its 999 bound parameters with two per key).
SQLITE_CHUNK = 400

FeatureKey = tuple[str, str]
"""(catalogue, unit id): whose features a row holds."""


@dataclass(frozen=True)
class Unfeatured:
    """An event stored but not applied to the feature store, with the reason."""

    index: int  # its position in its batch
    event_id: str
    reason: str


@dataclass(frozen=True)
class FeatureUpdate:
    """What `update_features` did: new versions of the units touched, and per batch the
    number of events applied and the ones that were not (with why)."""

    versions: dict[FeatureKey, int]
    applied: list[int]
    unfeatured: list[list[Unfeatured]]


def update_features(
    conn: Connection,
    batches: Sequence[Sequence[EventRow]],
    new_ids: set[str],
    *,
    recent_limit: int = RECENT_LIMIT,
) -> FeatureUpdate:
    """Apply the events of `batches` stored by this transaction (`new_ids`) to the store.

    One version step per batch per unit it touches. Returns the new versions and, per
    batch, the events applied and those left out (unknown experiment, item or unit).
    """
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    pg = conn.dialect.name == "postgresql"
    try:
        catalogues = _experiment_catalogues(cursor, pg, batches)
        wanted_items: dict[str, set[str]] = {}
        wanted_units: dict[int, set[str]] = {}
        for batch in batches:
            for event in batch:
                catalogue = catalogues.get(event.experiment_id or 0)
                if event.event_id in new_ids and catalogue is not None and event.item_id:
                    wanted_items.setdefault(catalogue, set()).add(event.item_id)
                    wanted_units.setdefault(event.experiment_id or 0, set()).add(event.unit_id)
        items = {c: _known(cursor, pg, _ITEMS_SQL, c, ids) for c, ids in wanted_items.items()}
        units = {e: _known(cursor, pg, _UNITS_SQL, e, ids) for e, ids in wanted_units.items()}
        for experiment_id, ids in wanted_units.items():
            # A unit the experiment has not assigned (yet) is known as a catalogue user.
            unassigned = ids - units[experiment_id]
            if unassigned:
                catalogue = catalogues[experiment_id]
                units[experiment_id] |= _known(cursor, pg, _USERS_SQL, catalogue, unassigned)
        applied: list[int] = []
        unfeatured: list[list[Unfeatured]] = []
        grouped: dict[FeatureKey, dict[int, list[EventRow]]] = {}
        for number, batch in enumerate(batches):
            left_out: list[Unfeatured] = []
            count = 0
            for index, event in enumerate(batch):
                if event.event_id not in new_ids:
                    continue  # a duplicate: applied when it was first stored
                catalogue = catalogues.get(event.experiment_id or 0)
                reason = _reason(event, catalogue, items, units)
                if reason is not None or catalogue is None:
                    left_out.append(Unfeatured(index, event.event_id, reason or ""))
                    continue
                grouped.setdefault((catalogue, event.unit_id), {}).setdefault(number, [])
                grouped[(catalogue, event.unit_id)][number].append(event)
                count += 1
            applied.append(count)
            unfeatured.append(left_out)
        touched = {key: list(per_batch.values()) for key, per_batch in grouped.items()}
        versions = _apply(cursor, pg, touched, recent_limit) if touched else {}
    finally:
        cursor.close()
    return FeatureUpdate(versions, applied, unfeatured)


def _reason(
    event: EventRow,
    catalogue: str | None,
    items: dict[str, set[str]],
    units: dict[int, set[str]],
) -> str | None:
    if event.experiment_id is None:
        return "no experiment: the event's catalogue is unknown"
    if catalogue is None:
        return f"unknown experiment id {event.experiment_id}"
    if event.item_id is None:
        return "no item_id"
    if event.item_id not in items.get(catalogue, set()):
        return f"unknown item {event.item_id!r} (not in catalogue {catalogue!r})"
    if event.unit_id not in units.get(event.experiment_id, set()):
        return (
            f"unknown unit {event.unit_id!r} (not assigned in this experiment, "
            "not a user of its catalogue)"
        )
    return None


def _experiment_catalogues(
    cursor: Any, pg: bool, batches: Sequence[Sequence[EventRow]]
) -> dict[int, str]:
    """{experiment id: catalogue} of the batches' experiments, read in the transaction (an
    id can be reused by a re-created experiment on SQLite, so it is never cached)."""
    ids = sorted({e.experiment_id for b in batches for e in b if e.experiment_id is not None})
    if not ids:
        return {}
    marks = ", ".join(["%s" if pg else "?"] * len(ids))
    cursor.execute(f"SELECT id, catalog FROM experiments WHERE id IN ({marks})", ids)
    return {int(experiment_id): str(catalogue) for experiment_id, catalogue in cursor.fetchall()}


# (query, id column filter): the catalogue's items, the experiment's assigned units.
_ITEMS_SQL = "SELECT item_id FROM catalog_items WHERE catalog = {mark} AND item_id {among}"
_UNITS_SQL = (
    "SELECT DISTINCT unit_id FROM exposures WHERE experiment_id = {mark} AND unit_id {among}"
)
_USERS_SQL = "SELECT user_id FROM users WHERE catalog = {mark} AND user_id {among}"


def _known(cursor: Any, pg: bool, sql: str, owner: Any, ids: set[str]) -> set[str]:
    """Which of `ids` the query finds for `owner` (a catalogue or an experiment id)."""
    found: set[str] = set()
    ordered = sorted(ids)
    if pg:
        cursor.execute(sql.format(mark="%s", among="= ANY(%s)"), (owner, ordered))
        found.update(row[0] for row in cursor.fetchall())
        return found
    for lo in range(0, len(ordered), SQLITE_CHUNK * 2):
        chunk = ordered[lo : lo + SQLITE_CHUNK * 2]
        among = f"IN ({', '.join('?' * len(chunk))})"
        cursor.execute(sql.format(mark="?", among=among), [owner, *chunk])
        found.update(row[0] for row in cursor.fetchall())
    return found


def _apply(
    cursor: Any, pg: bool, touched: dict[FeatureKey, list[list[EventRow]]], recent_limit: int
) -> dict[FeatureKey, int]:
    """Read (locked on PostgreSQL), change and write the touched rows; their new versions.

    The recent interactions are changed as text (see `encode_recent`): in the usual case,
    events newer than every stored one, the new lines are put in front and the text cut
    after `recent_limit` lines, without decoding the stored ones.
    """
    keys = sorted(touched)
    now = datetime.now(UTC).replace(tzinfo=None)
    if pg:
        # One statement each (arrays), not one per row: PostgreSQL's round trips dominate.
        cursor.execute(
            "INSERT INTO unit_features (catalog, unit_id, version, recent, cart, counts, "
            "updated_at) SELECT c, u, 0, '', '[]', '{}', %s "
            "FROM unnest(%s::text[], %s::text[]) AS k(c, u) "
            "ON CONFLICT (catalog, unit_id) DO NOTHING",
            (now, [c for c, _ in keys], [u for _, u in keys]),
        )
    stored = _read_rows(cursor, pg, keys, lock=pg)
    out: dict[FeatureKey, int] = {}
    rows = []
    stamp = now if pg else now.isoformat(" ", "microseconds")
    for key in keys:
        current = stored.get(key)
        version, recent, cart_text, counts_text = current or (0, "", "[]", "{}")
        cart: list[str] = orjson.loads(cart_text) if cart_text != "[]" else []
        counts: dict[str, int] = orjson.loads(counts_text)
        for batch in touched[key]:
            recent, cart = _changed(recent, cart, counts, batch, recent_limit)
            version += 1
        out[key] = version
        rows.append(
            (
                key[0],
                key[1],
                version,
                recent,
                orjson.dumps(cart).decode(),
                orjson.dumps(counts).decode(),
                stamp,
            )
        )
    if pg:
        # One JSON parameter: adapting lists of JSON texts to text[] costs more, client side.
        changed = [{"c": c, "u": u, "v": v, "r": r, "k": k, "n": n} for c, u, v, r, k, n, _ in rows]
        cursor.execute(
            "UPDATE unit_features AS f SET version = v.v, recent = v.r, cart = v.k, "
            "counts = v.n, updated_at = %s FROM jsonb_to_recordset(%s::jsonb) "
            "AS v(c text, u text, v bigint, r text, k text, n text) "
            "WHERE f.catalog = v.c AND f.unit_id = v.u",
            (now, orjson.dumps(changed).decode()),
        )
    else:
        cursor.executemany(
            "INSERT INTO unit_features (catalog, unit_id, version, recent, cart, counts, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (catalog, unit_id) DO UPDATE "
            "SET version = excluded.version, recent = excluded.recent, cart = excluded.cart, "
            "counts = excluded.counts, updated_at = excluded.updated_at",
            rows,
        )
    return out


def encode_recent(entries: Sequence[Sequence[Any]]) -> str:
    """Recent interactions as stored: one JSON `[item, type, unix seconds]` per line, newest
    first (a JSON text never holds a raw newline, so lines split safely)."""
    return "\n".join(orjson.dumps(entry).decode() for entry in entries)


def decode_recent(text: str) -> list[list[Any]]:
    """The stored recent interactions, newest first (`encode_recent` inverted)."""
    if not text:
        return []
    decoded: list[list[Any]] = orjson.loads("[" + text.replace("\n", ",") + "]")
    return decoded


def _newest_seconds(text: str) -> int:
    """The time of the newest stored interaction (the first line)."""
    end = text.find("\n")
    return int(orjson.loads(text if end < 0 else text[:end])[2])


def _first_lines(text: str, limit: int) -> str:
    """The text up to its `limit`-th line (few lines over: cut from the end)."""
    excess = text.count("\n") + 1 - limit
    if excess <= 0:
        return text
    if excess > 8:
        return "\n".join(text.split("\n", limit)[:limit])
    end = len(text)
    for _ in range(excess):
        end = text.rfind("\n", 0, end)
    return text[:end]


def _changed(
    recent: str,
    cart: list[str],
    counts: dict[str, int],
    batch: Sequence[EventRow],
    recent_limit: int,
) -> tuple[str, list[str]]:
    """The recent interactions (text) and cart after one batch's events (`counts` in place).

    Newest first by event time; among equal times, later events of the batch first and
    the batch's events before those stored earlier (they arrived later).
    """
    arrived = [(_seconds(e.ts), position, e) for position, e in enumerate(batch)]
    in_order = arrived
    if any(arrived[i][0] > arrived[i + 1][0] for i in range(len(arrived) - 1)):
        in_order = sorted(arrived, key=lambda t: (t[0], t[1]))
    new: list[list[Any]] = [[e.item_id, e.type, ts] for ts, _, e in reversed(in_order)]
    if not recent or new[-1][2] >= _newest_seconds(recent):  # the usual case: all newer
        merged = encode_recent(new[:recent_limit])
        if recent and len(new) < recent_limit:
            merged = _first_lines(merged + "\n" + recent, recent_limit)
    else:
        stored = decode_recent(recent)
        merged = encode_recent(
            sorted([*new, *stored], key=lambda entry: -int(entry[2]))[:recent_limit]
        )
    live = cart
    for _, _, event in in_order:
        counts[event.type] = counts.get(event.type, 0) + 1
        if event.type == "add_to_cart" and event.item_id not in live:
            if live is cart:
                live = list(cart)
            live.append(str(event.item_id))
        elif event.type == "purchase" and event.item_id in live:
            if live is cart:
                live = list(cart)
            live.remove(str(event.item_id))
    return merged, live[-CART_LIMIT:]


def _seconds(ts: datetime) -> int:
    """Unix seconds of a naive UTC time."""
    return (ts - _EPOCH) // _SECOND


_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
StoredRow = tuple[int, str, str, str]
"""A row as stored: version, recent (`encode_recent`), cart and counts (JSON)."""


def _read_rows(
    cursor: Any, pg: bool, keys: Sequence[FeatureKey], *, lock: bool = False
) -> dict[FeatureKey, StoredRow]:
    """The stored rows of `keys`, not decoded (FOR UPDATE in key order with `lock`)."""
    out: dict[FeatureKey, StoredRow] = {}
    by_catalogue: dict[str, list[str]] = {}
    for catalogue, unit in keys:
        by_catalogue.setdefault(catalogue, []).append(unit)
    columns = "unit_id, version, recent, cart, counts"
    for catalogue, units in sorted(by_catalogue.items()):
        if pg:
            tail = " ORDER BY unit_id FOR UPDATE" if lock else ""
            cursor.execute(
                f"SELECT {columns} FROM unit_features WHERE catalog = %s AND unit_id = ANY(%s)"
                + tail,
                (catalogue, sorted(units)),
            )
            fetched = cursor.fetchall()
        else:
            fetched = []
            for lo in range(0, len(units), SQLITE_CHUNK * 2):
                chunk = units[lo : lo + SQLITE_CHUNK * 2]
                marks = ", ".join("?" * len(chunk))
                cursor.execute(
                    f"SELECT {columns} FROM unit_features "
                    f"WHERE catalog = ? AND unit_id IN ({marks})",
                    [catalogue, *chunk],
                )
                fetched.extend(cursor.fetchall())
        for unit, version, recent, cart, counts in fetched:
            out[(catalogue, unit)] = (int(version), recent, cart, counts)
    return out


def read_features(
    conn: Connection, catalogue: str, units: Iterable[str]
) -> dict[str, OnlineFeatures]:
    """The stored online features of these units of a catalogue (absent: none stored)."""
    return {
        unit: online_features(*row) for unit, row in read_stored(conn, catalogue, units).items()
    }


def read_stored(conn: Connection, catalogue: str, units: Iterable[str]) -> dict[str, StoredRow]:
    """The stored rows of these units of a catalogue, not decoded (`online_features` does)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        rows = _read_rows(
            cursor, conn.dialect.name == "postgresql", [(catalogue, u) for u in units]
        )
    finally:
        cursor.close()
    return {unit: row for (_, unit), row in rows.items()}


def online_features(version: int, recent: str, cart: str, counts: str) -> OnlineFeatures:
    """A stored row as the domain's `OnlineFeatures`."""
    return OnlineFeatures(
        version=version,
        recent=tuple(
            RecentInteraction(str(i), str(t), int(s)) for i, t, s in decode_recent(recent)
        ),
        cart=tuple(orjson.loads(cart)),
        counts=dict(orjson.loads(counts)),
    )


def delete_features(conn: Connection, catalogue: str) -> None:
    """Forget every unit's features in a catalogue (the catalogue is being replaced)."""
    conn.execute(FEATURES.delete().where(FEATURES.c.catalog == catalogue))
