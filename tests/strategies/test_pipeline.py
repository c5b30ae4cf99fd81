"""The pipeline strategy: merge, de-duplication and sources on a hand-built catalogue,
rank and re-rank stages, and validation errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import strategies.ranker  # noqa: F401  registers `ranker` (until the entry point is installed)
from abplatform.config import ConfigError, load_experiment_text
from abplatform.domain import Catalog, InteractionLog, RecRequest
from abplatform.registry import build_strategy
from strategies.pipeline import PipelineStrategy, _merge
from tests.factories import make_history

ITEMS = ["a", "b", "c", "d", "e", "f", "g", "h"]
CLICKS = {"a": 6, "b": 5, "c": 4, "d": 3, "e": 2, "f": 1}
PURCHASES = {"d": 4, "a": 3, "g": 2, "h": 1}
# Two popularity rankings of the tiny shop (counts far above the 1e-9 tie-break jitter):
# by clicks  a b c d e f (g h: no clicks)
# by buys    d a g h     (b c e f: no purchases)
BY_CLICKS = {"kind": "popularity", "params": {"purchase_weight": 0, "view_weight": 0}}
BY_BUYS = {"kind": "popularity", "params": {"click_weight": 0, "view_weight": 0}}


def tiny_shop() -> InteractionLog:
    users, items, types = [], [], []
    for table, event in ((CLICKS, "click"), (PURCHASES, "purchase")):
        for item, count in table.items():
            for i in range(count):
                users.append(f"u{i}")
                items.append(item)
                types.append(event)
    n = len(users)
    catalog = Catalog(
        item_ids=np.array(ITEMS),
        categories=np.array(["x", "x", "y", "y", "z", "z", "x", "y"]),
        brands=np.array(["p"] * 8),
        prices=np.linspace(1.0, 8.0, 8),
    )
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array(users),
        item_ids=np.array(items),
        event_types=np.array(types),
        values=np.zeros(n),
        timestamps=np.arange(n, dtype=np.int64) + 1_000_000,
    )


def pipeline(params: dict[str, Any], history: InteractionLog | None = None) -> PipelineStrategy:
    strategy = build_strategy("pipeline", params, seed=5)
    assert isinstance(strategy, PipelineStrategy)
    strategy.fit(history if history is not None else tiny_shop())
    return strategy


def source(spec: dict[str, Any], n: int, name: str) -> dict[str, Any]:
    return {**spec, "n": n, "name": name}


def test_round_robin_merge_dedup_and_sources_on_the_tiny_shop() -> None:
    strategy = pipeline({"retrieve": [source(BY_CLICKS, 3, "clicks"), source(BY_BUYS, 3, "buys")]})
    # clicks a b c, buys d a g: a d | b (a taken) | c g
    slate = strategy.recommend(RecRequest("anyone"), 5)
    assert slate.items == ("a", "d", "b", "c", "g")
    assert slate.sources == ("clicks", "buys", "clicks", "clicks", "buys")
    assert slate.scores == pytest.approx((1.0, 0.8, 0.6, 0.4, 0.2), abs=1e-12)
    (candidates,) = strategy.candidates([RecRequest("anyone")], 5)
    # `a` was found by both sources (bits 0 and 1), the others by one.
    assert candidates.found_by.tolist() == [0b11, 0b10, 0b01, 0b01, 0b10]


def test_an_item_found_twice_is_credited_to_the_source_that_ranked_it_higher() -> None:
    # buys first in YAML order: `a` is 2nd for buys but 1st for clicks -> credited to clicks.
    strategy = pipeline({"retrieve": [source(BY_BUYS, 3, "buys"), source(BY_CLICKS, 3, "clicks")]})
    slate = strategy.recommend(RecRequest("anyone"), 5)
    assert slate.items == ("d", "a", "b", "g", "c")
    assert slate.sources == ("buys", "clicks", "clicks", "buys", "clicks")


def test_a_slate_larger_than_the_candidates_is_topped_up_past_each_n() -> None:
    strategy = pipeline({"retrieve": [source(BY_CLICKS, 3, "clicks"), source(BY_BUYS, 3, "buys")]})
    # After the 5 distinct candidates: position 3 (clicks d: taken; buys h), position 4 (e).
    slate = strategy.recommend(RecRequest("anyone"), 7)
    assert slate.items == ("a", "d", "b", "c", "g", "h", "e")
    assert slate.sources == ("clicks", "buys", "clicks", "clicks", "buys", "buys", "clicks")


def test_merge_oracle_on_hand_lists() -> None:
    # Three sources; the catalogue fills when they run dry.
    merged = _merge([[4, 1, 2], [1, 5], [9]], [2, 2, 1], wanted=6, n_items=10)
    assert merged.items.tolist() == [4, 1, 9, 5, 2, 0]
    assert merged.source.tolist() == [0, 1, 2, 1, 0, -1]
    assert merged.found_by.tolist() == [0b001, 0b011, 0b100, 0b010, 0, 0]


def test_rank_stage_rescores_the_merged_candidates() -> None:
    strategy = pipeline(
        {
            "retrieve": [source(BY_CLICKS, 3, "clicks"), source(BY_BUYS, 3, "buys")],
            "rank": BY_BUYS,
        }
    )
    slate = strategy.recommend(RecRequest("anyone"), 3)
    # Candidates a d b c g ranked by purchases (weight 5): d (4), a (3), g (2).
    assert slate.items == ("d", "a", "g")
    assert slate.sources == ("buys", "clicks", "buys")
    np.testing.assert_allclose(slate.scores, [20.0, 15.0, 10.0], atol=1e-8)


def test_rerank_with_lambda_zero_keeps_the_ranking_and_a_cap_keeps_sources() -> None:
    retrieve = [source(BY_CLICKS, 4, "clicks"), source(BY_BUYS, 4, "buys")]
    plain = pipeline({"retrieve": retrieve}).recommend(RecRequest("u"), 6)
    lam0 = pipeline(
        {"retrieve": retrieve, "rerank": {"kind": "diversity_rerank", "params": {"lambda": 0}}}
    ).recommend(RecRequest("u"), 6)
    assert lam0.items == plain.items and lam0.sources == plain.sources
    capped = pipeline(
        {
            "retrieve": retrieve,
            "rerank": {
                "kind": "diversity_rerank",
                "params": {"lambda": 0, "max_per_category": 1},
            },
        }
    ).recommend(RecRequest("u"), 3)
    # Merged a d b c g h (categories x y x y x y): a (x), d (y), then no category is left
    # under the cap, so the best remaining candidate fills: b.
    assert plain.items == ("a", "d", "b", "c", "g", "h")
    assert capped.items == ("a", "d", "b")
    credited = dict(zip(plain.items, plain.sources or (), strict=True))
    assert capped.sources == ("clicks", "buys", "clicks")
    assert all(
        credited.get(i, s) == s for i, s in zip(capped.items, capped.sources or (), strict=True)
    )


def test_a_diversity_rerank_over_a_pipeline_keeps_its_sources() -> None:
    base = {
        "kind": "pipeline",
        "params": {"retrieve": [source(BY_CLICKS, 3, "clicks"), source(BY_BUYS, 3, "buys")]},
    }
    reranked = build_strategy("diversity_rerank", {"base": base, "lambda": 0.0}, seed=5)
    reranked.fit(tiny_shop())
    slate = reranked.recommend(RecRequest("anyone"), 5)
    assert slate.items == ("a", "d", "b", "c", "g")
    assert slate.sources == ("clicks", "buys", "clicks", "clicks", "buys")


def test_one_kind_and_params_in_two_stages_is_fitted_once() -> None:
    strategy = pipeline(
        {
            "retrieve": [source(BY_CLICKS, 3, "first"), source(BY_CLICKS, 5, "second")],
            "rank": BY_CLICKS,
        }
    )
    assert strategy.sources[0] is strategy.sources[1] is strategy.ranker
    assert len(strategy.fitted_stages()) == 1


@pytest.mark.slow
def test_two_tower_ranks_popularity_candidates() -> None:
    tower = {"embedding_dim": 8, "hidden_units": [8], "epochs": 2, "batch_size": 128}
    history = make_history()
    strategy = pipeline(
        {
            "retrieve": [{"kind": "popularity", "n": 20}],
            "rank": {"kind": "two_tower", "params": tower},
        },
        history,
    )
    requests = [RecRequest(f"user-{u}") for u in range(5)] + [RecRequest("stranger")]
    popular = strategy.sources[0].recommend(requests[0], 20).items
    index = history.catalog.index()
    for request in requests:
        slate = strategy.recommend(request, 8)
        assert set(slate.items) <= set(popular)
        expected = strategy.ranker.score_items(
            [request], np.array([[index[i] for i in popular]], dtype=np.int64)
        )[0]
        top = sorted(zip(-expected, range(20), strict=True))[:8]
        assert slate.items == tuple(popular[j] for _, j in top)
        assert slate.sources == ("popularity",) * 8


YAML = """
key: x
simulation: {{users: 50, items: 30, slate_size: 10}}
variants:
  - key: a
    weight: 1
    strategy: {{kind: pipeline, params: {params}}}
