"""The merge of offline and online features, and what each strategy makes of it.

The feature-skew tests: the offline features at a cut-off are what training saw (the
two-tower's positive sequences and the user vectors embedded from them, popularity's
favourite categories), and a request with no online events since the cut-off is served
exactly as before.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from numpy.testing import assert_allclose

from abplatform.domain import InteractionLog, OnlineFeatures, RecentInteraction, RecRequest
from abplatform.features import OfflineFeatures, merge_features, online_features_of
from abplatform.registry import build_strategy
from strategies.evaluation import POSITIVE_EVENTS
from strategies.popularity import PopularityStrategy
from strategies.two_tower.data import last_history, positive_sequences
from strategies.two_tower.strategy import TwoTowerStrategy
from tests.factories import DAY, HISTORY_END, make_history

LENGTH = 5


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    history = make_history(n_events=1500)
    # Some views too: they count for the favourite category, never for the sequence.
    views = make_history(seed=3, n_events=300)
    return InteractionLog(
        catalog=history.catalog,
        user_ids=np.concatenate([history.user_ids, views.user_ids]),
        item_ids=np.concatenate([history.item_ids, views.item_ids]),
        event_types=np.concatenate([history.event_types, np.full(300, "view")]),
        values=np.concatenate([history.values, views.values]),
        timestamps=np.concatenate([history.timestamps, views.timestamps]),
    )


def cut(log: InteractionLog, cutoff: int) -> InteractionLog:
    """The log a model trained at `cutoff` saw."""
    keep = log.timestamps <= cutoff
    return InteractionLog(
        catalog=log.catalog,
        user_ids=log.user_ids[keep],
        item_ids=log.item_ids[keep],
        event_types=log.event_types[keep],
        values=log.values[keep],
        timestamps=log.timestamps[keep],
    )


def tokens(offline: OfflineFeatures, user: str) -> list[int]:
    positives = [offline.item_index[i] + 1 for i in offline.positives(user)][:LENGTH]
    return positives + [0] * (LENGTH - len(positives))


@pytest.mark.parametrize("days_before_end", [0, 5])
def test_offline_sequences_at_the_cutoff_are_what_the_two_tower_trains_on(
    log: InteractionLog, days_before_end: int
) -> None:
    cutoff = HISTORY_END - days_before_end * DAY
    offline = OfflineFeatures.from_history(log, cutoff)
    trained_on = cut(log, cutoff)
    sequences = positive_sequences(trained_on, purchase_weight=5.0)
    expected = last_history(sequences, LENGTH)
    assert POSITIVE_EVENTS == ("click", "purchase")  # the merge's positive types, too
    assert sequences.n_users > 30
    for row, user in enumerate(sequences.user_ids.tolist()):
        assert tokens(offline, user) == expected[row].tolist(), user
    assert offline.positives("never-seen") == ()


def test_offline_favourite_categories_are_what_popularity_learned(log: InteractionLog) -> None:
    popularity = PopularityStrategy({"per_category": True}, seed=1)
    popularity.fit(log)
    offline = OfflineFeatures.from_history(log)
    learned = popularity._favourite
    assert len(learned) > 30
    for user, code in learned.items():
        counts = offline.category_counts_of(user)
        assert min(counts, key=lambda c: (-counts[c], c)) == code, user


def test_no_online_events_since_the_cutoff_change_nothing(log: InteractionLog) -> None:
    offline = OfflineFeatures.from_history(log)
    request = RecRequest("user-1", scene="home_page")
    assert merge_features(offline, None, request) is request
    old = OnlineFeatures(
        3, (RecentInteraction("item-001", "click", offline.cutoff),), ("item-002",)
    )
    assert merge_features(offline, old, request) is request  # at the cut-off: in the history


def test_the_merge_puts_fresh_events_before_the_history(log: InteractionLog) -> None:
    offline = OfflineFeatures.from_history(log)
    user = "user-1"
    history = offline.positives(user)
    assert len(history) >= 3
    after = offline.cutoff + 10
    online = OnlineFeatures(
        version=7,
        recent=(
            RecentInteraction("item-059", "purchase", after + 4),
            RecentInteraction("item-059", "click", after + 3),  # one run on one item: one step
            RecentInteraction("item-058", "view", after + 2),  # not a positive step
            RecentInteraction(history[0], "click", after + 1),  # continues the history's newest
            RecentInteraction("item-001", "click", offline.cutoff - 5),  # already in the history
        ),
        cart=("item-050",),
    )
    merged = merge_features(offline, online, RecRequest(user))
    features = merged.features
    assert features is not None
    assert features.version == 7
    assert features.positive_items[:2] == ("item-059", history[0])
    assert features.positive_items[2:] == history[1:]
    assert features.online_positives == 2
    assert features.last_viewed == "item-059"  # the newest view or click
    assert (features.cart, features.purchased) == (("item-050",), ("item-059",))
    # Enough fresh interactions in one category make it the favourite.
    many = tuple(RecentInteraction("item-003", "view", after + i) for i in range(200))
    flooded = merge_features(offline, OnlineFeatures(8, many), RecRequest(user)).features
    assert flooded is not None and flooded.favourite_category == "cat-3"


def test_strategies_declare_the_online_features_they_use(log: InteractionLog) -> None:
    declared = {}
    for kind, params in (
        ("popularity", {}),
        ("popularity", {"per_category": True}),
        ("complementary", {"events": ["click", "purchase"]}),
        ("similar_items", {}),
        ("random", {}),
        ("scene_router", {"strategies": {"s": {"kind": "similar_items"}}, "default": "s"}),
    ):
        strategy = build_strategy(kind, params, seed=1)
        strategy.fit(log)
        declared[(kind, bool(params))] = online_features_of(strategy)
    assert declared == {
        ("popularity", False): frozenset(),
        ("popularity", True): {"favourite_category"},
        ("complementary", True): {"cart"},
        ("similar_items", False): {"last_viewed"},
        ("random", False): frozenset(),
        ("scene_router", True): {"last_viewed"},
    }


def test_each_strategy_uses_its_fresh_features(log: InteractionLog) -> None:
    offline = OfflineFeatures.from_history(log)
    after = offline.cutoff + 1
    online = OnlineFeatures(
        2,
        (
            *(RecentInteraction("item-003", "view", after + i) for i in range(200)),
            RecentInteraction("item-007", "add_to_cart", after + 300),
        ),
        cart=("item-007",),
    )
    request = RecRequest("user-1")
    fresh = merge_features(offline, online, request)

    popularity = build_strategy("popularity", {"per_category": True}, seed=1)
    popularity.fit(log)
    assert popularity.recommend(request, 5) != popularity.recommend(fresh, 5)
    cat3 = {f"item-{i:03d}" for i in range(3, 60, 4)}
    assert set(popularity.recommend(fresh, 5).items) <= cat3
    static = build_strategy("popularity", {"per_category": True}, seed=1)
    static.fit(log)
    assert static.recommend(replace(fresh, features=None), 5) == static.recommend(request, 5)

    complementary = build_strategy("complementary", {"events": ["click", "purchase"]}, seed=1)
    complementary.fit(log)
    with_cart = replace(request, cart_items=("item-007",))
    assert complementary.recommend(fresh, 5) == complementary.recommend(with_cart, 5)
    sent = replace(fresh, cart_items=("item-001",))  # the request's own cart comes first
    assert complementary.recommend(sent, 5) == complementary.recommend(
        replace(request, cart_items=("item-001",)), 5
    )

    similar = build_strategy("similar_items", {}, seed=1)
    similar.fit(log)
    viewed = replace(request, current_item="item-007")  # the newest view or click ...
    assert fresh.features is not None and fresh.features.last_viewed == "item-003"
    assert similar.recommend(fresh, 5) == similar.recommend(
        replace(request, current_item="item-003"), 5
    )
    assert similar.recommend(replace(fresh, current_item="item-007"), 5) == similar.recommend(
        viewed, 5
    )


@pytest.mark.slow
def test_two_tower_user_vectors_at_the_cutoff_are_the_trained_ones(log: InteractionLog) -> None:
    """Re-embedding each user's offline sequence gives the stored vector; a fresh click
    changes the query to the embedding of the fresh sequence, ranked by an exact top-k."""
    params = {
        "embedding_dim": 8,
        "hidden_units": [16],
        "epochs": 2,
        "batch_size": 128,
        "history_length": LENGTH,
        "exclude_purchased": True,
    }
    strategy = build_strategy("two_tower", params, seed=11)
    assert isinstance(strategy, TwoTowerStrategy)
    strategy.fit(log)
    offline = OfflineFeatures.from_history(log)
    artifact = strategy.artifact
    rows = {u: i for i, u in enumerate(artifact.user_ids.tolist())}
    checked = 0
    for user in offline.users:
        if not offline.positives(user):
            continue
        query = strategy._served_query(strategy.embed_history(offline.positives(user), user))
        assert_allclose(query, artifact.user_embeddings[rows[user]], atol=2e-5)
        checked += 1
    assert checked > 30
    user = "user-1"
    online = OnlineFeatures(1, (RecentInteraction("item-042", "click", offline.cutoff + 1),))
    fresh = merge_features(offline, online, RecRequest(user))
    assert fresh.features is not None
    slate = strategy.recommend(fresh, 10)
    query = strategy._served_query(strategy.embed_history(fresh.features.positive_items, user))
    scores = artifact.item_embeddings.astype(np.float64) @ query
    scores[artifact.purchased(rows[user])] = -np.inf
    order = np.lexsort((np.arange(scores.size), -scores))[:10]
    assert slate.items == tuple(artifact.catalog.item_ids[order].tolist())
    assert slate != strategy.recommend(RecRequest(user), 10)
    assert strategy.recommend_batch([fresh, RecRequest(user)], 10) == [
        slate,
        strategy.recommend(RecRequest(user), 10),
    ]
    # The fresh query is kept by its inputs (no re-embedding while the unit is unchanged);
    # one more click is new inputs: embedded afresh, never answered from the kept query.
    assert strategy.recommend(fresh, 10) == slate
    newer = OnlineFeatures(
        2, (RecentInteraction("item-007", "click", offline.cutoff + 2), *online.recent)
    )
    later = merge_features(offline, newer, RecRequest(user))
    assert later.features is not None and later.features.positive_items[0] == "item-007"
    kept = strategy._online_query(later, rows[user])
    assert kept is not None
    expected = strategy._served_query(strategy.embed_history(later.features.positive_items, user))
    assert_allclose(kept[0], expected)
    assert not np.allclose(kept[0], query)
