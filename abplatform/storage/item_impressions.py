"""The item_impressions table: how often each variant's slates showed each item, by source.

Its one reader and writer. `storage.rows` adds to it in the same transaction that stores the
impressions, so it always equals ``impressions`` grouped by (experiment, variant, source,
item); ranking quality reads it instead of every impression. Additions are upserts in a
fixed key order, so concurrent writers (API workers on PostgreSQL) take the rows' locks in
the same order and never deadlock on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Table, text

from abplatform.storage import models as m

ITEM_IMPRESSIONS: Table = m.Base.metadata.tables["item_impressions"]
NO_SOURCE = ""
"""The source of an item whose slate records none."""

Key = tuple[str, str, str]
"""(variant, source, item id)."""

_SQLITE_CHUNK = 200  # rows per multi-row upsert (4 bound values each)
_UPSERT_TAIL = (
    "ON CONFLICT (experiment_id, variant, source, item_id) "
    "DO UPDATE SET impressions = item_impressions.impressions + excluded.impressions"
)


def count_slates(
    variants: Sequence[str],
    slates: Sequence[Sequence[str]],
    sources: Sequence[Sequence[str | None] | None],
) -> Counter[Key]:
    """Impressions per (variant, source, item) of slates given one row per exposure."""
    counts: Counter[Key] = Counter()
    for variant, items, item_sources in zip(variants, slates, sources, strict=True):
        if item_sources is None:
            counts.update((variant, NO_SOURCE, item) for item in items)
        else:
            named = [NO_SOURCE if s is None else s for s in item_sources]
            counts.update(zip([variant] * len(items), named, items, strict=True))
    return counts


def count_columns(
    variants: npt.ArrayLike, items: npt.ArrayLike, sources: npt.ArrayLike | None = None
) -> Counter[Key]:
    """Impressions per (variant, source, item) of parallel per-impression columns (vectorised)."""
    v_names, v_codes = np.unique(np.asarray(variants).astype(str), return_inverse=True)
    i_names, i_codes = np.unique(np.asarray(items).astype(str), return_inverse=True)
    if sources is None:
        s_names, s_codes = np.array([NO_SOURCE]), np.zeros(len(i_codes), dtype=np.int64)
    else:
        named = np.asarray(sources, dtype=object)
        named[[value is None for value in named]] = NO_SOURCE  # an item without a source
        s_names, s_codes = np.unique(named.astype(str), return_inverse=True)
    combined = (v_codes.astype(np.int64) * len(s_names) + s_codes) * len(i_names) + i_codes
    keys, counts = np.unique(combined, return_counts=True)
    v, rest = np.divmod(keys, len(s_names) * len(i_names))
    s, i = np.divmod(rest, len(i_names))
    return Counter(
        {
            (str(v_names[a]), str(s_names[b]), str(i_names[c])): int(n)
            for a, b, c, n in zip(v.tolist(), s.tolist(), i.tolist(), counts.tolist(), strict=True)
        }
    )


def add_impressions(conn: Connection, experiment_id: int, counts: Mapping[Key, int]) -> None:
    """Add `counts` to the experiment's stored counts (in the caller's transaction)."""
    rows = sorted((key, n) for key, n in counts.items() if n)
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "INSERT INTO item_impressions "
                "(experiment_id, variant, source, item_id, impressions) "
                "SELECT :e, v, s, i, n FROM unnest("
                "CAST(:v AS text[]), CAST(:s AS text[]), CAST(:i AS text[]), "
                "CAST(:n AS bigint[])) WITH ORDINALITY AS t(v, s, i, n, o) ORDER BY o "
                + _UPSERT_TAIL
            ),
            {
                "e": experiment_id,
                "v": [key[0] for key, _ in rows],
                "s": [key[1] for key, _ in rows],
                "i": [key[2] for key, _ in rows],
                "n": [n for _, n in rows],
            },
        )
        return
    for start in range(0, len(rows), _SQLITE_CHUNK):
        chunk = rows[start : start + _SQLITE_CHUNK]
        values = ", ".join(f"({experiment_id}, ?, ?, ?, ?)" for _ in chunk)
        flat = [value for (v, s, i), n in chunk for value in (v, s, i, n)]
        conn.exec_driver_sql(
            "INSERT INTO item_impressions (experiment_id, variant, source, item_id, impressions) "
            f"VALUES {values} " + _UPSERT_TAIL,
            tuple(flat),
        )


def item_impressions(conn: Connection, experiment_id: int) -> dict[str, Counter[str]]:
    """{variant: {item id: impressions}} over all sources."""
    out: dict[str, Counter[str]] = {}
    for variant, item, n in conn.execute(
        text(
            "SELECT variant, item_id, SUM(impressions) FROM item_impressions "
            "WHERE experiment_id = :e GROUP BY variant, item_id"
        ),
        {"e": experiment_id},
    ):
        out.setdefault(str(variant), Counter())[str(item)] = int(n)
    return out


def source_impressions(conn: Connection, experiment_id: int) -> dict[tuple[str, str], int]:
    """{(variant, source): impressions}."""
    rows = conn.execute(
        text(
            "SELECT variant, source, SUM(impressions) FROM item_impressions "
            "WHERE experiment_id = :e GROUP BY variant, source"
        ),
        {"e": experiment_id},
    )
    return {(str(v), str(s)): int(n) for v, s, n in rows}


def delete_item_impressions(conn: Connection, experiment_ids: Iterable[int]) -> None:
    """Forget the counts of these experiments (their impressions are being deleted)."""
    ids = list(experiment_ids)
    if ids:
        conn.execute(ITEM_IMPRESSIONS.delete().where(ITEM_IMPRESSIONS.c.experiment_id.in_(ids)))
