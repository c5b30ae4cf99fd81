"""The ranker's user x item features: a hand-computed oracle, no leakage from later events,
and training rows equal to serving rows for the same (user, item, time) (skew test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import strategies.ranker  # noqa: F401  registers `ranker`
from abplatform.domain import Catalog, InteractionLog, RecRequest
from strategies.base import stage_key
from strategies.pipeline import PipelineStrategy
from strategies.ranker.data import ImpressionLog
from strategies.ranker.features import training_matrix
from strategies.ranker.personal import PERSONAL_COLUMNS, TrainingTallies
from strategies.ranker.strategy import RankerStrategy
from tests.factories import make_history
from tests.strategies.test_ranker import impression_log

DAY = 86_400
WINDOW = 2 * DAY


def _tiny() -> InteractionLog:
    """Items a, b (cat x, brand p), c (cat y, brand q) priced 9, 99, 19; u1 and u2 act."""
    catalog = Catalog(
        item_ids=np.array(["a", "b", "c"]),
        categories=np.array(["x", "x", "y"]),
        brands=np.array(["p", "p", "q"]),
        prices=np.array([9.0, 99.0, 19.0]),
    )
    rows = [  # user, item, type, day
        ("u1", "a", "click", 0),
        ("u1", "a", "purchase", 1),
        ("u1", "c", "click", 2),
        ("u2", "b", "click", 3),
        ("u1", "b", "click", 5),  # after the time asked about below
    ]
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array([r[0] for r in rows]),
        item_ids=np.array([r[1] for r in rows]),
        event_types=np.array([r[2] for r in rows]),
        values=np.full(len(rows), np.nan),
        timestamps=np.array([1_000_000 + r[3] * DAY for r in rows], dtype=np.int64),
    )


def test_personal_columns_match_a_hand_count() -> None:
    history = _tiny()
    tallies = TrainingTallies.of(history, history.catalog.index(), WINDOW)
    at = 1_000_000 + 4 * DAY  # u1 has a (click, purchase) and c; u2 has b
    got = tallies.columns(
        np.array(["u1", "u1", "u1", "u2", "nobody"]),
        np.array([0, 1, 2, 0, 2]),
        np.full(5, at, dtype=np.int64),
    )
    log_price = np.log1p([9.0, 99.0, 19.0])
    u1_mean = (2 * log_price[0] + log_price[2]) / 3  # a twice (click, purchase), c once
    expected = np.array(
        [
            # category share, category purchase share, brand share, item interactions,
            # item purchased, item popularity (window: days 2-4), purchase popularity, gap
            [2 / 3, 1.0, 2 / 3, np.log1p(2), 1, np.log1p(0), 0, log_price[0] - u1_mean],
            [2 / 3, 1.0, 2 / 3, 0, 0, np.log1p(1), 0, log_price[1] - u1_mean],
            [1 / 3, 0.0, 1 / 3, np.log1p(1), 0, np.log1p(1), 0, log_price[2] - u1_mean],
            [1.0, 0.0, 1.0, 0, 0, np.log1p(0), 0, log_price[0] - log_price[1]],
            [0, 0, 0, 0, 0, np.log1p(1), 0, 0],
        ]
    )
    assert got.shape == (5, len(PERSONAL_COLUMNS))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def _before(history: InteractionLog, at: int) -> InteractionLog:
    keep = history.timestamps < at
    return InteractionLog(
        catalog=history.catalog,
        user_ids=history.user_ids[keep],
        item_ids=history.item_ids[keep],
        event_types=history.event_types[keep],
        values=history.values[keep],
        timestamps=history.timestamps[keep],
        user_features=history.user_features,
    )


def test_training_features_use_only_events_before_the_impression() -> None:
    """A row at time t of the full history equals serving from a history cut at t: the
    events after t (and at t) change nothing."""
    history = make_history(seed=5)
    index = history.catalog.index()
    stamps = np.unique(history.timestamps)
    at = int(stamps[len(stamps) // 2]) + 1  # the cut-off of the history up to that event
    users = np.unique(history.user_ids)[:10]
    items = np.arange(len(history.catalog), dtype=np.int64)
    full = TrainingTallies.of(history, index, WINDOW)
    cut = TrainingTallies.of(_before(history, at), index, WINDOW).at_cutoff(at)
    for user in users.tolist():
        training = full.columns(np.full(items.size, user), items, np.full(items.size, at))
        np.testing.assert_array_equal(training, cut.columns(user, items))
    later = full.columns(np.full(items.size, users[0]), items, np.full(items.size, 2**40))
    assert not np.array_equal(later, cut.columns(str(users[0]), items))  # the test can fail


@pytest.fixture(scope="module")
def sourced() -> tuple[InteractionLog, RankerStrategy, ImpressionLog]:
    """A ranker on a log with two retrieval sources (clicks favour `popularity`'s)."""
    history = make_history(seed=3)
    log = impression_log(history, seed=4)
    rng = np.random.default_rng(5)
    sources = np.where(rng.random(len(log)) < 0.5, "popularity", "two_tower")
    clicked = log.clicked | ((sources == "popularity") & (rng.random(len(log)) < 0.3))
    log = ImpressionLog(**{**log.__dict__, "sources": sources, "clicked": clicked})
    ranker = RankerStrategy({"epochs": 4, "objective": "click"}, seed=7)
    ranker.fit_impressions(history, log)
    return history, ranker, log


@pytest.mark.slow
def test_training_rows_equal_serving_rows_at_the_cutoff(
    sourced: tuple[InteractionLog, RankerStrategy, ImpressionLog], tmp_path: Path
) -> None:
    """Skew test: the same (user, item, time = the fit's cut-off, source, scene) gives the
    same row from the SQL-side training path and from the served artifact."""
    history, ranker, _ = sourced
    assert ranker.artifact.space.personal and ranker.artifact.space.sources
    served = RankerStrategy.from_artifact(ranker.export(tmp_path, experiment="e", variant="v"))
    cutoff = history.end_timestamp + 1
    users = ["user-1", "user-7", "stranger"]
    items = np.arange(len(history.catalog), dtype=np.int64)
    labels = np.array(["popularity", "two_tower", ""])[np.arange(items.size) % 3]
    n = items.size * len(users)
    log = ImpressionLog(
        exposure_ids=np.repeat(np.arange(len(users)), items.size).astype(np.int64),
        positions=np.zeros(n, dtype=np.int64),
        item_ids=np.tile(history.catalog.item_ids[items], len(users)).astype(str),
        sources=np.tile(labels, len(users)).astype(str),
        unit_ids=np.repeat(users, items.size).astype(str),
        timestamps=np.full(n, cutoff, dtype=np.int64),
        scenes=np.full(n, "pdp"),
        clicked=np.zeros(n, bool),
        purchased=np.zeros(n, bool),
    )
    tallies = TrainingTallies.of(history, history.catalog.index(), 30 * DAY)
    training, known = training_matrix(
        ranker.artifact.space,
        log,
        history,
        history.catalog.index(),
        with_position=True,
        tallies=tallies,
    )
    assert known.all()
    kept = ranker.artifact.kept
    assert kept is not None
    wanted = [None if label == "" else str(label) for label in labels.tolist()]
    for u, user in enumerate(users):
        rows = training[u * items.size : (u + 1) * items.size][:, kept]
        for strategy in (ranker, served):
            serving = strategy.features_of(RecRequest(user, scene="pdp"), items, wanted)
            np.testing.assert_array_equal(serving, rows)
    end = training.shape[1] - 1 - len(ranker.artifact.space.sources)  # position is last
    personal = training[: items.size, end - len(PERSONAL_COLUMNS) : end]
    assert np.ptp(personal, axis=0).max() > 0  # the personal block is not all zeros


@pytest.mark.slow
def test_the_pipeline_passes_each_candidates_source_to_the_ranker(
    sourced: tuple[InteractionLog, RankerStrategy, ImpressionLog],
) -> None:
    history, ranker, _ = sourced
    quality = ranker.quality["ranker"]["click"]
    assert quality.auc > 0.6
    params = {"epochs": 4, "objective": "click"}
    pipeline = PipelineStrategy(
        {
            "retrieve": [
                {"kind": "popularity", "n": 6},
                {"kind": "random", "n": 6, "name": "two_tower"},
            ],
            "rank": {"kind": "ranker", "params": params},
        }
    )
    pipeline.use_prefitted({stage_key("ranker", params): ranker})
    pipeline.fit(history)
    request = RecRequest("user-2", scene="home")
    (merged,) = pipeline.candidates([request], 8)
    labels = [pipeline.labels[s] for s in merged.source.tolist()]
    assert set(labels) == {"popularity", "two_tower"}
    with_sources = ranker.score_candidates([request], merged.items[None], [labels])[0]
    without = ranker.score_items([request], merged.items[None])[0]
    assert not np.allclose(with_sources, without)
    slate = pipeline.recommend(request, 8)
    order = np.argsort(-with_sources, kind="stable")[:8]
    assert list(slate.items) == history.catalog.item_ids[merged.items[order]].tolist()
    np.testing.assert_allclose(slate.scores, with_sources[order])
