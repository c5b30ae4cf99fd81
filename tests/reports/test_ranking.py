"""Online ranking quality against hand-computed values, on SQLite and PostgreSQL."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import Engine, text

from abplatform.config import load_experiment_text
from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.db import open_database, transaction
from abplatform.storage.repository import save_experiment
from abplatform.storage.rows import insert_impressions
from reports.ranking import ranking_quality
from simulator.runner import simulate

CONFIG = "key: rank\nvariants: [{key: a, weight: 0.5}, {key: b, weight: 0.5}]\n"


def seed(engine: Engine) -> int:
    with transaction(engine) as session:
        experiment = save_experiment(session, load_experiment_text(CONFIG), "shop")
        conn = session.connection()
        # Four items in distinct categories, one brand, equal prices.
        bulk_insert(
            conn,
            "catalog_items",
            {
                "catalog": ["shop"] * 4,
                "item_id": ["w", "x", "y", "z"],
                "category": ["c1", "c2", "c3", "c4"],
                "brand": ["b"] * 4,
                "price": [10.0] * 4,
            },
        )
        # History: w used 3 times, x once, y and z never.
        bulk_insert(
            conn,
            "interactions",
            {
                "catalog": ["shop"] * 4,
                "user_id": ["h1", "h2", "h3", "h4"],
                "item_id": ["w", "w", "w", "x"],
                "type": ["click"] * 4,
                "value": [None] * 4,
                "ts": seconds_to_sql([0, 1, 2, 3]),
            },
        )
        # Variant a: exposure 1 shows [w, x] (click on x at position 1), exposure 2 shows
        # [w, y] (no click). Variant b: exposure 3 shows [y, z] with clicks on both.
        bulk_insert(
            conn,
            "exposures",
            {
                "id": [1, 2, 3],
                "experiment_id": [experiment.id] * 3,
                "variant": ["a", "a", "b"],
                "unit_id": ["u1", "u2", "u3"],
                "ts": seconds_to_sql([100, 100, 100]),
                "propensity": [0.5] * 3,
                "slate_size": [2, 2, 2],
            },
        )
        insert_impressions(  # the one writer: it also counts the shown items per variant
            conn,
            experiment.id,
            [1, 1, 2, 2, 3, 3],
            [0, 1, 0, 1, 0, 1],
            ["w", "x", "w", "y", "y", "z"],
            ["a", "a", "a", "a", "b", "b"],
        )
        bulk_insert(
            conn,
            "events",
            {
                "event_id": ["e1", "e2", "e3"],
                "experiment_id": [experiment.id] * 3,
                "exposure_id": [1, 3, 3],
                "unit_id": ["u1", "u3", "u3"],
                "type": ["click"] * 3,
                "item_id": ["x", "y", "z"],
                "value": [None] * 3,
                "ts": seconds_to_sql([101, 101, 102]),
            },
        )
        return experiment.id


def test_hand_computed_ranking_quality(db_url: str) -> None:
    engine = open_database(db_url)
    quality = ranking_quality(engine, seed(engine), "shop")
    a, b = quality["a"], quality["b"]
    # Hit rate: a has 1 of 2 slates clicked; b 1 of 1.
    assert (a.hit_rate, b.hit_rate) == (0.5, 1.0)
    # NDCG: a's clicked slate has its click at position 1: (1/log2 3) / (1/log2 2) = 0.6309;
    # the unclicked slate scores 0, so a = 0.6309 / 2. b: both positions clicked -> 1.
    assert a.ndcg == pytest.approx((1 / math.log2(3)) / 2, rel=1e-12)
    assert b.ndcg == pytest.approx(1.0, rel=1e-12)
    # Coverage: a showed w, x, y (3 of 4); b showed y, z (2 of 4).
    assert (a.coverage, b.coverage) == (0.75, 0.5)
    # Novelty with add-one smoothing over 4 interactions + 4 items = 8:
    # p(w) = 4/8, p(x) = 2/8, p(y) = p(z) = 1/8. a shows w twice, x, y: (2*1 + 2 + 3) / 4.
    assert a.novelty == pytest.approx((2 * 1 + 2 + 3) / 4, rel=1e-12)
    assert b.novelty == pytest.approx(3.0, rel=1e-12)
    # Diversity: items differ in category only; every pair has the same similarity s, so
    # both variants score 1 - s with s > 0 from the shared brand and price.
    assert a.intra_list_diversity == pytest.approx(b.intra_list_diversity, rel=1e-12)
    assert 0 < a.intra_list_diversity < 1
    assert a.slates == 2 and b.slates == 1
    engine.dispose()


def test_diversity_reranking_raises_intra_list_diversity(sqlite_url: str) -> None:
    config = load_experiment_text(
        """
