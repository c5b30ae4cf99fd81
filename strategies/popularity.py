"""Popularity: the most clicked and bought items over a recent window, optionally per category."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from abplatform.domain import InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import BaseStrategy, StrategyParams, check_k

SECONDS_PER_DAY = 86_400


class PopularityParams(StrategyParams):
    """Parameters of the popularity strategy."""

    window_days: int = Field(default=30, ge=1, le=3650)
    per_category: bool = False
    click_weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    purchase_weight: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    view_weight: float = Field(default=0.1, ge=0, allow_inf_nan=False)


@strategies.register("popularity")
class PopularityStrategy(BaseStrategy):
    """Top items by weighted clicks, purchases and views in the last `window_days` of history.

    With `per_category`, a known user gets the top items of their favourite category (the
    category they interacted with most), topped up with the global ranking. A request
    carrying online features uses their fresh favourite category instead.
    """

    kind = "popularity"
    Params: ClassVar[type[BaseModel]] = PopularityParams

    def online_features(self) -> frozenset[str]:
        """The fresh favourite category, with `per_category` (nothing without)."""
        return frozenset({"favourite_category"}) if self.params.per_category else frozenset()

    def fit(self, history: InteractionLog) -> None:
        """Count weighted interactions per item (and each user's favourite category)."""
        super().fit(history)
        params: PopularityParams = self.params
        n_items = len(self.catalog)
        index = self.catalog.index()
        cutoff = history.end_timestamp - params.window_days * SECONDS_PER_DAY
        recent = history.timestamps >= cutoff
        weights = np.zeros(len(history), dtype=np.float64)
        for event_type, weight in (
            ("click", params.click_weight),
            ("purchase", params.purchase_weight),
            ("view", params.view_weight),
        ):
            weights[history.event_types == event_type] = weight
        item_idx = np.fromiter(
            (index.get(item, -1) for item in history.item_ids.tolist()),
            dtype=np.int64,
            count=len(history),
        )
        known = (item_idx >= 0) & recent
        scores = np.bincount(item_idx[known], weights=weights[known], minlength=n_items)
        # Ties (and items never seen) break by a seeded jitter far below one interaction's weight.
        jitter = np.random.default_rng(self.seed).random(n_items) * 1e-9
        self._scores = scores + jitter
        self._global_order = np.argsort(-self._scores, kind="stable")
        self._category_codes, categories = _codes(self.catalog.categories)
        self._category_orders: list[npt.NDArray[np.int64]] = []
        for code in range(len(categories)):
            members = self._global_order[self._category_codes[self._global_order] == code]
            self._category_orders.append(members.astype(np.int64))
        self._favourite: dict[str, int] = {}
        self._category_code_of = {name: code for code, name in enumerate(categories)}
        if params.per_category and len(history):
            self._favourite = _favourite_categories(
                history.user_ids[item_idx >= 0], self._category_codes[item_idx[item_idx >= 0]]
            )

    def _favourite_of(self, request: RecRequest) -> int | None:
        """The request's favourite category code: fresh from its features, else learned."""
        features = request.features
        if features is not None and self.params.per_category:
            fresh = features.favourite_category
            if fresh is not None and fresh in self._category_code_of:
                return self._category_code_of[fresh]
        return self._favourite.get(request.unit_id)

    def _top(self, request: RecRequest, k: int) -> npt.NDArray[np.int64]:
        favourite = self._favourite_of(request)
        if favourite is None:
            return self._global_order[:k]
        head = self._category_orders[favourite][:k]
        if len(head) >= k:
            return head
        candidates = self._global_order[: k + len(head)]
        rest = candidates[~np.isin(candidates, head)][: k - len(head)]
        return np.concatenate([head, rest])

    def score_items(
        self, requests: Sequence[RecRequest], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Each item's weighted interaction count (the global ranking's score) for every
        request: `per_category` changes which items a slate holds, not their scores."""
        _ = self.catalog
        scores: npt.NDArray[np.float64] = self._scores[np.asarray(items, dtype=np.int64)]
        return scores

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Top-k slates; users sharing a favourite category share one computation."""
        check_k(k)
        _ = self.catalog
        cache: dict[int | None, Slate] = {}
        slates = []
        for request in requests:
            favourite = self._favourite_of(request)
            slate = cache.get(favourite)
            if slate is None:
                top = self._top(request, k)
                slate = self._slate(top, self._scores[top])
                cache[favourite] = slate
            slates.append(slate)
        return slates


def _codes(labels: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.int64], list[str]]:
    uniques, codes = np.unique(labels.astype(str), return_inverse=True)
    return codes.astype(np.int64), [str(u) for u in uniques.tolist()]


def _favourite_categories(
    user_ids: npt.NDArray[np.str_], category_codes: npt.NDArray[np.int64]
) -> dict[str, int]:
    """Each user's most frequent category (ties -> lowest code)."""
    users, user_codes = np.unique(user_ids.astype(str), return_inverse=True)
    n_categories = int(category_codes.max()) + 1 if len(category_codes) else 0
    counts = np.zeros((len(users), n_categories), dtype=np.int64)
    np.add.at(counts, (user_codes, category_codes), 1)
    best = counts.argmax(axis=1)
    return dict(zip(users.tolist(), best.tolist(), strict=True))
