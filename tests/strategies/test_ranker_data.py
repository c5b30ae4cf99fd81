"""The ranker's training rows read from SQL on a hand-made log (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine

from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.db import make_engine, upgrade
from strategies.ranker.data import read_impressions
from tests.factories import T0, create_experiment, tiny_yaml


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _seed(engine: Engine) -> None:
    """Exposures 1-3 of 'rk' (inserted out of time order) and 4 of 'other', with events."""
    rk = create_experiment(engine, tiny_yaml("rk"))
    other = create_experiment(engine, tiny_yaml("other"))
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "exposures",
            {
                "experiment_id": [rk, rk, rk, other],
                "variant": ["control"] * 4,
                "unit_id": ["u1", "u2", "u1", "u3"],
                "ts": seconds_to_sql([T0 + 30, T0 + 10, T0 + 20, T0 + 5]),
                "propensity": [0.5] * 4,
                "slate_size": [2, 2, 1, 1],
                "scene": ["home", "pdp", None, "home"],
            },
        )
        bulk_insert(
            conn,
            "impressions",
            {
                "exposure_id": [1, 1, 2, 2, 3, 4],
                "position": [0, 1, 0, 1, 0, 0],
                "item_id": ["a", "b", "c", "a", "b", "a"],
                "source": ["two_tower", "popularity", None, "two_tower", "two_tower", None],
            },
        )
        bulk_insert(
            conn,
            "events",
            {
                "event_id": ["e1", "e2", "e3", "e4", "e5", "e6"],
                "experiment_id": [rk, rk, rk, rk, rk, other],
                "exposure_id": [1, 1, 2, 2, 3, 4],
                "unit_id": ["u1", "u1", "u2", "u2", "u1", "u3"],
                # b on 1 clicked twice, a on 2 bought (no click logged), c on 2 a view only
                "type": ["click", "click", "purchase", "view", "click", "click"],
                "item_id": ["b", "b", "a", "c", "b", "a"],
                "ts": seconds_to_sql([T0 + 31, T0 + 32, T0 + 11, T0 + 11, T0 + 21, T0 + 6]),
            },
        )


def test_rows_are_impressions_in_time_order_with_their_labels(engine: Engine) -> None:
    _seed(engine)
    log = read_impressions(engine, experiment="rk")
    # Expected rows, written out: exposure 2 (t+10), 3 (t+20), 1 (t+30); 4 is another experiment.
    assert log.exposure_ids.tolist() == [2, 2, 3, 1, 1]
    assert log.positions.tolist() == [0, 1, 0, 0, 1]
    assert log.item_ids.tolist() == ["c", "a", "b", "a", "b"]
    assert log.sources.tolist() == ["", "two_tower", "two_tower", "two_tower", "popularity"]
    assert log.unit_ids.tolist() == ["u2", "u2", "u1", "u1", "u1"]
    assert log.scenes.tolist() == ["pdp", "pdp", "", "home", "home"]
    assert (log.timestamps - T0).tolist() == [10, 10, 20, 30, 30]
    assert log.clicked.tolist() == [False, True, True, False, True]  # a purchase counts
    assert log.purchased.tolist() == [False, True, False, False, False]


def test_catalog_scope_reads_every_experiment_and_max_exposures_keeps_the_newest(
    engine: Engine,
) -> None:
    _seed(engine)
    everything = read_impressions(engine, catalog="shop")
    assert everything.exposure_ids.tolist() == [4, 2, 2, 3, 1, 1]
    newest = read_impressions(engine, experiment="rk", max_exposures=2)
    assert newest.exposure_ids.tolist() == [3, 1, 1]


def test_holdout_is_the_newest_whole_exposures(engine: Engine) -> None:
    _seed(engine)
    log = read_impressions(engine, experiment="rk")
    # 3 exposures, 40%: floor(1.2) = 1 held out, the newest (exposure 1, both rows).
    assert log.holdout_mask(0.4).tolist() == [False, False, False, True, True]
    assert log.holdout_mask(0.7).tolist() == [False, False, True, True, True]
    assert not np.any(log.holdout_mask(0.2))


def test_exactly_one_scope_is_required(engine: Engine) -> None:
    with pytest.raises(ValueError, match="exactly one of experiment or catalog"):
        read_impressions(engine)
