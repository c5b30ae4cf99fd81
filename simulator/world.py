"""The synthetic shop: a catalogue with latent item vectors and users with latent tastes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from abplatform.config.models import SimulationConfig, WorldConfig
from abplatform.domain import Catalog


@dataclass(frozen=True)
class World:
    """Ground-truth state of the simulated shop; strategies never see the latent parts."""

    params: WorldConfig
    item_ids: npt.NDArray[np.str_]
    item_category: npt.NDArray[np.int64]
    item_brand: npt.NDArray[np.int64]
    item_price: npt.NDArray[np.float64]
    item_vectors: npt.NDArray[np.float64]  # (items, d), unit norm
    item_quality: npt.NDArray[np.float64]  # baseline appeal of each item
    item_browse_weight: npt.NDArray[np.float64]  # how often organic browsing meets the item
    category_vectors: npt.NDArray[np.float64]  # (categories, d), unit norm
    category_share: npt.NDArray[np.float64]  # organic traffic share of each category
    user_ids: npt.NDArray[np.str_]
    user_vectors: npt.NDArray[np.float64]  # (users, d), unit norm
    user_price_sensitivity: npt.NDArray[np.float64]
    user_activity: npt.NDArray[np.float64]  # multiplies session rates; mean 1
    reference_price: float

    @property
    def n_items(self) -> int:
        """Number of items."""
        return int(self.item_ids.shape[0])

    @property
    def n_users(self) -> int:
        """Number of users."""
        return int(self.user_ids.shape[0])

    def catalog(self) -> Catalog:
        """The catalogue as strategies see it: ids, categories, brands, prices."""
        return Catalog(
            item_ids=self.item_ids,
            categories=np.array([f"cat-{c:02d}" for c in self.item_category.tolist()], dtype=str),
            brands=np.array([f"brand-{b:02d}" for b in self.item_brand.tolist()], dtype=str),
            prices=self.item_price,
        )


def _unit_rows(matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: npt.NDArray[np.float64] = matrix / np.maximum(norms, 1e-12)
    return unit


def build_world(sim: SimulationConfig, users: int | None = None, seed: int | None = None) -> World:
    """Draw a world from the simulation config (seeded, vectorised)."""
    p = sim.world
    rng = np.random.default_rng(sim.seed if seed is None else seed)
    n_users = sim.users if users is None else users
    n_items, d = sim.items, p.latent_dim

    # Categories: unit vectors with Zipf-like traffic shares, as in a real shop.
    category_vectors = _unit_rows(rng.normal(size=(p.categories, d)))
    zipf = 1.0 / np.arange(1, p.categories + 1, dtype=np.float64) ** 0.8
    category_share: npt.NDArray[np.float64] = rng.permutation(zipf / zipf.sum())
    brand_vectors = rng.normal(scale=0.5, size=(p.brands, d))

    item_category = rng.choice(p.categories, size=n_items, p=category_share).astype(np.int64)
    item_brand = rng.integers(0, p.brands, size=n_items).astype(np.int64)
    item_vectors = _unit_rows(
        category_vectors[item_category]
        + 0.6 * _unit_rows(brand_vectors[item_brand])
        + 0.5 * rng.normal(size=(n_items, d)) / np.sqrt(d)
    )
    # Prices: log-normal around a per-category level, clipped to the shop's range.
    category_log_price = rng.normal(np.log(30.0), 0.8, size=p.categories)
    item_price = np.exp(rng.normal(category_log_price[item_category], 0.5))
    item_price = np.round(np.clip(item_price, p.price_min, p.price_max), 2)
    item_quality = rng.normal(0.0, 0.5, size=n_items)
    # Organic browsing favours good items a little and is heavy-tailed (a few hits).
    item_browse_weight = np.exp(0.5 * item_quality + rng.normal(0.0, 1.0, size=n_items))

    # Users: a main taste (one category), a secondary one, and personal noise; noise terms
    # are scaled by 1/sqrt(d) so their norm is about the stated factor.
    main = rng.choice(p.categories, size=n_users, p=category_share)
    second = rng.choice(p.categories, size=n_users, p=category_share)
    user_vectors = _unit_rows(
        category_vectors[main]
        + 0.5 * category_vectors[second]
        + 0.4 * rng.normal(size=(n_users, d)) / np.sqrt(d)
    )
    user_price_sensitivity = rng.lognormal(0.0, 0.5, size=n_users)
    user_activity = rng.gamma(2.0, 0.5, size=n_users)

    width = max(len(str(n_items - 1)), 5)
    uwidth = max(len(str(n_users - 1)), 6)
    return World(
        params=p,
        item_ids=np.array([f"i{i:0{width}d}" for i in range(n_items)], dtype=str),
        item_category=item_category,
        item_brand=item_brand,
        item_price=item_price,
        item_vectors=item_vectors,
        item_quality=item_quality,
        item_browse_weight=item_browse_weight,
        category_vectors=category_vectors,
        category_share=category_share,
        user_ids=np.array([f"u{u:0{uwidth}d}" for u in range(n_users)], dtype=str),
        user_vectors=user_vectors,
        user_price_sensitivity=user_price_sensitivity,
        user_activity=user_activity,
        reference_price=float(np.median(item_price)),
    )
