"""The fitting service: plan, seed rule, progress, and what the API and the simulator get."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose

from abplatform.config import ExperimentConfig, validate_config
from abplatform.domain import Catalog, InteractionLog, RecRequest
from abplatform.errors import AbplatformError
from abplatform.registry import build_strategy
from strategies.evaluation import HoldoutSet, RankingTally, evaluate, ranking_metrics, time_split
from strategies.fitting import (
    BASELINES,
    PlannedStrategy,
    fit_each,
    fit_strategy,
    fit_variants,
    strategy_plan,
    strategy_seed,
)
from strategies.offline import evaluate_offline
from strategies.splits import NewItemsSplit, split_history
from tests.strategies.conftest import make_history


def _config(simulation: dict[str, Any] | None = None) -> ExperimentConfig:
    document: dict[str, Any] = {
        "key": "fitting",
        "variants": [
            {"key": "control", "weight": 0.4, "strategy": {"kind": "popularity"}},
            {"key": "holdout", "weight": 0.2},
            {
                "key": "treatment",
                "weight": 0.4,
                "strategy": {"kind": "random", "params": {}},
            },
        ],
    }
    if simulation is not None:
        document["simulation"] = simulation
    return validate_config(document)


def test_the_seed_rule() -> None:
    # An explicit seed wins, else the simulation's seed, else 0.
    assert strategy_seed(_config(), 7) == 7
    assert strategy_seed(_config({"seed": 5}), 7) == 7
    assert strategy_seed(_config({"seed": 5})) == 5
    assert strategy_seed(_config()) == 0


def test_the_plan_lists_variants_in_order_then_the_baselines() -> None:
    plan = strategy_plan(_config())
    assert [(p.name, p.role, p.kind) for p in plan.strategies] == [
        ("control", "variant", "popularity"),
        ("treatment", "variant", "random"),
    ]
    assert plan.skipped == ("holdout",)
    with_baselines = strategy_plan(_config(), baselines=True)
    assert [p.name for p in with_baselines.strategies][2:] == [name for name, _ in BASELINES]
    assert all(p.role == "baseline" and not p.params for p in with_baselines.strategies[2:])


def test_fit_each_is_lazy_and_reports_progress(history: InteractionLog) -> None:
    calls: list[tuple[str, int, int]] = []
    fitted = fit_each(
        strategy_plan(_config()),
        history,
        seed=3,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert calls == []  # nothing is fitted before it is asked for
    first = next(fitted)
    assert calls == [("fit", 0, 2)]
    assert first.planned.name == "control" and first.fit_seconds >= 0
    rest = list(fitted)
    assert [one.planned.name for one in rest] == ["treatment"]
    assert calls == [("fit", 0, 2), ("fit", 1, 2), ("fit", 2, 2)]
    assert rest[0].strategy.seed == 3


def test_fit_variants_fits_every_variant_with_the_seed_rule(history: InteractionLog) -> None:
    config = _config({"seed": 11})
    fitted = fit_variants(history, config, "unused for a log")
    assert fitted.history is history
    assert list(fitted.strategies) == ["control", "holdout", "treatment"]
    assert fitted.strategies["holdout"] is None
    # The same slates as a strategy built by hand with the simulation's seed.
    by_hand = build_strategy("random", {}, seed=11)
    by_hand.fit(history)
    served = fitted.strategies["treatment"]
    assert served is not None
    request = RecRequest("user-1")
    assert served.recommend(request, 5) == by_hand.recommend(request, 5)


def test_fit_strategy_validates_params(history: InteractionLog) -> None:
    with pytest.raises(ValueError, match="window_days"):
        fit_strategy(PlannedStrategy("p", "variant", "popularity", {"window_days": 0}), history, 0)


def test_new_items_split_is_the_per_user_time_split() -> None:
    history = make_history(n_events=600)
    parts = split_history(history, NewItemsSplit(2))
    train, test = time_split(history, 2)
    assert parts.train.user_ids.tolist() == train.user_ids.tolist()
    assert parts.train.timestamps.tolist() == train.timestamps.tolist()
    pairs = sorted(zip(parts.test.user_ids.tolist(), parts.test.item_ids.tolist(), strict=True))
    index = history.catalog.item_ids
    assert pairs == sorted((user, str(index[item])) for user, item in test.pairs())
    assert parts.to_dict()["kind"] == "new_items" and parts.to_dict()["per_user"] == 2


def test_the_report_on_new_items_matches_the_per_user_evaluation() -> None:
    # `train`'s protocol (time_split, clicked or bought items excluded) through the one report.
    history = make_history(n_events=600)
    report = evaluate_offline(
        _config(), history, split=NewItemsSplit(1), ks=(5, 10), baselines=False, seed=4
    )
    train, test = time_split(history, 1)
    for name, kind in (("control", "popularity"), ("treatment", "random")):
        expected = evaluate(build_strategy(kind, {}, seed=4), train, test, ks=(5, 10))
        got = report.result(name).metrics
        for metric in ("recall@5", "recall@10", "ndcg@10", "coverage@10", "users"):
            assert_allclose(got[metric], expected[metric], rtol=1e-12)
        assert_allclose(got["diversity@5"], expected["diversity@5"], rtol=1e-12)
        assert_allclose(got["novelty@5"], expected["novelty@5"], rtol=1e-12)
    assert report.split.parameters == {"kind": "new_items", "per_user": 1}
    assert report.split.cold_users == 0 and "cold_hit@5" not in report.result("control").metrics
    assert report.skipped == ("holdout",)


def test_a_tally_in_blocks_equals_the_whole() -> None:
    history = make_history(n_events=600)
    _, test = time_split(history, 2)
    rng = np.random.default_rng(0)
    ranked = rng.permuted(np.tile(np.arange(60), (len(test), 1)), axis=1)[:, :10]
    whole = ranking_metrics(ranked, test, n_items=60, ks=(3, 10))
    tally = RankingTally((3, 10), 60)
    half = len(test) // 2
    for lo, hi in ((0, half), (half, len(test))):
        first, last = test.indptr[lo], test.indptr[hi]
        block = HoldoutSet(
            test.user_ids[lo:hi], test.indptr[lo : hi + 1] - first, test.items[first:last]
        )
        tally.add(ranked[lo:hi], block)
    blocks = tally.metrics(("recall", "ndcg", "coverage", "user_hit"))
    for name, value in blocks.items():
        assert_allclose(value, whole[name], rtol=1e-12)


def test_an_item_only_viewed_before_stays_a_new_item_target() -> None:
    catalog = Catalog(
        item_ids=np.array(["a", "b", "c"]),
        categories=np.array(["x", "y", "z"]),
        brands=np.array([""] * 3),
        prices=np.ones(3),
    )
    # u views a, clicks b, then clicks a.
    history = InteractionLog(
        catalog=catalog,
        user_ids=np.array(["u", "u", "u"]),
        item_ids=np.array(["a", "b", "a"]),
        event_types=np.array(["view", "click", "click"]),
        values=np.full(3, np.nan),
        timestamps=np.array([1, 2, 3], dtype=np.int64),
    )
    config = validate_config(
        {"key": "k", "variants": [{"key": "p", "weight": 1.0, "strategy": {"kind": "popularity"}}]}
    )
    report = evaluate_offline(config, history, split=NewItemsSplit(1), ks=(2,), baselines=False)
    # The click of a is held out; the earlier view does not make a seen (it is new to u).
    assert (report.split.test_pairs, report.split.seen_pairs_dropped) == (1, 0)
    assert report.split.train_interactions == 2 and report.split.test_interactions == 1


def test_new_items_split_says_when_no_user_can_hold_out() -> None:
    history = make_history(n_events=600)
    with pytest.raises(AbplatformError, match="has enough history to hold out 500 item") as e:
        split_history(history, NewItemsSplit(500), "shop")
    assert e.value.hint is not None and "--holdout" in e.value.hint
