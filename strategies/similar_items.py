"""Similar items: the catalogue items closest to the one being viewed (or to the cart)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from abplatform.domain import InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import BaseStrategy, StrategyParams, check_k, item_vectors_of
from strategies.features import feature_vectors, normalise
from strategies.popularity import PopularityStrategy


class SimilarItemsParams(StrategyParams):
    """Parameters of the similar-items strategy."""

    representation: Literal["features", "two_tower"] = "features"
    two_tower: dict[str, Any] = Field(
        default_factory=dict, description="params of the two-tower whose item embeddings to use"
    )
    fallback_window_days: int = Field(default=30, ge=1, le=3650)


@strategies.register("similar_items")
class SimilarItemsStrategy(BaseStrategy):
    """Cosine nearest neighbours of the request's current item (else of its cart's mean).

    Items are represented by two-tower item embeddings when `representation: two_tower`
    (a two-tower is trained on the same history), else by category, brand and price
    features. Requests without a known anchor item get popular items.
    """

    kind = "similar_items"
    Params: ClassVar[type[BaseModel]] = SimilarItemsParams

    def fit(self, history: InteractionLog) -> None:
        """Build item vectors and the popularity fallback."""
        super().fit(history)
        params: SimilarItemsParams = self.params
        vectors: npt.NDArray[np.float64] | None = None
        if params.representation == "two_tower":
            from abplatform.registry import build_strategy

            tower = build_strategy("two_tower", params.two_tower, seed=self.seed)
            tower.fit(history)
            vectors = item_vectors_of(tower)
        self._vectors = normalise(vectors) if vectors is not None else feature_vectors(self.catalog)
        self._index = self.catalog.index()
        self._fallback = PopularityStrategy(
            {"window_days": params.fallback_window_days}, seed=self.seed
        )
        self._fallback.fit(history)

    def item_vectors(self) -> npt.NDArray[np.float64]:
        """Unit-norm item vectors, rows aligned with the catalogue."""
        _ = self.catalog
        return self._vectors

    def _anchors(self, request: RecRequest) -> list[int]:
        anchors = [request.current_item] if request.current_item else list(request.cart_items)
        return [self._index[a] for a in anchors if a in self._index]

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Nearest neighbours per request; the anchors themselves are never recommended."""
        check_k(k)
        _ = self.catalog
        slates: list[Slate] = []
        n_items = len(self.catalog)
        for request in requests:
            anchors = self._anchors(request)
            if not anchors:
                slates.append(self._fallback.recommend(request, k))
                continue
            query = self._vectors[anchors].mean(axis=0)
            scores = self._vectors @ query
            scores[anchors] = -np.inf
            size = min(k, n_items - len(set(anchors)))
            top = (
                np.argpartition(-scores, size - 1)[:size] if size < n_items else np.arange(n_items)
            )
            top = top[np.lexsort((top, -scores[top]))][:size]
            slate = self._slate(top.astype(np.int64), scores[top])
            if len(slate.items) < k:  # tiny catalogue: top up with popular items
                extra = [
                    i
                    for i in self._fallback.recommend(request, n_items).items
                    if i not in slate.items and self._index[i] not in anchors
                ]
                need = min(k - len(slate.items), len(extra))
                slate = Slate(
                    slate.items + tuple(extra[:need]), slate.scores + tuple([-1.0] * need)
                )
            slates.append(slate)
        return slates