key: diverse
variants:
  - {key: control, weight: 0.5, strategy: {kind: popularity, params: {per_category: true}}}
  - key: treatment
    weight: 0.5
    strategy:
      kind: diversity_rerank
      params: {base: {kind: popularity, params: {per_category: true}}, lambda: 0.8}
metrics: [{name: ctr, type: ratio, numerator: {event: click}, denominator: {event: impression}}]
simulation: {users: 800, days: 2, items: 300, slate_size: 6, seed: 9}
"""
    )
    engine = open_database(sqlite_url)
    result = simulate(engine, config)
    with engine.connect() as conn:
        from sqlalchemy import text

        experiment_id = conn.execute(text("SELECT id FROM experiments")).scalar_one()
    quality = ranking_quality(engine, experiment_id, "sim:diverse")
    assert quality["treatment"].intra_list_diversity > quality["control"].intra_list_diversity
    assert quality["control"].slates == result.tallies["control"].exposures
    engine.dispose()


def test_analyze_json_and_report_carry_ranking_quality(sqlite_url: str) -> None:
    from reports.analysis import analyze
    from reports.render import render_report

    engine = open_database(sqlite_url)
    seed(engine)
    result = analyze(engine, "rank")
    document = result.to_dict()
    assert document["ranking"]["a"]["hit_rate"] == 0.5
    assert document["ranking"]["b"]["coverage"] == 0.5
    assert set(document["ranking"]["a"]) == {
        "slates",
        "hit_rate",
        "ndcg",
        "coverage",
        "intra_list_diversity",
        "novelty",
    }
    page = render_report(result)
    assert "Ranking quality" in page
    assert analyze(engine, "rank", ranking=False).to_dict()["ranking"] is None
    engine.dispose()


def test_an_empty_catalogue_or_no_slates_never_divides_by_zero(db_url: str) -> None:
    """Slates shown from a catalogue that is now empty, and an experiment without slates:
    analyze and the report finish, with the undefined shares left out (None)."""
    from reports.analysis import analyze
    from reports.render import render_report

    engine = open_database(db_url)
    experiment_id = seed(engine)
    with transaction(engine) as session:
        conn = session.connection()
        conn.execute(text("DELETE FROM catalog_items WHERE catalog = 'shop'"))
        conn.execute(text("DELETE FROM interactions WHERE catalog = 'shop'"))
    quality = ranking_quality(engine, experiment_id, "shop")
    assert quality["a"].hit_rate == 0.5 and quality["a"].slates == 2
    assert (quality["a"].coverage, quality["a"].novelty) == (None, None)
    assert quality["a"].intra_list_diversity is None
    assert ranking_quality(engine, experiment_id, "no-such-catalogue")["b"].novelty is None
    assert "Ranking quality" in render_report(analyze(engine, "rank"))

    with transaction(engine) as session:
        bare = save_experiment(
            session, load_experiment_text(CONFIG.replace("key: rank", "key: bare")), None
        )
        bulk_insert(
            session.connection(),
            "exposures",
            {
                "id": [10, 11],
                "experiment_id": [bare.id] * 2,
                "variant": ["a", "b"],
                "unit_id": ["u1", "u2"],
                "ts": seconds_to_sql([100, 100]),
                "propensity": [0.5] * 2,
                "slate_size": [0, 0],
            },
        )
    assert ranking_quality(engine, bare.id, "default") == {}
    document = analyze(engine, "bare").to_dict()
    assert document["ranking"] in (None, {})
    assert "bare" in render_report(analyze(engine, "bare"))
    engine.dispose()
