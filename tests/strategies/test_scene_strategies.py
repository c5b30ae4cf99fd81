"""Scene router, complementary, similar items and the diversity re-ranker."""

from __future__ import annotations

import numpy as np
import pytest

from abplatform.config import ConfigError, load_experiment_text
from abplatform.domain import Catalog, InteractionLog, RecRequest
from abplatform.registry import build_strategy
from tests.factories import make_history

REQUESTS = [RecRequest(f"user-{u}", scene="home_page") for u in range(30)] + [
    RecRequest("stranger", scene="product_detail", current_item="item-005"),
]


@pytest.mark.parametrize("base", ["popularity", "random"])
def test_lambda_zero_reproduces_the_base_ranking(base: str) -> None:
    history = make_history()
    plain = build_strategy(base, {}, seed=4)
    plain.fit(history)
    rerank = build_strategy(
        "diversity_rerank", {"base": {"kind": base}, "lambda": 0.0, "candidates": 40}, seed=4
    )
    rerank.fit(history)
    for request in REQUESTS:
        assert rerank.recommend(request, 10).items == plain.recommend(request, 10).items


def test_diversity_spreads_categories_and_caps_hold() -> None:
    history = make_history()
    categories = dict(
        zip(history.catalog.item_ids.tolist(), history.catalog.categories.tolist(), strict=True)
    )
    base = build_strategy("popularity", {}, seed=1)
    base.fit(history)
    diverse = build_strategy(
        "diversity_rerank", {"base": {"kind": "popularity"}, "lambda": 0.7, "candidates": 60}
    )
    diverse.fit(history)
    capped = build_strategy(
        "diversity_rerank",
        {"base": {"kind": "popularity"}, "lambda": 0.0, "max_per_category": 2, "candidates": 60},
    )
    capped.fit(history)
    request = RecRequest("user-1")
    # 4 categories: with a cap of 2 per category, 8 items can respect it.
    counts = np.unique(
        [categories[i] for i in capped.recommend(request, 8).items], return_counts=True
    )[1]
    assert counts.max() <= 2

    # MMR with a strong diversity weight covers at least as many categories as the base.
    def spread(items: tuple[str, ...]) -> int:
        return len({categories[i] for i in items})

    assert spread(diverse.recommend(request, 4).items) == 4
    assert spread(diverse.recommend(request, 4).items) >= spread(base.recommend(request, 4).items)


def test_router_dispatches_by_scene() -> None:
    history = make_history()
    params = {
        "strategies": {"pop": {"kind": "popularity"}, "similar": {"kind": "similar_items"}},
        "routes": {"product_detail": "similar"},
        "default": "pop",
    }
    router = build_strategy("scene_router", params, seed=2)
    router.fit(history)
    pop = build_strategy("popularity", {}, seed=2)
    pop.fit(history)
    similar = build_strategy("similar_items", {}, seed=2)
    similar.fit(history)
    home = RecRequest("user-3", scene="home_page")
    detail = RecRequest("user-3", scene="product_detail", current_item="item-010")
    no_scene = RecRequest("user-3")
    assert router.route(home) == "pop" and router.route(detail) == "similar"
    assert router.recommend(home, 5) == pop.recommend(home, 5)
    assert router.recommend(detail, 5) == similar.recommend(detail, 5)
    assert router.recommend(no_scene, 5) == pop.recommend(no_scene, 5)
    # Each declared strategy is built once, whatever the number of routes pointing at it.
    assert set(router.routed) == {"pop", "similar"}


def basket_log() -> InteractionLog:
    catalog = Catalog(
        item_ids=np.array(["tent", "mat", "stove", "pan", "sock"]),
        categories=np.array(["camp", "camp", "cook", "cook", "wear"]),
        brands=np.array(["", "", "", "", ""]),
        prices=np.array([100.0, 20.0, 50.0, 30.0, 5.0]),
    )
    baskets = {
        "u1": ["tent", "mat"],
        "u2": ["tent", "mat", "sock"],
        "u3": ["tent", "stove"],
        "u4": ["stove", "pan"],
        "u5": ["sock"],
        "u6": ["sock"],
    }
    users = [u for u, items in baskets.items() for _ in items]
    items = [i for basket in baskets.values() for i in basket]
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array(users),
        item_ids=np.array(items),
        event_types=np.array(["purchase"] * len(items)),
        values=np.ones(len(items)),
        timestamps=np.arange(len(items), dtype=np.int64) * 60,
    )


