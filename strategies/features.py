"""Item representations for similarity: learned embeddings when given, else catalogue features."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from abplatform.domain import Catalog

PRICE_WEIGHT = 0.5  # a price difference matters less than a different category or brand


def feature_vectors(catalog: Catalog) -> npt.NDArray[np.float64]:
    """Unit-norm vectors from one-hot category, one-hot brand (half weight) and log price."""
    n = len(catalog)
    parts: list[npt.NDArray[np.float64]] = []
    for labels, weight in ((catalog.categories, 1.0), (catalog.brands, np.sqrt(0.5))):
        _, codes = np.unique(labels.astype(str), return_inverse=True)
        onehot = np.zeros((n, int(codes.max()) + 1 if n else 0))
        onehot[np.arange(n), codes] = weight
        parts.append(onehot)
    prices = np.nan_to_num(
        catalog.prices.astype(np.float64),
        nan=np.nanmedian(catalog.prices) if np.isfinite(catalog.prices).any() else 1.0,
    )
    log_price = np.log1p(np.maximum(prices, 0.0))
    spread = log_price.std() or 1.0
    parts.append(PRICE_WEIGHT * ((log_price - log_price.mean()) / spread)[:, None])
    return normalise(np.hstack(parts))


def normalise(vectors: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Rows scaled to unit length (zero rows stay zero)."""
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: npt.NDArray[np.float64] = matrix / np.where(norms > 0, norms, 1.0)
    return unit
