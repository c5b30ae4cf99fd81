"""Fixtures of the feature-store tests: a migrated database with one experiment's catalogue."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine

from abplatform.storage.catalog import ItemFields, insert_items
from abplatform.storage.db import open_database
from tests.factories import Exposure, create_experiment, seed_exposures, tiny_yaml

ITEMS = [f"item{i}" for i in range(20)]
CATEGORIES = [("shoes", "bags", "hats")[i % 3] for i in range(20)]
ASSIGNED = ("u0", "u1", "u2")


@dataclass(frozen=True)
class Store:
    """A database holding experiment `feat` (catalogue `shop`, 20 items, 3 assigned units)."""

    url: str
    engine: Engine
    experiment_id: int


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    engine = open_database(db_url)
    experiment_id = create_experiment(engine, tiny_yaml("feat"))
    with engine.begin() as conn:
        insert_items(conn, "shop", ITEMS, ItemFields(category=CATEGORIES))
    seed_exposures(engine, experiment_id, [Exposure(u, "control", 0, 5) for u in ASSIGNED])
    yield Store(db_url, engine, experiment_id)
    engine.dispose()
