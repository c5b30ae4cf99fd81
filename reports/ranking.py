"""Online ranking quality of each variant's slates: hit rate, NDCG, coverage, diversity, novelty.

Definitions (per variant, over the experiment's exposures):

- hit rate@K: share of slates with at least one click on a shown item;
- NDCG@K: mean over slates of DCG / ideal DCG of the clicked positions (gain 1 per clicked
  item, discount 1 / log2(position + 2)); a slate without clicks scores 0;
- catalog coverage: share of the catalogue shown at least once;
- intra-list diversity: mean pairwise (1 - cosine similarity) of the items within a slate,
  using category, brand and price features, over a seeded sample of slates;
- novelty: mean over impressions of -log2(p(item)), p = the item's share of history
  interactions (add-one smoothed), so showing rarely used items scores high.

One pass reads the slates in exposure-id order, each as one row (its items joined in SQL),
and counts per variant in Python: memory holds the per-item counts (at most the catalogue
per variant), the clicked items and a bounded sample of slates, never the impressions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, text

from abplatform.storage.catalog import load_catalog
from reports.results import RankingQuality
from strategies.features import feature_vectors

DIVERSITY_SAMPLE = 2_000  # slates per variant used for intra-list diversity
SCAN_BATCH = 10_000  # slates fetched at a time
SEPARATOR = "\x1f"  # joins a slate's item ids in SQL (an id containing it is re-read)


def ranking_quality(engine: Engine, experiment_id: int, catalog: str) -> dict[str, RankingQuality]:
    """{variant: RankingQuality} for an experiment's exposures."""
    with engine.connect() as conn:
        slates = _slate_variants(conn, experiment_id)
        if slates is None:
            return {}
        if conn.dialect.name == "postgresql":
            scan = _aggregated(conn, experiment_id, slates)
        else:
            scan = _streamed(conn, experiment_id, slates)
        items = load_catalog(conn, catalog)
        popularity = _popularity(conn, catalog)
    index = items.index()
    vectors = feature_vectors(items) if len(items) else np.zeros((0, 1))
    total_interactions = sum(popularity.values())
    out: dict[str, RankingQuality] = {}
    for code, variant in enumerate(slates.names):
        n = slates.counts[code]
        counts = scan.impressions[code]
        impressions = sum(counts.values())
        novelty = None
        denominator = total_interactions + len(items)
        if impressions and denominator:  # an empty catalogue without history: no novelty
            novelty = (
                sum(
                    counts[item] * -math.log2((popularity.get(item, 0) + 1) / denominator)
                    for item in sorted(counts)
                )
                / impressions
            )
        out[variant] = RankingQuality(
            slates=n,
            hit_rate=scan.hits[code] / n,
            ndcg=scan.dcg[code] / n,
            coverage=len(counts) / len(items) if len(items) else None,
            intra_list_diversity=_diversity(scan.sample[code], index, vectors),
            novelty=novelty,
        )
    return out


