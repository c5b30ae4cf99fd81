"""A small hand-made catalogue and history that every strategy can fit on."""

from __future__ import annotations

import numpy as np
import pytest

from abplatform.domain import Catalog, InteractionLog

DAY = 86_400
END = 1_770_000_000


def make_history(
    seed: int = 0, n_items: int = 60, n_users: int = 40, n_events: int = 800
) -> InteractionLog:
    """Seeded catalogue of `n_items` in 4 categories and random clicks and purchases."""
    rng = np.random.default_rng(seed)
    catalog = Catalog(
        item_ids=np.array([f"item-{i:03d}" for i in range(n_items)]),
        categories=np.array([f"cat-{i % 4}" for i in range(n_items)]),
        brands=np.array([f"brand-{i % 7}" for i in range(n_items)]),
        prices=rng.uniform(1, 100, size=n_items).round(2),
    )
    # Skewed item popularity so rankings are well defined.
    weights = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, size=n_events, p=weights / weights.sum())
    users = rng.integers(0, n_users, size=n_events)
    types = np.where(rng.random(n_events) < 0.2, "purchase", "click")
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array([f"user-{u}" for u in users]),
        item_ids=catalog.item_ids[items],
        event_types=types.astype(str),
        values=np.where(types == "purchase", catalog.prices[items], np.nan),
        timestamps=np.sort(END - rng.integers(0, 20 * DAY, size=n_events)),
    )


@pytest.fixture
def history() -> InteractionLog:
    return make_history()
