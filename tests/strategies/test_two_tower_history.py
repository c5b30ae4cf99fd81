"""Two-tower `example_history: others` and `history_dropout`: a user as the bag of their items."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from abplatform.domain import InteractionLog, RecRequest
from strategies.two_tower import TwoTowerStrategy
from strategies.two_tower.data import (
    PositiveSequences,
    other_history,
    positive_sequences,
    training_examples,
)
from strategies.two_tower.params import TwoTowerParams
from tests.factories import GENRE_PARAMS, genre_world

BAG: dict[str, Any] = {
    **GENRE_PARAMS,
    "negatives": "full",
    "item_bias": True,
    "example_history": "others",
    "history_dropout": 0.3,
}


def test_the_defaults_embed_a_user_from_the_bag_of_their_items() -> None:
    # Issue 15: chosen on MovieLens 100K's validation split (bench/README.md).
    params = TwoTowerParams()
    assert params.example_history == "others"
    assert params.history_dropout == 0.5
    assert params.history_embeddings == "own"


def random_sequences(seed: int) -> PositiveSequences:
    """Ten users with 0-12 steps each over 30 items."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 13, size=10)
    n = int(counts.sum())
    return PositiveSequences(
        user_ids=np.array([f"u{i}" for i in range(10)]),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=rng.integers(0, 30, size=n).astype(np.int64),
        weights=np.ones(n),
        purchased_indptr=np.zeros(11, dtype=np.int64),
        purchased_items=np.zeros(0, dtype=np.int64),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("length", [0, 1, 4, 20])
def test_other_history_is_the_latest_other_steps(seed: int, length: int) -> None:
    seq = random_sequences(seed)
    users = np.repeat(np.arange(seq.n_users), np.diff(seq.indptr))
    positions = np.arange(len(seq), dtype=np.int64)
    got = other_history(seq, positions, users, length)
    for p, u in zip(positions.tolist(), users.tolist(), strict=True):
        start, end = int(seq.indptr[u]), int(seq.indptr[u + 1])
        # Oracle: the user's steps newest first, the example's own step left out.
        others = [int(seq.items[q]) + 1 for q in range(end - 1, start - 1, -1) if q != p]
        want = (others + [0] * length)[:length]
        assert got[p].tolist() == want, (p, u)


def test_others_examples_never_hold_their_own_step() -> None:
    seq = random_sequences(5)
    before = training_examples(seq, 6)
    others = training_examples(seq, 6, context="others")
    assert np.array_equal(before.items, others.items)
    assert np.array_equal(before.weights, others.weights)
    # A user's last step has the same history both ways; their first has none "before".
    last = seq.indptr[1:][np.diff(seq.indptr) > 0] - 1
    assert np.array_equal(before.history[last], others.history[last])
    first = seq.indptr[:-1][np.diff(seq.indptr) > 1]
    assert (before.history[first] == 0).all() and (others.history[first, 0] > 0).all()


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return genre_world()


@pytest.fixture(scope="module", params=["own", "shared"])
def fitted(log: InteractionLog, request: pytest.FixtureRequest) -> TwoTowerStrategy:
    strategy = TwoTowerStrategy({**BAG, "history_embeddings": request.param}, seed=3)
    strategy.fit(log)
    return strategy


def test_the_bag_of_items_learns_each_users_genre(
    log: InteractionLog, fitted: TwoTowerStrategy
) -> None:
    tags = log.catalog.tags
    assert tags is not None
    genre = dict(zip(log.catalog.item_ids.tolist(), tags.tolist(), strict=True))
    for u in range(60):
        taste = "drama" if u % 2 == 0 else "comedy"
        slate = fitted.recommend(RecRequest(f"user-{u:02d}"), 10).items
        assert all(genre[item].startswith(taste) for item in slate), (u, slate)


def test_history_dropout_is_training_only(log: InteractionLog, fitted: TwoTowerStrategy) -> None:
    # Serving reads every history item: the NumPy tower equals the Keras tower (no dropout).
    from strategies.two_tower.data import user_inputs

    sequences = positive_sequences(log, fitted.params.purchase_weight)
    inputs = user_inputs(
        sequences,
        sequences.user_ids,
        fitted.artifact.feature_encoder,
        log.user_features,
        BAG["history_length"],
    )
    keras = fitted.towers.user_embeddings(inputs).astype(np.float64)
    tower = fitted.artifact.user_tower
    assert tower is not None
    rows = np.array([tower.row_of(u) for u in inputs.user_ids.tolist()], dtype=np.int64)
    numpy = tower.embed(rows, inputs.history, inputs.feature_codes, inputs.numeric)
    np.testing.assert_allclose(numpy, keras, atol=1e-5)
    # The artifact keeps the table the behaviour sequence reads: its own one, or the
    # candidate tower's.
    candidate = fitted.towers.item_tower.items.item_embedding.embeddings.numpy()
    own = fitted.params.history_embeddings == "own"
    assert np.array_equal(tower.item_table, candidate) is not own
    again = fitted.towers.user_embeddings(inputs)
    assert np.array_equal(again, fitted.towers.user_embeddings(inputs))