@dataclass(frozen=True)
class _SlateVariants:
    """The variant code of every exposure id in the range of the experiment's slates.

    The range bounds the scans of ``impressions`` (keyed by exposure id, position), which
    holds every experiment's slates: without it each query read them all. It adds no row:
    every impression of the experiment's exposures lies in it. Ids of the range that are
    not the experiment's exposures with a slate have code -1. Looking the variant up by
    offset, rather than joining ``exposures`` per impression, is a third of the database's
    work on PostgreSQL.
    """

    names: tuple[str, ...]
    counts: tuple[int, ...]  # slates per variant, aligned with `names`
    low: int
    codes: npt.NDArray[np.int32]  # variant code of exposure `low + i`, or -1

    @property
    def high(self) -> int:
        """The highest exposure id of the range."""
        return self.low + len(self.codes) - 1

    def params(self) -> dict[str, int]:
        """The range as query parameters ``lo`` and ``hi``."""
        return {"lo": self.low, "hi": self.high}

    def codes_of(self, exposure_ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """The variant codes of exposure ids of the range."""
        return self.codes[exposure_ids - self.low]


def _slate_variants(conn: Connection, experiment_id: int) -> _SlateVariants | None:
    """The experiment's exposures with a slate by variant, or None when it has none."""
    rows = conn.execute(
        text(
            "SELECT variant, COUNT(*), MIN(id), MAX(id) FROM exposures "
            "WHERE experiment_id = :e AND slate_size > 0 GROUP BY variant ORDER BY variant"
        ),
        {"e": experiment_id},
    ).all()
    if not rows:
        return None
    names = tuple(str(variant) for variant, _, _, _ in rows)
    low, high = min(int(r[2]) for r in rows), max(int(r[3]) for r in rows)
    codes = np.full(high - low + 1, -1, dtype=np.int32)
    for code, name in enumerate(names):
        ids = conn.execute(
            text(
                "SELECT id FROM exposures "
                "WHERE experiment_id = :e AND variant = :v AND slate_size > 0"
            ),
            {"e": experiment_id, "v": name},
        ).scalars()
        codes[np.array(ids.all(), dtype=np.int64) - low] = code
    return _SlateVariants(names, tuple(int(r[1]) for r in rows), low, codes)


@dataclass
class _SlateScan:
    """Per variant code: item impressions, click gains and the diversity sample."""

    impressions: list[Counter[str]]  # impressions of each item
    hits: list[int]  # slates with a click on a shown item
    dcg: list[float]  # sum over slates of their NDCG, in exposure-id order
    sample: list[list[list[str]]]  # the first `DIVERSITY_SAMPLE` slates (lowest exposure ids)

    @classmethod
    def empty(cls, variants: int) -> _SlateScan:
        """Nothing counted yet, for `variants` variant codes."""
        return cls(
            [Counter() for _ in range(variants)],
            [0] * variants,
            [0.0] * variants,
            [[] for _ in range(variants)],
        )

    def add_clicks(self, code: int, positions: Sequence[int]) -> None:
        """One slate whose items at `positions` (ascending) were clicked."""
        if not positions:
            return
        dcg = sum(1.0 / math.log2(p + 2) for p in positions)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(len(positions)))
        self.hits[code] += 1
        self.dcg[code] += dcg / ideal


def _aggregated(conn: Connection, experiment_id: int, slates: _SlateVariants) -> _SlateScan:
    """PostgreSQL: hash aggregates in the database, a few thousand rows back."""
    scan = _SlateScan.empty(len(slates.names))
    counts = conn.execute(
        text(
            "SELECT s.v, s.item_id, COUNT(*) FROM ("
            "  SELECT (CAST(:codes AS int4[]))[i.exposure_id - :lo + 1] AS v, i.item_id"
            "  FROM impressions i WHERE i.exposure_id BETWEEN :lo AND :hi) s "
            "WHERE s.v >= 0 GROUP BY s.v, s.item_id"
        ),
        {"codes": slates.codes.tolist(), **slates.params()},
    )
    for code, item, count in counts:
        scan.impressions[code][item] = int(count)
    clicked = conn.execute(
        text(
            "SELECT e.exposure_id, i.position FROM events e JOIN impressions i "
            "ON i.exposure_id = e.exposure_id AND i.item_id = e.item_id "
            "WHERE e.experiment_id = :e AND e.type = 'click' "
            "AND e.exposure_id BETWEEN :lo AND :hi GROUP BY e.exposure_id, i.position"
        ),
        {"e": experiment_id, **slates.params()},
    ).all()
    positions: dict[int, list[int]] = {}
    for exposure, position in clicked:
        positions.setdefault(int(exposure), []).append(int(position))
    exposures = np.fromiter(sorted(positions), dtype=np.int64, count=len(positions))
    for exposure, code in zip(exposures.tolist(), slates.codes_of(exposures).tolist(), strict=True):
        if code >= 0:
            scan.add_clicks(code, sorted(positions[exposure]))
    for code, variant in enumerate(slates.names):
        scan.sample[code] = _slate_sample(conn, experiment_id, variant)
    return scan


def _slate_sample(conn: Connection, experiment_id: int, variant: str) -> list[list[str]]:
    """The variant's `DIVERSITY_SAMPLE` slates of lowest exposure id, read in id order."""
    rows = conn.execute(
        text(
            "SELECT i.exposure_id, i.item_id FROM impressions i JOIN ("
            "  SELECT id FROM exposures"
            "  WHERE experiment_id = :e AND variant = :v AND slate_size > 0"
            "  ORDER BY id LIMIT :n) x ON x.id = i.exposure_id "
            "ORDER BY i.exposure_id, i.position"
        ),
        {"e": experiment_id, "v": variant, "n": DIVERSITY_SAMPLE},
    ).all()
    slates: dict[int, list[str]] = {}
    for exposure, item in rows:
        slates.setdefault(exposure, []).append(item)
    return list(slates.values())


