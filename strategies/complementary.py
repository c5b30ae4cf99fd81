"""Complementary items: what is bought together with the cart, from co-purchase statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, field_validator
from scipy import sparse

from abplatform.domain import EVENT_TYPES, InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import BaseStrategy, StrategyParams, check_k
from strategies.popularity import SECONDS_PER_DAY, PopularityStrategy

BATCH = 512  # requests scored at once: a dense (batch x items) matrix
CACHE_SIZE = 200_000  # slates kept per (k, anchors)


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
    ONLINE_FEATURES = frozenset({"cart"})

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
        order = np.asarray([self._index[i] for i in ranking.items], dtype=np.int64)
        # Popularity as a key in (0, 1): the most popular item is closest to 1.
        self._cache: dict[tuple[Any, ...], Slate] = {}
        self._popularity_key = np.empty(n_items)
        self._popularity_key[order] = 1.0 - (np.arange(n_items) + 1.0) / (n_items + 1.0)
        _, codes = np.unique(self.catalog.categories.astype(str), return_inverse=True)
        self._category_code = codes.astype(np.int64)
        self._category_onehot = sparse.csr_matrix(
            (np.ones(n_items), (np.arange(n_items), self._category_code)),
            shape=(n_items, int(codes.max()) + 1),
        )

    def association(self, item_id: str) -> dict[str, float]:
        """Association scores of every item paired with `item_id` (for inspection)."""
        row = self._association.getrow(self._index[item_id])
        ids = self.catalog.item_ids[row.indices]
        return dict(zip(ids.tolist(), row.data.tolist(), strict=True))

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Slates of complements to each request's cart (or current item), vectorised."""
        check_k(k)
        _ = self.catalog
        requests = [_with_live_cart(request) for request in requests]
        # Slates depend only on the anchors (cart, else current item): each distinct set once.
        keys = [self._anchor_key(request, k) for request in requests]
        missing: dict[tuple[Any, ...], RecRequest] = {}
        for key, request in zip(keys, requests, strict=True):
            if key not in self._cache:
                missing.setdefault(key, request)
        todo = list(missing.items())
        for lo in range(0, len(todo), BATCH):
            chunk = todo[lo : lo + BATCH]
            batch = self._batch([request for _, request in chunk], k)
            for (key, _), slate in zip(chunk, batch, strict=True):
                self._cache[key] = slate
        slates = [self._cache[key] for key in keys]
        if len(self._cache) > CACHE_SIZE:
            self._cache.clear()
        return slates

    def _anchor_key(self, request: RecRequest, k: int) -> tuple[Any, ...]:
        names = list(request.cart_items) or ([request.current_item] if request.current_item else [])
        return (k, *sorted({self._index[a] for a in names if a in self._index}))

    def _batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        n_items = len(self.catalog)
        rows, cols = [], []
        for row, request in enumerate(requests):
            anchor_ids = list(request.cart_items) or (
                [request.current_item] if request.current_item else []
            )
            for item in anchor_ids:
                if item in self._index:
                    rows.append(row)
                    cols.append(self._index[item])
        anchors = sparse.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(requests), n_items)
        )
        anchors.data[:] = 1.0
        association = (anchors @ self._association).toarray()
        cart_categories = (anchors @ self._category_onehot).toarray() > 0
        in_cart_category = cart_categories[:, self._category_code]
        # Ranking key: associated items first (by score), then the cart's categories, then
        # everything else, each of the latter two by global popularity.
        key = np.where(in_cart_category, 1.0, 0.0) + self._popularity_key[None, :]
        key = np.where(association > 0, 2.0 + association, key)
        is_anchor = anchors.toarray() > 0
        key[is_anchor] = -np.inf
        size = min(k, n_items)
        top = (
            np.argpartition(-key, size - 1, axis=1)[:, :size]
            if size < n_items
            else (np.tile(np.arange(n_items), (len(requests), 1)))
        )
        slates = []
        for row in range(len(requests)):
            picked = top[row][np.lexsort((top[row], -key[row, top[row]]))]
            picked = picked[np.isfinite(key[row, picked])][:size]
            slates.append(self._slate(picked.astype(np.int64), _scores(association[row], picked)))
        return slates


def _with_live_cart(request: RecRequest) -> RecRequest:
    """A request without cart items takes the live cart of its online features, if any."""
    features = request.features
    if request.cart_items or features is None or not features.cart:
        return request
    return replace(request, cart_items=features.cart)


def _scores(
    scores: npt.NDArray[np.float64], picked: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Association scores, with fill-up items ranked below every associated item."""
    out = scores[picked].astype(np.float64)
    fill = out <= 0
    out[fill] = -np.arange(1, int(fill.sum()) + 1, dtype=np.float64)
    return out
