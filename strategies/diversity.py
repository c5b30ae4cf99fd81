"""Diversity re-ranking: maximal marginal relevance over a base strategy's candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from abplatform.domain import InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import BaseStrategy, StrategyParams, StrategySpec, check_k, item_vectors_of
from strategies.features import feature_vectors, normalise


class DiversityParams(StrategyParams):
    """Parameters of the diversity re-ranker (`lambda` is the diversity weight)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    base: StrategySpec
    candidates: int = Field(default=50, ge=1, le=2000)
    diversity: float = Field(default=0.3, ge=0.0, le=1.0, alias="lambda")
    max_per_category: int | None = Field(default=None, ge=1)
    similarity: Literal["auto", "features"] = "auto"


@strategies.register("diversity_rerank")
class DiversityRerankStrategy(BaseStrategy):
    """Re-rank the base strategy's top `candidates` by maximal marginal relevance.

    score = (1 - lambda) * relevance - lambda * max similarity to the items already chosen,
    where relevance is the base score scaled to [0, 1] and similarity is the cosine of item
    vectors (the base's embeddings with `similarity: auto` when it has them, else
    category/brand/price features). `max_per_category` caps items of one category; when
    the candidates cannot fill the slate under the cap, the best remaining ones fill it.
    lambda = 0 without a cap reproduces the base ranking exactly.
    """

    kind = "diversity_rerank"
    Params: ClassVar[type[BaseModel]] = DiversityParams

    def fit(self, history: InteractionLog) -> None:
        """Fit the base strategy and prepare item vectors."""
        super().fit(history)
        params: DiversityParams = self.params
        self.base = params.base.build(self.seed)
        self.base.fit(history)
        learned = item_vectors_of(self.base) if params.similarity == "auto" else None
        self._vectors = normalise(learned) if learned is not None else feature_vectors(self.catalog)
        self._index = self.catalog.index()
        _, codes = np.unique(self.catalog.categories.astype(str), return_inverse=True)
        self._category = codes.astype(np.int64)

    def item_vectors(self) -> npt.NDArray[np.float64]:
        """The item vectors used for similarity."""
        _ = self.catalog
        return self._vectors

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Base candidates per request, re-ranked."""
        check_k(k)
        _ = self.catalog
        params: DiversityParams = self.params
        pool = self.base.recommend_batch(requests, max(k, params.candidates))
        return [self._rerank(slate, k) for slate in pool]

    def _rerank(self, slate: Slate, k: int) -> Slate:
        params: DiversityParams = self.params
        items = np.asarray([self._index[i] for i in slate.items], dtype=np.int64)
        relevance = _scaled(np.asarray(slate.scores, dtype=np.float64))
        size = min(k, items.size)
        vectors = self._vectors[items]
        similarity = vectors @ vectors.T
        max_similarity = np.zeros(items.size)
        available = np.ones(items.size, dtype=bool)
        per_category: dict[int, int] = {}
        chosen: list[int] = []
        chosen_scores: list[float] = []
        lam = params.diversity
        while len(chosen) < size:
            score = (1.0 - lam) * relevance - lam * max_similarity
            allowed = available.copy()
            if params.max_per_category is not None:
                full = [c for c, n in per_category.items() if n >= params.max_per_category]
                capped = allowed & ~np.isin(self._category[items], full)
                if capped.any():
                    allowed = capped
            candidates = np.flatnonzero(allowed)
            best = int(candidates[np.argmax(score[candidates])])  # first index wins ties
            chosen.append(best)
            chosen_scores.append(float(score[best]))
            available[best] = False
            category = int(self._category[items[best]])
            per_category[category] = per_category.get(category, 0) + 1
            np.maximum(max_similarity, similarity[best], out=max_similarity)
        picked = items[chosen]
        return self._slate(picked, np.asarray(chosen_scores))


def _scaled(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Scores mapped to [0, 1] by min-max; equal scores all get 1 (ties keep base order)."""
    if scores.size == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    if not np.isfinite(low) or not np.isfinite(high) or high == low:
        return np.ones_like(scores)
    scaled: npt.NDArray[np.float64] = (scores - low) / (high - low)
    return scaled
