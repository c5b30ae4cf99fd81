"""Two-tower negatives: the full-catalogue softmax learns, and its loss is the exact one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import logsumexp

from abplatform.domain import InteractionLog, RecRequest
from strategies.two_tower import TwoTowerStrategy
from strategies.two_tower.data import ItemFeatures, training_examples
from strategies.two_tower.params import TwoTowerParams
from tests.factories import GENRE_PARAMS, genre_world

FULL: dict[str, Any] = {**GENRE_PARAMS, "negatives": "full", "item_bias": True}


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return genre_world()


def test_full_is_the_default() -> None:
    # Issue 15: the exact softmax is cheap for catalogues of thousands of items.
    assert TwoTowerParams().negatives == "full"


def test_an_unknown_negatives_mode_names_the_field() -> None:
    with pytest.raises(Exception, match="negatives") as caught:
        TwoTowerStrategy({"negatives": "sampled"})
    assert "sampled" in str(caught.value)


def test_full_softmax_learns_each_users_genre(log: InteractionLog, tmp_path: Path) -> None:
    strategy = TwoTowerStrategy(FULL, seed=3)
    strategy.fit(log)
    tags = log.catalog.tags
    assert tags is not None
    genre = dict(zip(log.catalog.item_ids.tolist(), tags.tolist(), strict=True))
    # Each user clicked 8 of the 16 clicked movies of one genre (even users drama): every
    # movie of their top 10 is of that genre.
    for u in range(60):
        taste = "drama" if u % 2 == 0 else "comedy"
        slate = strategy.recommend(RecRequest(f"user-{u:02d}"), 10).items
        assert all(genre[item].startswith(taste) for item in slate), (u, slate)
    served = TwoTowerStrategy.from_artifact(strategy.export(tmp_path, experiment="e", variant="v"))
    for request in (RecRequest("user-07"), RecRequest("new", current_item="movie-04")):
        assert served.recommend(request, 10) == strategy.recommend(request, 10)


def test_full_softmax_loss_is_the_weighted_cross_entropy_over_the_catalogue(
    log: InteractionLog,
) -> None:
    from strategies.two_tower import model as tt
    from strategies.two_tower.data import positive_sequences

    params = TwoTowerParams.model_validate(FULL)
    sequences = positive_sequences(log, params.purchase_weight)
    examples = training_examples(sequences, params.history_length)
    items = ItemFeatures.from_catalog(log.catalog)
    n_items = len(log.catalog)
    tables = tt.ItemTables(items, params)
    user_tower = tt.UserTower(sequences.user_ids.tolist(), tables, [], params, seed=1)
    item_tower = tt.ItemTower(tables, items, params)
    rng = np.random.default_rng(5)
    initial = rng.normal(size=n_items + 1).astype(np.float32)
    model = tt.TwoTowerModel(
        user_tower, item_tower, params.temperature, tt.ItemBias(initial), n_items
    )
    rows = np.arange(0, len(examples), 7)
    weights = rng.uniform(0.5, 3.0, size=rows.size).astype(np.float32)
    features = {
        "user_id": examples.user_ids[rows],
        "history": examples.history[rows],
        "item": examples.items[rows],
        "weight": weights,
        "sampling_probability": examples.sampling_probability[rows],
    }
    loss = float(model.compute_loss(features, training=False))
    # Oracle: log-softmax of cos / T + b over all items, at the true item, weighted and summed.
    queries = user_tower(features, training=False).numpy().astype(np.float64)
    tokens = np.arange(1, n_items + 1, dtype=np.int32)
    candidates = item_tower(tokens, training=False).numpy().astype(np.float64)
    logits = queries @ candidates.T / params.temperature + initial[1:].astype(np.float64)
    true = logits[np.arange(rows.size), examples.items[rows] - 1]
    expected = float(np.sum(weights * (logsumexp(logits, axis=1) - true)))
    assert_allclose(loss, expected, rtol=1e-5)


def test_a_random_holdout_takes_whole_pairs(log: InteractionLog) -> None:
    from strategies.two_tower.holdout import random_holdout

    train, held = random_holdout(log, 0.25, seed=4)
    pairs = set(zip(log.user_ids.tolist(), log.item_ids.tolist(), strict=True))
    held_pairs = {(u, log.catalog.item_ids[i]) for u, i in held.pairs()}
    assert len(held_pairs) == round(0.25 * len(pairs))  # 480 distinct pairs -> 120
    kept = set(zip(train.user_ids.tolist(), train.item_ids.tolist(), strict=True))
    assert kept == pairs - held_pairs
    assert len(train) == len(log) - len(held_pairs)  # one click per pair in this world


def test_random_validation_holdout_steers_early_stopping(log: InteractionLog) -> None:
    params = {**FULL, "validation_fraction": 0.2, "validation_holdout": "random", "epochs": 3}
    strategy = TwoTowerStrategy(params, seed=3)
    strategy.fit(log)
    training = strategy.artifact.manifest["training"]
    assert training["validation_users"] > 40  # 96 held pairs over 60 users
    # Pair-weighted, as a random split weighs its held-out pairs.
    assert all("val_hit@50" in epoch for epoch in training["epochs"])
