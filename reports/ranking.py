"""Online ranking quality of each variant's slates: hit rate, NDCG, coverage, diversity, novelty.

Definitions (per variant, over the experiment's exposures):

- hit rate@K: share of slates with at least one click on a shown item;
- NDCG@K: mean over slates of DCG / ideal DCG of the clicked positions (gain 1 per clicked
  item at its first position in the slate, discount 1 / log2(position + 2)); a slate
  without clicks scores 0;
- catalog coverage: share of the catalogue shown at least once;
- intra-list diversity: mean pairwise (1 - cosine similarity) of the items within a slate,
  using category, brand and price features, over the variant's first slates by exposure id;
- novelty: mean over impressions of -log2(p(item)), p = the item's share of history
  interactions (add-one smoothed), so showing rarely used items scores high.

Coverage and novelty read the per-item impression counts that are kept as slates are stored
(`abplatform.storage.item_impressions`), hit rate and NDCG the click events with the slate
position stored with each, diversity the variant's first slates by exposure id:
no query reads every impression, and memory holds at most the catalogue per variant.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, text

from abplatform.storage.catalog import load_catalog
from abplatform.storage.item_impressions import item_impressions
from reports.results import RankingQuality
from strategies.features import feature_vectors

DIVERSITY_SAMPLE = 2_000  # slates per variant used for intra-list diversity


def ranking_quality(engine: Engine, experiment_id: int, catalog: str) -> dict[str, RankingQuality]:
    """{variant: RankingQuality} for an experiment's exposures."""
    with engine.connect() as conn:
        slates = _slates(conn, experiment_id)
        if not slates:
            return {}
        shown = item_impressions(conn, experiment_id)
        gains = _click_gains(conn, experiment_id, list(slates))
        samples = {
            variant: _slate_sample(conn, experiment_id, variant, low)
            for variant, (_, low) in slates.items()
        }
        items = load_catalog(conn, catalog)
        popularity = _popularity(conn, catalog)
    index = items.index()
    vectors = feature_vectors(items) if len(items) else np.zeros((0, 1))
    total_interactions = sum(popularity.values())
    out: dict[str, RankingQuality] = {}
    for variant, (n, _) in slates.items():
        counts = shown.get(variant, Counter())
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
        hits, dcg = gains.get(variant, (0, 0.0))
        out[variant] = RankingQuality(
            slates=n,
            hit_rate=hits / n,
            ndcg=dcg / n,
            coverage=len(counts) / len(items) if len(items) else None,
            intra_list_diversity=_diversity(samples[variant], index, vectors),
            novelty=novelty,
        )
    return out


def _slates(conn: Connection, experiment_id: int) -> dict[str, tuple[int, int]]:
    """{variant: (exposures with a slate, the lowest of their ids)}, variants in order."""
    rows = conn.execute(
        text(
            "SELECT variant, COUNT(*), MIN(id) FROM exposures "
            "WHERE experiment_id = :e AND slate_size > 0 GROUP BY variant ORDER BY variant"
        ),
        {"e": experiment_id},
    ).all()
    return {str(variant): (int(n), int(low)) for variant, n, low in rows}


