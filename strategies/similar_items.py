"""Similar items: the catalogue items closest to the one being viewed (or to the cart)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from abplatform.domain import InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import StrategyParams, VectorStrategy, check_k, item_vectors_of
from strategies.popularity import PopularityStrategy

BATCH = 512  # requests scored at once: a dense (batch x items) matrix
CACHE_SIZE = 200_000  # slates kept per (k, anchors)


class SimilarItemsParams(StrategyParams):
    """Parameters of the similar-items strategy."""

    representation: Literal["features", "two_tower"] = "features"
    two_tower: dict[str, Any] = Field(
        default_factory=dict, description="params of the two-tower whose item embeddings to use"
    )
    fallback_window_days: int = Field(default=30, ge=1, le=3650)


@strategies.register("similar_items")
class SimilarItemsStrategy(VectorStrategy):
    """Cosine nearest neighbours of the request's current item (else of its cart's mean,
    else, from its online features, of the item the unit viewed last).

    Items are represented by two-tower item embeddings when `representation: two_tower`
    (a two-tower is trained on the same history), else by category, brand and price
    features. Requests without a known anchor item get popular items.
    """

    kind = "similar_items"
    Params: ClassVar[type[BaseModel]] = SimilarItemsParams
    ONLINE_FEATURES = frozenset({"last_viewed"})

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
        self._use_vectors(vectors)
        self._index = self.catalog.index()
        self._fallback = PopularityStrategy(
            {"window_days": params.fallback_window_days}, seed=self.seed
        )
        self._fallback.fit(history)
        self._cache: dict[tuple[int, ...], Slate] = {}

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Nearest neighbours per request; the anchors themselves are never recommended."""
        check_k(k)
        _ = self.catalog
        slates: list[Slate | None] = [None] * len(requests)
        anchored: list[tuple[int, list[int]]] = []
        cold: list[int] = []
        for position, request in enumerate(requests):
            names = [request.current_item] if request.current_item else list(request.cart_items)
            last_viewed = request.features.last_viewed if request.features else None
            if not names and last_viewed is not None:  # no anchor sent: the last one viewed
                names = [last_viewed]
            anchors = sorted({self._index[a] for a in names if a in self._index})
            (anchored.append((position, anchors)) if anchors else cold.append(position))
        if cold:
            for position, slate in zip(
                cold, self._fallback.recommend_batch([requests[i] for i in cold], k), strict=True
            ):
                slates[position] = slate
        # Slates depend only on the anchors: compute each distinct anchor set once.
        missing: dict[tuple[int, ...], list[int]] = {}
        for position, anchors in anchored:
            cached = self._cache.get((k, *anchors))
            if cached is None:
                missing.setdefault(tuple(anchors), []).append(position)
            else:
                slates[position] = cached
        todo = [(positions[0], list(anchors)) for anchors, positions in missing.items()]
        for lo in range(0, len(todo), BATCH):
            chunk = todo[lo : lo + BATCH]
            for (_, anchors), slate in zip(chunk, self._nearest(chunk, k), strict=True):
                if len(self._cache) < CACHE_SIZE:
                    self._cache[(k, *anchors)] = slate
                for position in missing[tuple(anchors)]:
                    slates[position] = slate
        return [slate for slate in slates if slate is not None]

    def _nearest(self, chunk: list[tuple[int, list[int]]], k: int) -> list[Slate]:
        n_items = len(self.catalog)
        # One matrix-vector product per request (not one matrix product per batch) keeps
        # the scores bit-identical however requests are batched.
        scores = np.stack(
            [self._vectors @ self._vectors[anchors].mean(axis=0) for _, anchors in chunk]
        )
        for row, (_, anchors) in enumerate(chunk):
            scores[row, anchors] = -np.inf
        size = min(k, n_items)
        top = (
            np.argpartition(-scores, size - 1, axis=1)[:, :size]
            if size < n_items
            else np.tile(np.arange(n_items), (len(chunk), 1))
        )
        slates = []
        for row, (_, anchors) in enumerate(chunk):
            picked = top[row][np.lexsort((top[row], -scores[row, top[row]]))]
            picked = picked[np.isfinite(scores[row, picked])]
            slate = self._slate(picked.astype(np.int64), scores[row, picked])
            if len(slate.items) < k:  # a tiny catalogue: top up with popular items
                taken = set(slate.items) | {str(self.catalog.item_ids[a]) for a in anchors}
                ranking = self._fallback.recommend(RecRequest("\x00similar"), n_items).items
                extra = [item for item in ranking if item not in taken][: k - len(slate.items)]
                slate = Slate(slate.items + tuple(extra), slate.scores + (-1.0,) * len(extra))
            slates.append(slate)
        return slates