"""


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            "{retrieve: []}",
            "variants.0.strategy.params.retrieve: list should have at least 1 item after "
            "validation, not 0 (got [])",
        ),
        (
            "{retrieve: [{kind: popularity, n: 20}, {kind: popularity, n: 0, name: b}]}",
            "variants.0.strategy.params.retrieve.1.n: input should be greater than or equal "
            "to 1 (got 0)",
        ),
        (
            "{retrieve: [{kind: popularty, n: 20}]}",
            "variants.0.strategy.params.retrieve.0: unknown strategy kind 'popularty'; known: ",
        ),
        (
            "{retrieve: [{kind: popularity, n: 20}], rank: {kind: complementary}}",
            "variants.0.strategy.params.rank: strategy kind 'complementary' "
            "cannot score candidates; kinds that can: popularity, ranker, two_tower",
        ),
        (
            "{retrieve: [{kind: popularity, n: 20}], rank: {kind: nope}}",
            "variants.0.strategy.params.rank: unknown strategy kind 'nope'",
        ),
        (
            "{retrieve: [{kind: popularity, n: 20}], rerank: {kind: popularity}}",
            "variants.0.strategy.params.rerank: strategy kind 'popularity' is "
            "not a re-ranker; re-rankers: diversity_rerank",
        ),
        (
            "{retrieve: [{kind: popularity, n: 20}], "
            "rerank: {kind: diversity_rerank, params: {lambda: 2}}}",
            "variants.0.strategy.params.rerank: invalid params for "
            "'diversity_rerank': params.lambda: Input should be less than or equal to 1",
        ),
        (
            "{retrieve: [{kind: popularity, n: 4}, {kind: random, n: 3}]}",
            "variants.0.strategy.params: the stages contribute 7 candidates, fewer than "
            "simulation.slate_size (10); raise their n (got 7)",
        ),
        (
            "{retrieve: [{kind: popularity, n: 20}, {kind: popularity, n: 5}]}",
            "variants.0.strategy.params: retrieval sources must have distinct names; "
            "popularity names more than one (give repeated kinds a `name`)",
        ),
    ],
)
def test_bad_pipelines_fail_at_validation(params: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment_text(YAML.format(params=params))
    (line,) = info.value.problems
    assert line.startswith(expected), line
