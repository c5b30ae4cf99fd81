"""Hand-built two-tower artifacts (seeded random embeddings, no TensorFlow) for the tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from abplatform.domain import Catalog
from strategies.two_tower.artifact import TwoTowerArtifact, compressed
from strategies.two_tower.data import UserFeatureEncoder
from strategies.two_tower.params import TwoTowerParams
from strategies.two_tower.serving import quantize


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> npt.NDArray[np.float64]:
    """`n` random unit vectors of `dim` components."""
    rows = rng.standard_normal((n, dim))
    out: npt.NDArray[np.float64] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def served_items(rng: np.random.Generator, n_items: int, dim: int) -> npt.NDArray[np.float64]:
    """Items as the strategy serves them: unit model axes, an item-bias axis, popularity."""
    bias = np.clip(rng.normal(0.0, 0.2, n_items), -0.5, 0.5)
    popularity = (n_items - rng.permutation(n_items)) / n_items
    return np.column_stack([unit_rows(rng, n_items, dim), bias, popularity])


def hand_artifact(
    catalog: Catalog,
    users: list[str],
    *,
    dim: int = 8,
    seed: int = 0,
    params: Mapping[str, object] | None = None,
) -> TwoTowerArtifact:
    """A two-tower artifact over `catalog` with seeded random embeddings (no user tower)."""
    rng = np.random.default_rng(seed)
    chosen = TwoTowerParams.model_validate(dict(params or {}))
    queries = np.column_stack([unit_rows(rng, len(users), dim), np.ones((len(users), 1))])
    default = np.zeros(dim + 2, dtype=np.float32)
    default[-1] = 1.0
    artifact = TwoTowerArtifact(
        catalog=catalog,
        item_embeddings=quantize(served_items(rng, len(catalog), dim)),
        user_ids=np.array(sorted(users), dtype=str),
        user_embeddings=quantize(np.column_stack([queries, np.zeros(len(users))])),
        purchased_indptr=np.zeros(len(users) + 1, dtype=np.int64),
        purchased_items=np.zeros(0, dtype=np.int64),
        default_embedding=default,
        user_tower=None,
        feature_encoder=UserFeatureEncoder(),
        manifest={
            "kind": "two_tower",
            "params": chosen.model_dump(mode="json"),
            "seed": seed,
            "training": {"fallback": None},
            "user_features": UserFeatureEncoder().to_json(),
            "metrics": {},
        },
    )
    return compressed(artifact, chosen.embedding_dtype)


def small_catalog(n_items: int) -> Catalog:
    """`n_items` items in 5 categories."""
    return Catalog(
        item_ids=np.array([f"i{j}" for j in range(n_items)], dtype=str),
        categories=np.array([f"c{j % 5}" for j in range(n_items)], dtype=str),
        brands=np.array([f"b{j % 3}" for j in range(n_items)], dtype=str),
        prices=np.linspace(1.0, 50.0, n_items),
    )
