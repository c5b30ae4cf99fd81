"""Which history rows count as a user wanting an item, and the user x item matrix they form."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, ValidationInfo, field_validator

from abplatform.domain import FeedbackType, InteractionLog
from strategies.base import StrategyParams
from strategies.evaluation import item_indices

DEFAULT_POSITIVE_EVENTS: tuple[FeedbackType, ...] = ("click", "purchase")


def _default_weights() -> dict[FeedbackType, float]:
    return {"click": 1.0, "purchase": 4.0}


class PositiveParams(StrategyParams):
    """Parameters choosing the positive rows of a history (shared by ALS and EASE).

    Attributes
    ----------
    positive_events
        Event types that count as a user wanting an item.
    min_rating
        A ``rating`` event counts as positive when its value is at least this (rows without
        a value never do); setting it makes ``rating`` a positive event. None: every
        ``rating`` row counts if ``rating`` is in `positive_events`.
    weights
        Confidence weight of each positive event type; a positive type without one weighs 1.
        Only types in `positive_events` (or ``rating`` with `min_rating`) may be named.
    """

    positive_events: tuple[FeedbackType, ...] = Field(default=DEFAULT_POSITIVE_EVENTS, min_length=1)
    min_rating: float | None = Field(default=None, allow_inf_nan=False)
    weights: dict[FeedbackType, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=_default_weights
    )

    @field_validator("weights")
    @classmethod
    def _weights_of_positive_events(
        cls, weights: dict[FeedbackType, float], info: ValidationInfo
    ) -> dict[FeedbackType, float]:
        """Given weights may only name the events that count (a default names none extra)."""
        counted = _counted(info.data.get("positive_events", ()), info.data.get("min_rating"))
        for event in weights:
            if event not in counted:
                raise ValueError(
                    f"{event!r} is not a positive event (positive_events: {list(counted)})"
                )
        return weights

    @property
    def counted_events(self) -> tuple[str, ...]:
        """The event types whose rows may count (``rating`` added by `min_rating`)."""
        return _counted(self.positive_events, self.min_rating)

    def weight_of(self, event: str) -> float:
        """Confidence weight of one positive event type."""
        return float(self.weights.get(event, 1.0))  # type: ignore[call-overload]


def _counted(positive_events: Sequence[str], min_rating: float | None) -> tuple[str, ...]:
    events = tuple(positive_events)
    if min_rating is not None and "rating" not in events:
        events = (*events, "rating")
    return events


def positive_mask(history: InteractionLog, params: PositiveParams) -> npt.NDArray[np.bool_]:
    """Rows of `history` that are positives under `params` (catalogue membership not checked)."""
    mask = np.isin(history.event_types, list(params.counted_events))
    if params.min_rating is not None:
        ratings = history.event_types == "rating"
        with np.errstate(invalid="ignore"):
            high = history.values >= params.min_rating  # NaN (no value) is never high
        mask &= ~ratings | high
    return mask


@dataclass(frozen=True)
class PositiveMatrix:
    """Summed positive weights as a users x items CSR matrix (rows: sorted user ids).

    ``indptr``/``items``/``weights`` are the CSR arrays; item columns are catalogue indices.
    ``item_weights`` is each item's total (for the popularity fallback).
    """

    user_ids: npt.NDArray[np.str_]
    indptr: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]
    n_items: int

    @property
    def n_users(self) -> int:
        """Number of users with at least one positive."""
        return int(self.user_ids.shape[0])

    def items_of(self, row: int) -> npt.NDArray[np.int64]:
        """Catalogue indices of user number `row`'s positive items (ascending)."""
        return self.items[self.indptr[row] : self.indptr[row + 1]]

    def item_weights(self) -> npt.NDArray[np.float64]:
        """Each catalogue item's summed positive weight."""
        totals: npt.NDArray[np.float64] = np.bincount(
            self.items, weights=self.weights, minlength=self.n_items
        ).astype(np.float64)
        return totals

    def confidences(self, alpha: float) -> Any:
        """``scipy.sparse.csr_matrix`` (float32) of 1 + alpha w at every positive pair."""
        from scipy.sparse import csr_matrix

        return csr_matrix(
            ((1.0 + alpha * self.weights).astype(np.float32), self.items, self.indptr),
            shape=(self.n_users, self.n_items),
        )


def positive_matrix(history: InteractionLog, params: PositiveParams) -> PositiveMatrix:
    """Each (user, catalogue item) pair's summed weight over its positive rows."""
    n_items = len(history.catalog)
    items = item_indices(history)
    keep = positive_mask(history, params) & (items >= 0)
    row_weights = np.zeros(len(history), dtype=np.float64)
    for event in params.counted_events:
        row_weights[history.event_types == event] = params.weight_of(event)
    users, codes = np.unique(history.user_ids[keep].astype(str), return_inverse=True)
    keys = codes.reshape(-1).astype(np.int64) * max(n_items, 1) + items[keep]
    pairs, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse.reshape(-1), weights=row_weights[keep], minlength=pairs.size)
    per_user = np.bincount(pairs // max(n_items, 1), minlength=users.size)
    return PositiveMatrix(
        user_ids=users.astype(str),
        indptr=np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64),
        items=(pairs % max(n_items, 1)).astype(np.int64),
        weights=summed.astype(np.float64),
        n_items=n_items,
    )


def purchases_by_user(
    history: InteractionLog, users: npt.NDArray[np.str_]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """CSR (indptr, catalogue indices) of what each of `users` (sorted) bought."""
    items = item_indices(history)
    bought = (history.event_types == "purchase") & (items >= 0)
    bought &= np.isin(history.user_ids, users)
    rows = np.searchsorted(users, history.user_ids[bought])
    width = max(len(history.catalog), 1)
    keys = np.unique(rows.astype(np.int64) * width + items[bought])
    counts = np.bincount(keys // width, minlength=users.size)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, (keys % width).astype(np.int64)
