"""Two-tower `validation_holdout: time`: the latest interactions, cold users included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from abplatform.domain import Catalog, InteractionLog
from strategies.two_tower import TwoTowerStrategy
from strategies.two_tower.holdout import time_holdout
from strategies.two_tower.params import TwoTowerParams
from tests.factories import GENRE_PARAMS, genre_world

TIMED: dict[str, Any] = {
    **GENRE_PARAMS,
    "negatives": "full",
    "item_bias": True,
    "validation_fraction": 0.2,
    "validation_holdout": "time",
    "epochs": 3,
}


def test_random_is_the_default_holdout() -> None:
    # Issue 15: chosen on MovieLens' validation split (bench/README.md).
    assert TwoTowerParams().validation_holdout == "random"


def test_an_unknown_holdout_names_the_field_and_the_value() -> None:
    with pytest.raises(Exception, match="validation_holdout") as caught:
        TwoTowerStrategy({"validation_holdout": "latest"})
    assert "latest" in str(caught.value)


def tiny_log() -> InteractionLog:
    """Ten rows at t = 1..10 (rows listed out of time order) over items a, b, c."""
    catalog = Catalog(
        item_ids=np.array(["a", "b", "c"]),
        categories=np.full(3, ""),
        brands=np.full(3, ""),
        prices=np.full(3, np.nan),
    )
    #          t:    3     1     2     4     5     6     7     8     9    10
    users = ["u1", "u1", "u2", "u2", "u3", "u1", "u1", "u2", "u4", "u4"]
    items = ["b", "a", "a", "b", "a", "a", "c", "c", "b", "b"]
    stamps = [3, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array(users),
        item_ids=np.array(items),
        event_types=np.full(10, "click"),
        values=np.full(10, np.nan),
        timestamps=np.array(stamps, dtype=np.int64),
        user_features={},
    )


def test_the_time_holdout_takes_the_latest_interactions() -> None:
    log = tiny_log()
    train, held = time_holdout(log, 0.5)
    # The 5 latest rows (t = 6..10) leave training; t = 1..5 stay.
    assert sorted(train.timestamps.tolist()) == [1, 2, 3, 4, 5]
    # Held-out pairs are new to their user before the cut: u1's `a` (t=6) is not (t=1);
    # u4 is first seen after the cut and is held out whole (its two `b` rows are one pair).
    pairs = {(user, str(log.catalog.item_ids[i])) for user, i in held.pairs()}
    assert pairs == {("u1", "c"), ("u2", "c"), ("u4", "b")}


def test_time_validation_scores_cold_users_and_keeps_their_ids_out_of_the_vocabulary() -> None:
    log = genre_world()  # users click in turn: the last 20% of rows are users 48-59's
    _, held = time_holdout(log, 0.2)
    assert held.user_ids.tolist() == [f"user-{u}" for u in range(48, 60)]
    strategy = TwoTowerStrategy(TIMED, seed=3)
    strategy.fit(log)
    training = strategy.artifact.manifest["training"]
    assert training["validation_users"] == 12  # cold ones, served from their profile
    assert all("val_hit@50" in epoch for epoch in training["epochs"])
    tower = strategy.artifact.user_tower
    assert tower is not None
    assert tower.row_of("user-50") == 0  # never trained an id row: the OOV row
    assert tower.row_of("user-10") > 0


def test_refit_trains_again_on_everything_for_the_best_epoch_count() -> None:
    strategy = TwoTowerStrategy({**TIMED, "refit": True}, seed=3)
    strategy.fit(genre_world())
    training = strategy.artifact.manifest["training"]
    assert training["refit_epochs"] == training["best_epoch"] >= 1
    tower = strategy.artifact.user_tower
    assert tower is not None
    assert tower.row_of("user-50") > 0  # the held-out users now train their id rows


def test_refit_is_on_by_default_and_needs_a_validation_holdout() -> None:
    assert TwoTowerParams().refit is True
    strategy = TwoTowerStrategy({**GENRE_PARAMS, "refit": True, "epochs": 2}, seed=3)
    strategy.fit(genre_world())  # validation_fraction 0: nothing to choose the epochs on
    assert strategy.artifact.manifest["training"]["refit_epochs"] is None


def test_cold_popularity_weight_lifts_only_profile_only_users_queries() -> None:
    log = genre_world()
    log = InteractionLog(
        catalog=log.catalog,
        user_ids=log.user_ids,
        item_ids=log.item_ids,
        event_types=log.event_types,
        values=log.values,
        timestamps=log.timestamps,
        user_features={**log.user_features, "newcomer": {"taste": "drama"}},
    )
    strategy = TwoTowerStrategy(
        {**GENRE_PARAMS, "epochs": 1, "cold_popularity_weight": 0.5}, seed=3
    )
    strategy.fit(log)
    artifact = strategy.artifact
    popularity_axis = artifact.user_embeddings[:, -1]
    rows = {user: i for i, user in enumerate(artifact.user_ids.tolist())}
    assert popularity_axis[rows["newcomer"]] == 0.5  # known by profile only
    assert popularity_axis[rows["user-07"]] == 0.0  # has clicks: the model alone


def test_cold_popularity_weight_must_be_servable() -> None:
    with pytest.raises(Exception, match="cold_popularity_weight") as caught:
        TwoTowerStrategy({"cold_popularity_weight": 9})
    assert "9" in str(caught.value)
