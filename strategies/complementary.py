"""Complementary items: what is bought together with the cart, from co-purchase statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, field_validator
from scipy import sparse

from abplatform.domain import EVENT_TYPES, InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import BaseStrategy, StrategyParams, check_k
from strategies.popularity import SECONDS_PER_DAY, PopularityStrategy


class ComplementaryParams(StrategyParams):
    """Parameters of the complementary-items strategy."""

    events: list[str] = Field(default_factory=lambda: ["purchase"], min_length=1)
    measure: Literal["lift", "pmi"] = "lift"
    min_support: int = Field(default=2, ge=1)
    window_days: int = Field(default=365, ge=1, le=3650)

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}")
        return value


@strategies.register("complementary")
class ComplementaryStrategy(BaseStrategy):
    """Items with the highest association (lift or PMI) to the request's cart items.

    A basket is everything one user did with the chosen event types in the window. Pairs
    seen together in fewer than `min_support` baskets are ignored. Slates are filled up
    with the most popular items of the cart's categories, then with the global ranking.
    """

    kind = "complementary"
    Params: ClassVar[type[BaseModel]] = ComplementaryParams

    def fit(self, history: InteractionLog) -> None:
        """Count co-occurrences with a sparse baskets x items product."""
        super().fit(history)
        params: ComplementaryParams = self.params
        n_items = len(self.catalog)
        self._index = self.catalog.index()
        cutoff = history.end_timestamp - params.window_days * SECONDS_PER_DAY
        keep = np.isin(history.event_types, params.events) & (history.timestamps >= cutoff)
        items = np.fromiter(
            (self._index.get(i, -1) for i in history.item_ids[keep].tolist()), dtype=np.int64
        )
        users = history.user_ids[keep][items >= 0]
        items = items[items >= 0]
        _, baskets = np.unique(users.astype(str), return_inverse=True)
        n_baskets = int(baskets.max()) + 1 if baskets.size else 0
        matrix = sparse.csr_matrix(
            (np.ones(items.size), (baskets, items)), shape=(n_baskets, n_items)
        )
        matrix.data[:] = 1.0  # a basket holds an item once, however often it was bought
        together = (matrix.T @ matrix).tocsr()
        together.setdiag(0)
        together.eliminate_zeros()
        together.data[together.data < params.min_support] = 0
        together.eliminate_zeros()
        counts = np.asarray(matrix.sum(axis=0)).ravel()
        coo = together.tocoo()
        lift = coo.data * n_baskets / (counts[coo.row] * counts[coo.col])
        scores = lift if params.measure == "lift" else np.log(lift)
        # PMI can be negative; shift so every retained pair scores above "no association".
        if params.measure == "pmi" and scores.size:
            scores = scores - scores.min() + 1e-6
        self._association = sparse.csr_matrix(
            (scores, (coo.row, coo.col)), shape=(n_items, n_items)
        )
        popularity = PopularityStrategy({"window_days": params.window_days}, seed=self.seed)
        popularity.fit(history)
        ranking = popularity.recommend(RecRequest("\x00complementary"), n_items)
        self._popular_order = [self._index[i] for i in ranking.items]
        self._category_of = self.catalog.categories

    def association(self, item_id: str) -> dict[str, float]:
        """Association scores of every item paired with `item_id` (for inspection)."""
        row = self._association.getrow(self._index[item_id])
        ids = self.catalog.item_ids[row.indices]
        return dict(zip(ids.tolist(), row.data.tolist(), strict=True))

    def _fill(self, anchors: list[int], chosen: list[int], k: int) -> list[int]:
        order = self._popular_order
        taken = set(chosen) | set(anchors)
        categories = {self._category_of[a] for a in anchors}
        same = [i for i in order if i not in taken and self._category_of[i] in categories]
        rest = [i for i in order if i not in taken and self._category_of[i] not in categories]
        return (chosen + same + rest)[:k]

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Slates of complements to each request's cart (or current item)."""
        check_k(k)
        _ = self.catalog
        slates = []
        for request in requests:
            anchor_ids = list(request.cart_items) or (
                [request.current_item] if request.current_item else []
            )
            anchors = [self._index[a] for a in anchor_ids if a in self._index]
            scores = np.zeros(len(self.catalog))
            if anchors:
                scores = np.asarray(self._association[anchors].sum(axis=0)).ravel()
                scores[anchors] = 0.0
            positive = np.flatnonzero(scores > 0)
            ranked = positive[np.lexsort((positive, -scores[positive]))][:k].tolist()
            chosen = self._fill(anchors, ranked, k) if len(ranked) < k else ranked
            picked = np.asarray(chosen, dtype=np.int64)
            slates.append(self._slate(picked, _scores(scores, picked)))
        return slates


def _scores(
    scores: npt.NDArray[np.float64], picked: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Association scores, with fill-up items ranked below every associated item."""
    out = scores[picked].astype(np.float64)
    fill = out <= 0
    out[fill] = -np.arange(1, int(fill.sum()) + 1, dtype=np.float64)
    return out
