"""Offline evaluation: the per-user time split and the ranking metrics, on hand-made cases."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
from numpy.testing import assert_allclose
from pydantic import BaseModel

from abplatform.domain import Catalog, InteractionLog, RecRequest, Slate
from abplatform.registry import build_strategy
from strategies.base import BaseStrategy, StrategyParams
from strategies.evaluation import (
    HoldoutSet,
    evaluate,
    ranking_metrics,
    seen_items,
    time_split,
)
from tests.factories import make_history

ITEMS = ["a", "b", "c", "d", "e"]  # dense indices 0..4


def tiny_log() -> InteractionLog:
    catalog = Catalog(
        item_ids=np.array(ITEMS),
        categories=np.array(["x", "x", "y", "y", "z"]),
        brands=np.array([""] * 5),
        prices=np.array([1.0, 2.0, 3.0, 4.0, 5.0]),
    )
    rows = [
        # user, item, type, time
        ("u1", "a", "click", 1),
        ("u2", "d", "click", 1),
        ("u3", "a", "view", 1),  # a view is not a positive event
        ("u1", "b", "click", 2),
        ("u2", "d", "purchase", 2),
        ("u3", "e", "click", 2),
        ("u1", "c", "click", 3),
        ("u3", "a", "click", 3),
        ("u1", "c", "purchase", 4),  # follows the held-out click: must leave the train log
        ("u4", "zz", "click", 5),  # not in the catalogue
    ]
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array([r[0] for r in rows]),
        item_ids=np.array([r[1] for r in rows]),
        event_types=np.array([r[2] for r in rows]),
        values=np.full(len(rows), np.nan),
        timestamps=np.array([r[3] for r in rows], dtype=np.int64),
    )


def rows_of(log: InteractionLog) -> list[tuple[str, str, str, int]]:
    return list(
        zip(
            log.user_ids.tolist(),
            log.item_ids.tolist(),
            log.event_types.tolist(),
            log.timestamps.tolist(),
            strict=True,
        )
    )


class TestTimeSplit:
    def test_holds_out_each_users_last_new_item(self) -> None:
        train, test = time_split(tiny_log(), 1)
        # u1: a(1) b(2) c(3) -> c held out, cutoff 3: the click and the purchase of c go.
        # u2: only d -> not eligible, keeps everything.
        # u3: e(2) a(3) (the view of a is not positive) -> a held out, cutoff 3.
        # u4: its item is not in the catalogue -> no positive item, keeps its row.
        assert test.pairs() == [("u1", 2), ("u3", 0)]
        assert rows_of(train) == [
            ("u1", "a", "click", 1),
            ("u2", "d", "click", 1),
            ("u3", "a", "view", 1),
            ("u1", "b", "click", 2),
            ("u2", "d", "purchase", 2),
            ("u3", "e", "click", 2),
            ("u4", "zz", "click", 5),
        ]
        assert len(train.catalog) == 5

    def test_two_items_per_user(self) -> None:
        _, test = time_split(tiny_log(), 2)
        # Only u1 has three distinct positive items; it keeps a and holds out b and c.
        assert test.pairs() == [("u1", 1), ("u1", 2)]

    def test_held_out_items_are_new_to_the_user(self) -> None:
        log = make_history(n_events=3000)
        train, test = time_split(log, 1)
        seen = seen_items(train, test.user_ids)
        for row in range(len(test)):
            assert not np.isin(test.items_of(row), seen[row]).any()

    def test_nothing_of_a_test_user_after_the_cutoff_stays(self) -> None:
        log = make_history(n_events=3000)
        train, test = time_split(log, 1)
        index = log.catalog.index()
        first_held: dict[str, int] = {}
        for user, item, _, ts in rows_of(log):
            if user in set(test.user_ids.tolist()):
                row = test.user_ids.tolist().index(user)
                if index.get(item, -1) in test.items_of(row).tolist():
                    first_held[user] = min(first_held.get(user, ts), ts)
        for user, _, _, ts in rows_of(train):
            if user in first_held:
                assert ts < first_held[user]

    def test_user_fraction_picks_a_seeded_subset(self) -> None:
        log = make_history(n_events=3000)
        _, everyone = time_split(log, 1)
        _, some = time_split(log, 1, user_fraction=0.25, seed=5)
        _, again = time_split(log, 1, user_fraction=0.25, seed=5)
        assert len(some) == round(0.25 * len(everyone))
        assert set(some.user_ids.tolist()) <= set(everyone.user_ids.tolist())
        assert some.pairs() == again.pairs()

    def test_empty_log(self) -> None:
        log = make_history(n_events=0)
        train, test = time_split(log, 1)
        assert len(train) == 0 and len(test) == 0

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"holdout_per_user": 0}, r"holdout_per_user must be a positive integer \(got 0\)"),
            ({"user_fraction": 0.0}, r"user_fraction must be in \(0, 1\] \(got 0.0\)"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            time_split(tiny_log(), **kwargs)


def test_ranking_metrics_by_hand() -> None:
    # Test user 0 holds out item 2; user 1 holds out items 0 and 3; 5 items in the catalogue.
    test = HoldoutSet(
        user_ids=np.array(["p", "q"]),
        indptr=np.array([0, 1, 3]),
        items=np.array([2, 0, 3]),
    )
    ranked = np.array([[1, 2, 4], [3, 4, 0]])
    m = ranking_metrics(ranked, test, n_items=5, ks=(1, 3))
    # recall@1: p 0/1, q 1/2 (item 3 at rank 1)           -> (0 + 0.5) / 2 = 0.25
    # recall@3: p 1/1 (rank 2), q 2/2 (ranks 1 and 3)     -> 1.0
    # ndcg@1:   p 0, q 1/1                                -> 0.5
    # ndcg@3:   p (1/log2 3) / 1 = 0.63093
    #           q (1 + 1/log2 4) / (1 + 1/log2 3) = 1.5 / 1.63093 = 0.91972  -> mean 0.77533
    # coverage@1: {1, 3} of 5 = 0.4; coverage@3: {0, 1, 2, 3, 4} of 5 = 1.0
    ndcg_p = 1 / math.log2(3)
    ndcg_q = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["users"] == 2
    assert_allclose(m["recall@1"], 0.25, rtol=1e-12)
    assert_allclose(m["recall@3"], 1.0, rtol=1e-12)
    assert_allclose(m["ndcg@1"], 0.5, rtol=1e-12)
    assert_allclose(m["ndcg@3"], (ndcg_p + ndcg_q) / 2, rtol=1e-12)
    assert_allclose(m["ndcg@3"], 0.775325, rtol=1e-6)
    assert_allclose(m["coverage@1"], 0.4, rtol=1e-12)
    assert_allclose(m["coverage@3"], 1.0, rtol=1e-12)
    # hit@1: only q has a held-out item at rank 1 -> 0.5; hit@3: both -> 1.0
    assert_allclose(m["user_hit@1"], 0.5, rtol=1e-12)
    assert_allclose(m["user_hit@3"], 1.0, rtol=1e-12)


def test_ranking_metrics_ignore_empty_positions() -> None:
    test = HoldoutSet(np.array(["p"]), np.array([0, 1]), np.array([4]))
    m = ranking_metrics(np.array([[4, -1, -1]]), test, n_items=5, ks=(3,))
    assert m["recall@3"] == 1.0 and m["ndcg@3"] == 1.0 and m["coverage@3"] == 0.2


class FixedParams(StrategyParams):
    """No parameters."""


class FixedOrder(BaseStrategy):
    """Everyone gets the catalogue in its order: a, b, c, d, e."""

    kind = "fixed-order"
    Params: ClassVar[type[BaseModel]] = FixedParams

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        size = min(k, len(self.catalog))
        items = tuple(self.catalog.item_ids[:size].tolist())
        return [Slate(items, tuple(float(-i) for i in range(size))) for _ in requests]


class TestEvaluate:
    def test_excluding_seen_items(self) -> None:
        train, test = time_split(tiny_log(), 1)
        m = evaluate(FixedOrder(), train, test, ks=(1, 3))
        # u1 clicked a, b in training -> ranking c, d, e: its held-out c is first.
        # u3 clicked e in training -> ranking a, b, c, d: its held-out a is first.
        assert m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0
        # Top 1 is c for u1 and a for u3: 2 of 5 items.
        assert m["coverage@1"] == 0.4

    def test_without_excluding_seen_items(self) -> None:
        train, test = time_split(tiny_log(), 1)
        m = evaluate(FixedOrder(), train, test, ks=(1, 3), exclude_seen=False)
        # u1: a, b, c -> c at rank 3; u3: a at rank 1.
        assert m["recall@1"] == 0.5
        assert m["recall@3"] == 1.0
        assert_allclose(m["ndcg@3"], (1 / math.log2(4) + 1.0) / 2, rtol=1e-12)

    def test_ks_beyond_the_catalogue_count_as_misses(self) -> None:
        train, test = time_split(tiny_log(), 1)
        m = evaluate(FixedOrder(), train, test, ks=(10,))
        # u1 gets c, d, e and u3 gets a, b, c, d (all that is left): every item is shown.
        assert m["recall@10"] == 1.0 and m["coverage@10"] == 1.0

    def test_any_registered_strategy(self) -> None:
        log = make_history(n_events=3000)
        train, test = time_split(log, 1)
        popular = evaluate(build_strategy("popularity", {}), train, test, ks=(10, 20))
        random = evaluate(build_strategy("random", {}), train, test, ks=(10, 20))
        for m in (popular, random):
            assert m["users"] == len(test)
            assert 0.0 <= m["recall@10"] <= m["recall@20"] <= 1.0
        # The history's items are Zipf-popular, so popularity beats chance.
        assert popular["recall@10"] > random["recall@10"]

    def test_bad_cut_off(self) -> None:
        train, test = time_split(tiny_log(), 1)
        with pytest.raises(ValueError, match=r"k must be a positive integer \(got 0\)"):
            evaluate(FixedOrder(), train, test, ks=(0,))


def test_slate_quality_by_hand() -> None:
    from abplatform.domain import Catalog, InteractionLog
    from strategies.evaluation import slate_quality

    # Two items in different categories (same brand and price), history: item a twice.
    catalog = Catalog(
        item_ids=np.array(["a", "b"]),
        categories=np.array(["x", "y"]),
        brands=np.array(["k", "k"]),
        prices=np.array([5.0, 5.0]),
    )
    log = InteractionLog(
        catalog=catalog,
        user_ids=np.array(["u", "v"]),
        item_ids=np.array(["a", "a"]),
        event_types=np.array(["click", "click"]),
        values=np.array([np.nan, np.nan]),
        timestamps=np.array([1, 2]),
    )
    quality = slate_quality(np.array([[0, 1]]), log, 2)
    # Smoothed shares: a (2+1)/(2+2) = 0.75, b (0+1)/4 = 0.25 -> novelty = (0.415 + 2) / 2
    assert_allclose(quality["novelty@2"], (-math.log2(0.75) + 2.0) / 2, rtol=1e-12)
    # Features: one-hot category (weight 1) and brand (weight sqrt(0.5)), equal prices ->
    # cosine = 0.5 / (1 + 0.5) = 1/3, diversity = 2/3.
    assert_allclose(quality["diversity@2"], 2 / 3, rtol=1e-12)