def test_complementary_lift_by_hand() -> None:
    strategy = build_strategy("complementary", {"min_support": 1})
    strategy.fit(basket_log())
    # 6 baskets; tent in 3, mat in 2, together in 2: lift = 2 * 6 / (3 * 2) = 2.0.
    # tent & stove: stove in 2 baskets, together 1: lift = 1 * 6 / (3 * 2) = 1.0.
    # tent & sock: sock in 3, together 1: lift = 1 * 6 / (3 * 3) = 0.667.
    assert strategy.association("tent") == pytest.approx(
        {"mat": 2.0, "stove": 1.0, "sock": 6 / 9}, rel=1e-12
    )
    slate = strategy.recommend(RecRequest("x", scene="cart_page", cart_items=("tent",)), 4)
    assert slate.items[:3] == ("mat", "stove", "sock")
    assert "tent" not in slate.items


def test_complementary_min_support_and_category_fallback() -> None:
    strategy = build_strategy("complementary", {"min_support": 2})
    strategy.fit(basket_log())
    # Only tent-mat reaches support 2; the rest comes from the cart's category (camp: none
    # left), then the global popularity ranking.
    assert strategy.association("tent") == pytest.approx({"mat": 2.0})
    slate = strategy.recommend(RecRequest("x", cart_items=("stove",)), 3)
    assert slate.items[0] == "pan"  # the only other item of the cart's category
    assert "stove" not in slate.items


def test_similar_items_prefers_same_category_and_brand() -> None:
    history = make_history()
    strategy = build_strategy("similar_items", {})
    strategy.fit(history)
    anchor = "item-008"
    index = history.catalog.index()
    slate = strategy.recommend(RecRequest("u", current_item=anchor), 5)
    category = history.catalog.categories[index[anchor]]
    assert anchor not in slate.items
    assert all(history.catalog.categories[index[i]] == category for i in slate.items)
    assert list(slate.scores) == sorted(slate.scores, reverse=True)


ROUTER = """
key: x
variants:
  - key: a
    weight: 1
    strategy: {{kind: scene_router, params: {params}}}
"""


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            "{strategies: {pop: {kind: popularity}}, routes: {home_page: popz}, default: pop}",
            "routes.home_page: unknown route target 'popz'; declared strategies: pop",
        ),
        (
            "{strategies: {pop: {kind: popularity}}, routes: {home_page: pop}}",
            "no route for scene(s) product_detail, cart_page and no default",
        ),
        (
            "{strategies: {pop: {kind: popularity}}, routes: {spaceship: pop}, default: pop}",
            "routes.spaceship: unknown scene; known: home_page, product_detail, cart_page",
        ),
    ],
)
def test_bad_router_configs_fail_at_validation(params: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment_text(ROUTER.format(params=params))
    (line,) = info.value.problems
    assert line.startswith(f"variants.0.strategy.params: {expected}")


def test_lambda_outside_unit_interval_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment_text(
            "key: x\nvariants: [{key: a, weight: 1, strategy: {kind: diversity_rerank, "
            "params: {base: {kind: popularity}, lambda: 1.5}}}]\n"
        )
    assert info.value.problems == [
        "variants.0.strategy.params.lambda: input should be less than or equal to 1 (got 1.5)"
    ]


def test_similar_items_can_use_two_tower_item_embeddings() -> None:
    history = make_history(n_items=60, n_users=40, n_events=1500)
    strategy = build_strategy(
        "similar_items",
        {
            "representation": "two_tower",
            "two_tower": {"embedding_dim": 8, "hidden_units": [8], "epochs": 2, "batch_size": 128},
        },
        seed=1,
    )
    strategy.fit(history)
    vectors = strategy.item_vectors()
    # The two-tower's 8-dimensional embeddings, not the 4 + 7 + 1 catalogue features.
    assert vectors.shape == (60, 8)
    slate = strategy.recommend(RecRequest("u", current_item="item-003"), 5)
    assert "item-003" not in slate.items and len(set(slate.items)) == 5