def _streamed(conn: Connection, experiment_id: int, slates: _SlateVariants) -> _SlateScan:
    """SQLite: one pass over the slates in key order, each slate one row, counted in Python.

    SQLite aggregates by sorting, so per-item counts in SQL sort every impression; grouping
    by the leading key column instead streams. Memory holds the per-item counts, the
    clicked items and the sample, never the impressions.
    """
    scan = _SlateScan.empty(len(slates.names))
    clicks: dict[int, set[str]] = {}
    for exposure, item in conn.execute(
        text(
            "SELECT exposure_id, item_id FROM events WHERE experiment_id = :e "
            "AND type = 'click' AND exposure_id BETWEEN :lo AND :hi AND item_id IS NOT NULL"
        ),
        {"e": experiment_id, **slates.params()},
    ).all():
        clicks.setdefault(int(exposure), set()).add(item)
    # group_concat joins in visiting order: the subquery's, i.e. the primary key's.
    result = conn.execution_options(stream_results=True).execute(
        text(
            "SELECT exposure_id, COUNT(*), MIN(position), MAX(position), "
            f"group_concat(item_id, char({ord(SEPARATOR)})) FROM ("
            "  SELECT exposure_id, position, item_id FROM impressions"
            "  WHERE exposure_id BETWEEN :lo AND :hi ORDER BY exposure_id, position) "
            "GROUP BY exposure_id ORDER BY exposure_id"
        ),
        slates.params(),
    )
    for batch in result.partitions(SCAN_BATCH):
        ids = np.fromiter((row[0] for row in batch), dtype=np.int64, count=len(batch))
        joined: list[list[tuple[int, int, str]]] = [[] for _ in slates.names]
        for row, code in zip(batch, slates.codes_of(ids).tolist(), strict=True):
            if code < 0:
                continue
            exposure, count, first, last, text_ = row
            clicked = clicks.get(exposure)
            regular = first == 0 and last == count - 1  # positions 0..count-1
            if clicked is None and regular and len(scan.sample[code]) >= DIVERSITY_SAMPLE:
                joined[code].append((exposure, count, text_))  # counted per batch below
                continue
            items = text_.split(SEPARATOR)
            positions: Sequence[int] = range(count)
            if len(items) != count or not regular:
                positions, items = _slate(conn, exposure)  # an id with SEPARATOR, or gaps
            scan.impressions[code].update(items)
            if len(scan.sample[code]) < DIVERSITY_SAMPLE:
                scan.sample[code].append(items)
            if clicked is not None:
                hit = [p for p, item in zip(positions, items, strict=True) if item in clicked]
                scan.add_clicks(code, hit)
        for code, slates_of_code in enumerate(joined):
            _count_items(conn, scan.impressions[code], slates_of_code)
    return scan


def _count_items(
    conn: Connection, counts: Counter[str], slates: list[tuple[int, int, str]]
) -> None:
    """Add the items of (exposure id, size, joined items) slates to `counts`, in one split.

    A slate whose split has not `size` items holds an id containing SEPARATOR: it is read
    again row by row.
    """
    if not slates:
        return
    items = SEPARATOR.join(joined for _, _, joined in slates).split(SEPARATOR)
    if len(items) == sum(size for _, size, _ in slates):
        counts.update(items)
        return
    for exposure, size, joined in slates:
        parts = joined.split(SEPARATOR)
        counts.update(parts if len(parts) == size else _slate(conn, exposure)[1])


def _slate(conn: Connection, exposure_id: int) -> tuple[list[int], list[str]]:
    """One slate's positions and items in position order, read row by row."""
    rows = conn.execute(
        text("SELECT position, item_id FROM impressions WHERE exposure_id = :x ORDER BY position"),
        {"x": exposure_id},
    ).all()
    return [int(position) for position, _ in rows], [item for _, item in rows]


def _popularity(conn: Connection, catalog: str) -> dict[str, int]:
    rows = conn.execute(
        text("SELECT item_id, COUNT(*) FROM interactions WHERE catalog = :c GROUP BY item_id"),
        {"c": catalog},
    ).all()
    return {item: int(count) for item, count in rows}


def _diversity(slates: list[list[str]], index: dict[str, int], vectors: np.ndarray) -> float | None:
    values = []
    for slate in slates:
        rows = [index[item] for item in slate if item in index]
        if len(rows) < 2:
            continue
        v = vectors[rows]
        similarity = v @ v.T
        n = len(rows)
        mean_similarity = (similarity.sum() - np.trace(similarity)) / (n * (n - 1))
        values.append(1.0 - mean_similarity)
    return float(np.mean(values)) if values else None
