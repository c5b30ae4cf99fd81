"""EASE: the closed-form linear item-item model (Steck 2019), fitted and served with NumPy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from abplatform.domain import InteractionLog, RecRequest, Slate
from abplatform.errors import AbplatformError
from abplatform.registry import strategies
from strategies.base import BaseStrategy, check_k
from strategies.positives import PositiveMatrix, PositiveParams, positive_matrix
from strategies.topk import top_k

MAX_ITEMS = 20_000
"""EASE holds a dense items x items matrix (20,000 items: 3.2 GB); larger catalogues refuse."""


class EaseParams(PositiveParams):
    """Parameters of the EASE strategy.

    Attributes
    ----------
    l2
        The ridge penalty lambda (YAML key ``lambda``) on the item-item weights; the default
        was chosen on a validation split of MovieLens 100K's training part (bench/README.md).
    binary
        X holds 1 for each positive (user, item) pair; false: the pair's summed `weights`.
    exclude_purchased
        Items a known user bought go last in their slates (returned only if k needs them).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    l2: float = Field(default=400.0, ge=0.0, le=1e9, allow_inf_nan=False, alias="lambda")
    binary: bool = True
    exclude_purchased: bool = True


def ease_weights(gram: npt.NDArray[np.float64], l2: float) -> npt.NDArray[np.float64]:
    """B = I - P / diag(P) with P = (G + l2 I)^-1: column j divided by P_jj, zero diagonal.

    Raises `AbplatformError` when G + l2 I is singular (l2 = 0 with an item nobody chose).
    """
    regularised = gram.astype(np.float64, copy=True)
    regularised[np.diag_indices_from(regularised)] += l2
    try:
        precision = np.linalg.inv(regularised)
    except np.linalg.LinAlgError:
        raise AbplatformError(
            f"ease: X^T X + lambda I is singular (lambda {l2})",
            hint="use a positive lambda",
        ) from None
    weights: npt.NDArray[np.float64] = -precision / np.diag(precision)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


@strategies.register("ease")
class EaseStrategy(BaseStrategy):
    """EASE over the history's positive rows: a user's scores are x_u B.

    x_u is the user's row of X (1 per positive item, or the summed event `weights` without
    `binary`); B is the closed-form ridge regression of every item on all the others with
    a zero diagonal (`ease_weights`). A user without positives whose request names
    catalogue items (current item, cart) is scored from those items; anyone else gets the
    popularity ranking (summed positive weights, seeded tie-break). Fitting is
    deterministic (one matrix inverse), so a registered EASE model is a snapshot that each
    server refits on load.
    """

    kind = "ease"
    Params: ClassVar[type[BaseModel]] = EaseParams

    def fit(self, history: InteractionLog) -> None:
        """Solve for B on the positives of `history`."""
        super().fit(history)
        params: EaseParams = self.params
        n_items = len(history.catalog)
        if n_items > MAX_ITEMS:
            raise AbplatformError(
                f"ease: the catalogue has {n_items:,} items; EASE's dense item-item matrix "
                f"supports at most {MAX_ITEMS:,}",
                hint="use the als strategy for large catalogues",
            )
        matrix = positive_matrix(history, params)
        self._matrix = matrix
        self._rows = {user: i for i, user in enumerate(matrix.user_ids.tolist())}
        self._values = np.ones_like(matrix.weights) if params.binary else matrix.weights
        x = _csr(matrix, self._values)
        gram = np.asarray((x.T @ x).toarray(), dtype=np.float64)
        self._weights = ease_weights(gram, params.l2)
        jitter = np.random.default_rng(self.seed).random(n_items) * 1e-9
        self._popularity = matrix.item_weights() + jitter
        self._index = history.catalog.index()
        self._purchased = _purchases(history, self._index)

    def user_scores(
        self, items: npt.NDArray[np.int64], values: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """x B for a user whose row holds `values` at catalogue indices `items`."""
        scores: npt.NDArray[np.float64] = values @ self._weights[items]
        return scores

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Exact top-k slates; each user is scored on their own, so batch == single."""
        check_k(k)
        _ = self.catalog
        if not requests:
            return []
        params: EaseParams = self.params
        size = min(k, len(self.catalog))
        slates: list[Slate] = []
        popular: Slate | None = None
        nothing = np.zeros(0, dtype=np.int64)
        for request in requests:
            row = self._rows.get(request.unit_id)
            if row is not None:
                span = slice(self._matrix.indptr[row], self._matrix.indptr[row + 1])
                scores = self.user_scores(self._matrix.items[span], self._values[span])
                bought = self._purchased.get(request.unit_id, nothing)
                excluded = bought if params.exclude_purchased else nothing
            else:
                context = self._context(request)
                if context.size == 0:
                    if popular is None:
                        top, value = top_k(self._popularity[None, :], size)
                        popular = self._slate(top[0], value[0])
                    slates.append(popular)
                    continue
                scores = self.user_scores(context, np.ones(context.size))
                excluded = nothing
            top, value = top_k(scores[None, :], size, [excluded])
            slates.append(self._slate(top[0], value[0]))
        return slates

    def _context(self, request: RecRequest) -> npt.NDArray[np.int64]:
        named = [request.current_item, *request.cart_items]
        found = {self._index[item] for item in named if item is not None and item in self._index}
        return np.array(sorted(found), dtype=np.int64)


def _csr(matrix: PositiveMatrix, values: npt.NDArray[np.float64]) -> Any:
    from scipy.sparse import csr_matrix

    return csr_matrix((values, matrix.items, matrix.indptr), shape=(matrix.n_users, matrix.n_items))


def _purchases(history: InteractionLog, index: dict[str, int]) -> dict[str, npt.NDArray[np.int64]]:
    """{user: catalogue indices they bought}."""
    out: dict[str, set[int]] = {}
    bought = history.event_types == "purchase"
    for user, item in zip(
        history.user_ids[bought].tolist(), history.item_ids[bought].tolist(), strict=True
    ):
        if item in index:
            out.setdefault(user, set()).add(index[item])
    return {user: np.array(sorted(items), dtype=np.int64) for user, items in out.items()}
