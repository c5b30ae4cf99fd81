"""Diversity re-ranking: maximal marginal relevance over a base's or a pipeline's candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from abplatform.domain import Catalog, InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import NestedStrategy, StrategyParams, VectorStrategy, check_k, item_vectors_of
from strategies.features import feature_vectors, normalise

CACHE_SIZE = 100_000  # re-ranked slates kept per (k, candidate slate)


class MMRParams(StrategyParams):
    """How maximal marginal relevance re-ranks (`lambda` is the diversity weight): the params
    of `diversity_rerank` as a pipeline's rerank stage."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    diversity: float = Field(default=0.3, ge=0.0, le=1.0, alias="lambda")
    max_per_category: int | None = Field(default=None, ge=1)
    similarity: Literal["auto", "features"] = "auto"


class DiversityParams(MMRParams):
    """Parameters of the diversity re-ranker over a base strategy's top `candidates`."""

    base: NestedStrategy
    candidates: int = Field(default=50, ge=1, le=2000)


class MMR:
    """Maximal marginal relevance over candidate lists of catalogue indices (`Reranker`).

    score = (1 - lambda) * relevance - lambda * max similarity to the items already chosen,
    where relevance is the candidates' score scaled to [0, 1] and similarity the cosine of
    `vectors`. `max_per_category` caps items of one category; when the candidates cannot
    fill the slate under the cap, the best remaining ones fill it. lambda = 0 without a cap
    keeps the candidates' order exactly.
    """

    def __init__(
        self, params: MMRParams, catalog: Catalog, vectors: npt.NDArray[np.float64]
    ) -> None:
        self.params = params
        self.vectors = vectors
        _, codes = np.unique(catalog.categories.astype(str), return_inverse=True)
        self.category = codes.astype(np.int64)

    def rerank(
        self, items: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The chosen positions (batch, min(k, length)) of equally long candidate lists
        `items` (batch, length) with their `scores`, and the MMR score each was chosen at."""
        params = self.params
        batch, length = items.shape
        size = min(k, length)
        relevance = np.stack([_scaled(row) for row in np.asarray(scores, dtype=np.float64)])
        vectors = self.vectors[items]  # (batch, length, d)
        similarity = np.einsum("bid,bjd->bij", vectors, vectors)
        categories = self.category[items]  # (batch, length)
        n_categories = int(self.category.max()) + 1
        max_similarity = np.zeros((batch, length))
        available = np.ones((batch, length), dtype=bool)
        per_category = np.zeros((batch, n_categories), dtype=np.int64)
        rows = np.arange(batch)
        chosen = np.empty((batch, size), dtype=np.int64)
        chosen_scores = np.empty((batch, size))
        lam = params.diversity
        for step in range(size):
            score = (1.0 - lam) * relevance - lam * max_similarity
            allowed = available
            if params.max_per_category is not None:
                full = per_category[rows[:, None], categories] >= params.max_per_category
                capped = available & ~full
                # Under the cap when possible; otherwise the best remaining candidate.
                allowed = np.where(capped.any(axis=1, keepdims=True), capped, available)
            masked = np.where(allowed, score, -np.inf)
            best = np.argmax(masked, axis=1)  # the first index wins ties: candidate order
            chosen[:, step] = best
            chosen_scores[:, step] = score[rows, best]
            available[rows, best] = False
            per_category[rows, categories[rows, best]] += 1
            np.maximum(max_similarity, similarity[rows, best], out=max_similarity)
        return chosen, chosen_scores


@strategies.register("diversity_rerank")
class DiversityRerankStrategy(VectorStrategy):
    """Re-rank the base strategy's top `candidates` by maximal marginal relevance (`MMR`).

    Similarity is the cosine of item vectors: the base's embeddings with `similarity: auto`
    when it has them, else category/brand/price features. lambda = 0 without a cap
    reproduces the base ranking exactly. As a pipeline's rerank stage it takes `MMRParams`
    (no base, no candidates) and re-ranks the pipeline's ranked candidates (`reranker`).
    """

    kind = "diversity_rerank"
    Params: ClassVar[type[BaseModel]] = DiversityParams
    RerankParams: ClassVar[type[BaseModel]] = MMRParams

    @classmethod
    def reranker(
        cls, params: BaseModel, catalog: Catalog, vectors: npt.NDArray[np.float64] | None
    ) -> MMR:
        """The MMR re-ranker of a pipeline: `vectors` are the pipeline's learned item
        embeddings (None: catalogue features), used with `similarity: auto`."""
        mmr = MMRParams.model_validate(params.model_dump())
        if vectors is None or mmr.similarity == "features":
            vectors = feature_vectors(catalog)
        return MMR(mmr, catalog, normalise(vectors))

    def fit(self, history: InteractionLog) -> None:
        """Fit the base strategy and prepare item vectors."""
        super().fit(history)
        params: DiversityParams = self.params
        self.base = self.fit_stage(params.base, history)
        learned = item_vectors_of(self.base) if params.similarity == "auto" else None
        self._use_vectors(learned)
        self._index = self.catalog.index()
        self._mmr = MMR(params, self.catalog, self._vectors)
        self._cache: dict[tuple[int, Slate], Slate] = {}

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Base candidates per request, re-ranked by MMR for all requests at once."""
        check_k(k)
        _ = self.catalog
        params: DiversityParams = self.params
        pool = self.base.recommend_batch(requests, max(k, params.candidates))
        # Re-ranking is a pure function of the candidate slate: equal candidates (common for
        # popularity-like bases) are re-ranked once and served from a bounded cache.
        todo: dict[int, list[Slate]] = {}
        for slate in pool:
            if (k, slate) not in self._cache:
                todo.setdefault(len(slate.items), []).append(slate)
        for length, slates in todo.items():
            unique = list(dict.fromkeys(slates))
            for source, reranked in zip(unique, self._rerank(unique, length, k), strict=True):
                self._cache[(k, source)] = reranked
        out = [self._cache[(k, slate)] for slate in pool]
        if len(self._cache) > CACHE_SIZE:
            self._cache.clear()
        return out

    def _rerank(self, slates: list[Slate], length: int, k: int) -> list[Slate]:
        """MMR over equally long candidate slates."""
        if length == 0:
            return slates
        items = np.asarray([[self._index[i] for i in s.items] for s in slates], dtype=np.int64)
        scores = np.asarray([s.scores for s in slates], dtype=np.float64)
        chosen, chosen_scores = self._mmr.rerank(items, scores, k)
        picked = np.take_along_axis(items, chosen, axis=1)
        out = []
        for b, slate in enumerate(slates):
            reranked = self._slate(picked[b], chosen_scores[b])
            if slate.sources is not None:  # a pipeline's base: its items keep their sources
                found = tuple(slate.sources[j] for j in chosen[b].tolist())
                reranked = Slate(reranked.items, reranked.scores, found)
            out.append(reranked)
        return out


def _scaled(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Scores mapped to [0, 1] by min-max; equal scores all get 1 (ties keep base order)."""
    if scores.size == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    if not np.isfinite(low) or not np.isfinite(high) or high == low:
        return np.ones_like(scores)
    scaled: npt.NDArray[np.float64] = (scores - low) / (high - low)
    return scaled
