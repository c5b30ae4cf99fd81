"""Serving runtime: slates coalesced across concurrent requests equal slates one by one."""

from __future__ import annotations

import asyncio

import pytest

from abplatform.api.runtime import Coalescer
from abplatform.domain import RecRequest
from abplatform.registry import build_strategy
from abplatform.storage.catalog import load_history
from abplatform.storage.db import open_database
from tests.api.conftest import KEY

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_coalesced_slates_equal_single_slates(seeded_url: str) -> None:
    engine = open_database(seeded_url)
    with engine.connect() as conn:
        history = load_history(conn, f"sim:{KEY}")
    engine.dispose()
    strategy = build_strategy("popularity", {"per_category": True}, seed=3)
    strategy.fit(history)
    coalescer = Coalescer(strategy)
    requests = [RecRequest(unit_id=f"u{i}", current_item=None) for i in range(20)]
    together = await asyncio.gather(
        *(coalescer.recommend(r, 4 + i % 2) for i, r in enumerate(requests))
    )
    alone = [strategy.recommend(r, 4 + i % 2) for i, r in enumerate(requests)]
    assert together == alone