def _click_gains(
    conn: Connection, experiment_id: int, variants: list[str]
) -> dict[str, tuple[int, float]]:
    """{variant: (slates with a click on a shown item, sum of their NDCG)}.

    A slate's clicked positions are the first positions of its items that have a click
    event on that exposure: stored with the event (`events.position`), or looked up in the
    impressions for events stored before their exposure. NDCG sums run in exposure-id order.
    Rows come back as plain integers (variant code, exposure id, position; -1 when the item
    was not in the slate), straight from the driver's cursor into NumPy.
    """
    codes_sql = " ".join(f"WHEN :v{i} THEN {i}" for i in range(len(variants)))
    result = conn.execute(
        text(
            f"SELECT CASE x.variant {codes_sql} ELSE -1 END, e.exposure_id, "
            "COALESCE(e.position, ("
            "  SELECT MIN(i.position) FROM impressions i"
            "  WHERE i.exposure_id = e.exposure_id AND i.item_id = e.item_id), -1) "
            "FROM events e JOIN exposures x ON x.id = e.exposure_id "
            "WHERE e.experiment_id = :e AND e.type = 'click' "
            "AND x.experiment_id = :e AND x.slate_size > 0"
        ),
        {"e": experiment_id, **{f"v{i}": v for i, v in enumerate(variants)}},
    )
    # 170,000 click rows: the driver's tuples, not SQLAlchemy rows (a third of the time).
    rows = np.array(result.cursor.fetchall() if result.cursor else [], dtype=np.int64)
    result.close()
    if rows.size == 0:
        return {}
    rows = rows[(rows[:, 2] >= 0) & (rows[:, 0] >= 0)]  # -1: the item was not in the slate
    if rows.size == 0:
        return {}
    codes, exposure, position = rows[:, 0], rows[:, 1], rows[:, 2]
    order = np.lexsort((position, exposure))
    exposure, position, codes = exposure[order], position[order], codes[order]
    distinct = np.ones(len(exposure), dtype=bool)  # one click counted per (slate, position)
    distinct[1:] = (exposure[1:] != exposure[:-1]) | (position[1:] != position[:-1])
    exposure, position, codes = exposure[distinct], position[distinct], codes[distinct]
    starts = np.flatnonzero(np.r_[True, exposure[1:] != exposure[:-1]])
    ratios = _ndcg_of_slates(position, starts)
    slate_codes = codes[starts]
    gains: dict[str, tuple[int, float]] = {}
    for code, name in enumerate(variants):
        mine = np.flatnonzero(slate_codes == code)
        if mine.size == 0:
            continue
        total = 0.0
        for ratio in ratios[mine].tolist():  # in exposure-id order, one addition at a time
            total += ratio
        gains[str(name)] = (len(mine), total)
    return gains


def _ndcg_of_slates(
    position: npt.NDArray[np.int64], starts: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Each slate's NDCG from its distinct clicked positions (ascending, slates at `starts`).

    Slates with the same clicked positions share one value, computed once in Python exactly
    as a slate's own sum would be: the positions as a bit mask when they fit in 63 bits.
    """
    ends = np.r_[starts[1:], len(position)]
    if position.size and int(position.max()) < 63:
        masks = np.bitwise_or.reduceat(np.left_shift(np.int64(1), position), starts)
        distinct, inverse = np.unique(masks, return_inverse=True)
        keys = [tuple(p for p in range(63) if mask >> p & 1) for mask in distinct.tolist()]
    else:
        slates = [tuple(position[a:b].tolist()) for a, b in zip(starts, ends, strict=True)]
        unique = sorted(set(slates))
        index = {key: i for i, key in enumerate(unique)}
        keys, inverse = unique, np.array([index[key] for key in slates], dtype=np.int64)
    values = np.array([_ndcg(key) for key in keys], dtype=np.float64)
    ratios: npt.NDArray[np.float64] = values[inverse]
    return ratios


def _ndcg(positions: tuple[int, ...]) -> float:
    """DCG / ideal DCG of one slate's clicked positions (ascending)."""
    dcg = sum(1.0 / math.log2(p + 2) for p in positions)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(len(positions)))
    return dcg / ideal


def _slate_sample(conn: Connection, experiment_id: int, variant: str, low: int) -> list[list[str]]:
    """The variant's `DIVERSITY_SAMPLE` slates of lowest exposure id (from `low`, the lowest
    one: the key scan starts there, not at other experiments' ids), read in id order."""
    rows = conn.execute(
        text(
            "SELECT i.exposure_id, i.item_id FROM impressions i JOIN ("
            "  SELECT id FROM exposures"
            "  WHERE experiment_id = :e AND variant = :v AND slate_size > 0 AND id >= :low"
            "  ORDER BY id LIMIT :n) x ON x.id = i.exposure_id "
            "ORDER BY i.exposure_id, i.position"
        ),
        {"e": experiment_id, "v": variant, "n": DIVERSITY_SAMPLE, "low": low},
    ).all()
    slates: dict[int, list[str]] = {}
    for exposure, item in rows:
        slates.setdefault(exposure, []).append(item)
    return list(slates.values())


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
