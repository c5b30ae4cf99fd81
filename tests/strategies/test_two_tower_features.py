"""Two-tower catalogue and profile features: tags, profile columns, ids-only catalogues."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from abplatform.domain import Catalog, InteractionLog, RecRequest
from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.catalog import load_history
from abplatform.storage.db import open_database
from strategies.two_tower import TwoTowerStrategy
from strategies.two_tower.data import ItemFeatures, UserInputs, split_tags
from tests.factories import GENRE_END, GENRE_PARAMS, genre_world


def scores(strategy: TwoTowerStrategy) -> np.ndarray:
    """(known users, items) model scores: cosines without the popularity axis."""
    artifact = strategy.artifact
    users = artifact.user_embeddings[:, :-1].astype(np.float64)
    items = artifact.item_embeddings[:, :-1].astype(np.float64)
    return users @ items.T


class TestTagEncoding:
    def test_split_tags_drops_blanks_and_duplicates(self) -> None:
        assert split_tags(" Drama | Comedy||Drama| ") == ["Drama", "Comedy"]
        assert split_tags("") == []

    def test_codes_by_item_token(self) -> None:
        catalog = Catalog(
            item_ids=np.array(["a", "b", "c"]),
            categories=np.array(["x", "x", "y"]),
            brands=np.array(["", "", ""]),
            prices=np.array([1.0, np.nan, 3.0]),
            tags=np.array(["war|drama", "", "comedy|drama|comedy"]),
        )
        features = ItemFeatures.from_catalog(catalog)
        assert features.tags == ["comedy", "drama", "war"]
        # Row 0 is the padding token; codes are 1 + the label's place in the vocabulary.
        assert_array_equal(features.tag_codes, [[0, 0], [3, 2], [0, 0], [1, 2]])

    def test_no_tags_means_no_label_column(self) -> None:
        catalog = Catalog(
            item_ids=np.array(["a", "b"]),
            categories=np.array(["", ""]),
            brands=np.array(["", ""]),
            prices=np.array([np.nan, np.nan]),
        )
        features = ItemFeatures.from_catalog(catalog)
        assert features.tags == [] and features.tag_codes.shape == (3, 0)


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return genre_world()


@pytest.fixture(scope="module")
def fitted(log: InteractionLog) -> TwoTowerStrategy:
    strategy = TwoTowerStrategy(GENRE_PARAMS, seed=3)
    strategy.fit(log)
    return strategy


class TestTagsAndProfiles:
    def test_a_never_clicked_item_is_scored_by_its_tags(
        self, log: InteractionLog, fitted: TwoTowerStrategy
    ) -> None:
        # The 8 cold movies (32..39) were never clicked: their id embeddings are untrained,
        # so only the genre tag can put every cold drama above every cold comedy for a drama
        # fan. (With `tags=None` the same fit separates them for none of the 60 users.)
        table = scores(fitted)
        users = fitted.artifact.user_ids.tolist()
        cold = np.arange(32, 40)
        drama, comedy = cold[cold % 2 == 0], cold[cold % 2 == 1]
        fans = np.array([int(u[-2:]) % 2 == 0 for u in users])
        assert (table[fans][:, drama].min(axis=1) > table[fans][:, comedy].max(axis=1)).all()
        assert (table[~fans][:, comedy].min(axis=1) > table[~fans][:, drama].max(axis=1)).all()

    def test_a_profile_only_user_gets_their_tastes(self, log: InteractionLog) -> None:
        profiles = {
            **log.user_features,
            "new-drama-fan": {"taste": "drama"},
            "new-comedy-fan": {"taste": "comedy"},
        }
        strategy = TwoTowerStrategy({**GENRE_PARAMS, "cold_start_dropout": 0.3}, seed=3)
        strategy.fit(replace(log, user_features=profiles))
        drama = strategy.recommend(RecRequest("new-drama-fan"), 10).items
        comedy = strategy.recommend(RecRequest("new-comedy-fan"), 10).items
        tags = log.catalog.tags
        assert tags is not None
        genre = dict(zip(log.catalog.item_ids.tolist(), tags.tolist(), strict=True))
        assert all(genre[i].startswith("drama") for i in drama)
        assert all(genre[i].startswith("comedy") for i in comedy)

    def test_numpy_tower_equals_tf_tower_with_tags(self, fitted: TwoTowerStrategy) -> None:
        history = ["movie-04", "movie-36", "movie-10"]
        index = fitted.catalog.index()
        tokens = np.zeros((1, GENRE_PARAMS["history_length"]), dtype=np.int32)
        tokens[0, :3] = [index[i] + 1 for i in history]
        encoder = fitted.artifact.feature_encoder
        codes, numbers = encoder.transform(["x"], {"x": {"taste": "drama"}})
        inputs = UserInputs(np.array(["never-seen"]), tokens, codes, numbers)
        tf_query = fitted.towers.user_embeddings(inputs)
        numpy_query = fitted.embed_history(history, None, {"taste": "drama"})
        assert_allclose(numpy_query, tf_query, atol=1e-5)

    def test_artifact_round_trip_keeps_tags(
        self, fitted: TwoTowerStrategy, log: InteractionLog, tmp_path: Path
    ) -> None:
        path = fitted.export(tmp_path, experiment="movies", variant="tt")
        served = TwoTowerStrategy.from_artifact(path)
        assert served.catalog.tags is not None
        assert_array_equal(served.catalog.tags, log.catalog.tags)
        assert served.artifact.user_tower is not None
        assert served.artifact.user_tower.item_tags.shape[1] == 2
        request = RecRequest("someone-new", current_item="movie-06")
        assert served.recommend(request, 5) == fitted.recommend(request, 5)
        for user in ("user-00", "user-01", "unknown"):
            assert served.recommend(RecRequest(user), 5) == fitted.recommend(RecRequest(user), 5)


def test_an_ids_only_catalogue_trains_and_serves(tmp_path: Path) -> None:
    log = genre_world()
    n = len(log.catalog)
    bare = Catalog(
        item_ids=log.catalog.item_ids,
        categories=np.full(n, ""),
        brands=np.full(n, ""),
        prices=np.full(n, np.nan),
    )
    strategy = TwoTowerStrategy(GENRE_PARAMS, seed=5)
    strategy.fit(replace(log, catalog=bare, user_features={}))
    assert strategy.fallback_reason is None
    slate = strategy.recommend(RecRequest("user-00"), 10)
    assert len(set(slate.items)) == 10
    served = TwoTowerStrategy.from_artifact(strategy.export(tmp_path, experiment="e", variant="v"))
    assert served.recommend(RecRequest("user-00"), 10) == slate
    cold = RecRequest("new", current_item="movie-02")
    assert served.recommend(cold, 10) == strategy.recommend(cold, 10)


def test_tags_and_profiles_are_read_from_sql(db_url: str) -> None:
    engine = open_database(db_url)
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "catalog_items",
            {
                "catalog": ["shop"] * 3,
                "item_id": ["a", "b", "c"],
                "tags": ["drama|war", None, ""],
            },
        )
        bulk_insert(
            conn,
            "users",
            {
                "catalog": ["shop"],
                "user_id": ["u1"],
                "features": [json.dumps({"gender": "F", "occupation": "writer"})],
            },
        )
        bulk_insert(
            conn,
            "interactions",
            {
                "catalog": ["shop"] * 2,
                "user_id": ["u1", "u1"],
                "item_id": ["a", "b"],
                "type": ["click", "click"],
                "value": [None, None],
                "ts": seconds_to_sql([GENRE_END, GENRE_END + 1]),
            },
        )
    with engine.connect() as conn:
        history = load_history(conn, "shop")
    engine.dispose()
    assert history.catalog.tags is not None
    assert history.catalog.tags.tolist() == ["drama|war", "", ""]
    assert history.user_features == {"u1": {"gender": "F", "occupation": "writer"}}
    features = ItemFeatures.from_catalog(history.catalog)
    assert features.tags == ["drama", "war"]


def test_item_bias_is_served_as_one_more_axis(log: InteractionLog, tmp_path: Path) -> None:
    strategy = TwoTowerStrategy({**GENRE_PARAMS, "item_bias": True}, seed=3)
    strategy.fit(log)
    artifact = strategy.artifact
    dim = GENRE_PARAMS["embedding_dim"]
    assert artifact.dim == dim + 2  # model axes, item bias, popularity
    assert_array_equal(artifact.user_embeddings[:, dim:], np.tile([1.0, 0.0], (60, 1)))
    assert_array_equal(artifact.default_embedding, [0.0] * (dim + 1) + [1.0])
    vectors = strategy.item_vectors()
    assert vectors is not None and vectors.shape == (len(log.catalog), dim)
    # The served item-bias column is temperature * b, centred on its median, |.| <= 0.5.
    offsets = strategy.towers.item_offsets()
    expected = np.clip(offsets - np.median(offsets), -0.5, 0.5)
    assert_allclose(artifact.item_embeddings[:, dim], expected, atol=1e-6)
    # Never-clicked items are in no batch: they keep their start, log(1 + 0) - mean(log(1 + n)),
    # the lowest start, which is below the median of the (mostly clicked) items.
    cold = artifact.item_embeddings[32:, dim]
    assert_array_equal(cold, np.full(8, cold[0]))
    assert cold[0] < 0
    served = TwoTowerStrategy.from_artifact(strategy.export(tmp_path, experiment="e", variant="v"))
    for request in (RecRequest("user-03"), RecRequest("new", current_item="movie-05")):
        assert served.recommend(request, 10) == strategy.recommend(request, 10)
