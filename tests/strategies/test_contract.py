"""One contract for every registered strategy: the same cases, the same expectations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from abplatform.domain import InteractionLog, RecRequest
from abplatform.registry import build_strategy, strategies
from tests.factories import make_history

TINY_TOWER = {"embedding_dim": 8, "hidden_units": [8], "epochs": 2, "batch_size": 128}
# Parameters that make each kind exercise its interesting path on the small history.
CASES: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}, {"per_category": True, "window_days": 7}],
    "random": [{}],
    # A small, fast model: the full two-tower is tested in test_two_tower.py.
    "two_tower": [TINY_TOWER],
    "als": [
        {"factors": 8, "iterations": 5},
        {"factors": 4, "positive_events": ["purchase"], "exclude_purchased": False},
    ],
    "ease": [{}, {"lambda": 5.0, "binary": False, "weights": {"click": 1, "purchase": 3}}],
    "complementary": [{}, {"events": ["click", "purchase"], "measure": "pmi", "min_support": 1}],
    "similar_items": [{}],
    # Fitted outside `abplatform train` it has no impressions: its fallback (catalogue
    # order) must keep the contract too; the trained ranker's is in test_ranker.py.
    "ranker": [{}],
    "diversity_rerank": [
        {"base": {"kind": "popularity"}, "lambda": 0.5, "candidates": 30},
        {"base": {"kind": "random"}, "lambda": 0.9, "max_per_category": 3},
    ],
    "scene_router": [
        {
            "strategies": {
                "pop": {"kind": "popularity"},
                "similar": {"kind": "similar_items"},
                "complements": {"kind": "complementary"},
            },
            "routes": {"product_detail": "similar", "cart_page": "complements"},
            "default": "pop",
        }
    ],
    "pipeline": [
        {
            "retrieve": [
                {"kind": "popularity", "n": 6},
                {"kind": "complementary", "n": 4},
                {"kind": "similar_items", "n": 4},
            ]
        },
        {
            "retrieve": [
                {"kind": "random", "n": 20},
                {"kind": "popularity", "n": 10, "params": {"per_category": True}},
            ],
            "rank": {"kind": "popularity"},
            "rerank": {"kind": "diversity_rerank", "params": {"lambda": 0.4}, "candidates": 25},
        },
        {
            "retrieve": [
                {"kind": "two_tower", "n": 15, "params": TINY_TOWER},
                {"kind": "popularity", "n": 5},
            ],
            "rank": {"kind": "two_tower", "params": TINY_TOWER},
            "rerank": {"kind": "diversity_rerank", "params": {"max_per_category": 3}},
        },
    ],
}
KINDS = strategies.names()


def all_cases() -> list[Any]:
    out = []
    for kind in KINDS:
        for params in CASES.get(kind, [{}]):
            out.append(pytest.param(kind, params, id=f"{kind}-{params}"))
    return out


def test_every_registered_kind_has_contract_cases() -> None:
    assert set(KINDS) <= set(CASES), f"add contract cases for {set(KINDS) - set(CASES)}"


def requests(log: InteractionLog) -> list[RecRequest]:
    known = sorted(set(log.user_ids.tolist()))[:10]
    return [RecRequest(u, scene="home_page") for u in known] + [
        RecRequest("never-seen-user", scene="home_page"),
        RecRequest("another-unknown", scene="product_detail", current_item="item-001"),
        RecRequest(known[0], scene="cart_page", cart_items=("item-002", "item-003")),
        RecRequest(known[1], scene="product_detail", current_item="not-in-catalogue"),
    ]


@pytest.mark.parametrize(("kind", "params"), all_cases())
class TestStrategyContract:
    def fitted(self, kind: str, params: dict[str, Any], seed: int = 7) -> Any:
        strategy = build_strategy(kind, params, seed=seed)
        strategy.fit(make_history())
        return strategy

    def test_k_distinct_valid_items(self, kind: str, params: dict[str, Any]) -> None:
        strategy = self.fitted(kind, params)
        catalog = set(make_history().catalog.item_ids.tolist())
        for request in requests(make_history()):
            slate = strategy.recommend(request, 10)
            assert len(slate.items) == 10
            assert len(set(slate.items)) == 10
            assert set(slate.items) <= catalog
            assert all(np.isfinite(slate.scores))

    def test_batch_equals_single(self, kind: str, params: dict[str, Any]) -> None:
        strategy = self.fitted(kind, params)
        reqs = requests(make_history())
        assert strategy.recommend_batch(reqs, 8) == [strategy.recommend(r, 8) for r in reqs]

    def test_deterministic_under_a_seed(self, kind: str, params: dict[str, Any]) -> None:
        reqs = requests(make_history())
        first = self.fitted(kind, params, seed=3).recommend_batch(reqs, 5)
        second = self.fitted(kind, params, seed=3).recommend_batch(reqs, 5)
        assert first == second

    def test_unknown_user_gets_a_full_slate(self, kind: str, params: dict[str, Any]) -> None:
        slate = self.fitted(kind, params).recommend(RecRequest("nobody-knows-me"), 10)
        assert len(set(slate.items)) == 10

    def test_k_larger_than_catalogue(self, kind: str, params: dict[str, Any]) -> None:
        slate = self.fitted(kind, params).recommend(RecRequest("user-1"), 500)
        assert sorted(slate.items) == sorted(make_history().catalog.item_ids.tolist())

    def test_bad_k(self, kind: str, params: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match=r"k must be a positive integer \(got 0\)"):
            self.fitted(kind, params).recommend(RecRequest("user-1"), 0)

    def test_empty_history(self, kind: str, params: dict[str, Any]) -> None:
        full = make_history()
        empty = InteractionLog(
            catalog=full.catalog,
            user_ids=full.user_ids[:0],
            item_ids=full.item_ids[:0],
            event_types=full.event_types[:0],
            values=full.values[:0],
            timestamps=full.timestamps[:0],
        )
        strategy = build_strategy(kind, params, seed=1)
        strategy.fit(empty)
        assert len(set(strategy.recommend(RecRequest("user-1"), 5).items)) == 5

    def test_recommend_before_fit_is_a_clear_error(self, kind: str, params: dict[str, Any]) -> None:
        from strategies.base import NotFittedError

        with pytest.raises(NotFittedError, match="not fitted"):
            build_strategy(kind, params).recommend(RecRequest("user-1"), 5)
