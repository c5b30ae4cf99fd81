"""ALS: implicit-feedback matrix factorisation, trained with `implicit`, served with NumPy.

Layout of an exported version ``<root>/<experiment>/<variant>/<version>/``::

    manifest.json        format, format version, kind, params, seed, data, training
                         (fallback reason, seconds), metrics, library versions, sha256s
    items.npz            the catalogue: item_ids, categories, brands, prices (, tags)
    user_ids.npy         (users,) users with a factor row, sorted
    user_factors.npy     (users, F) float32, quantised (see `quantize`)
    item_factors.npy     (items, F) float32, quantised
    purchased.npz        indptr, items: what each of those users bought (exclude_purchased)
    popularity.npy       (items,) summed positive weights plus a seeded tie-break

Serving needs only NumPy: `AlsStrategy.from_artifact` reads these files (checksums checked)
and never imports `implicit`, so every API worker serves the same factors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Unpack

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from abplatform.domain import Catalog, InteractionLog, RecRequest, Slate
from abplatform.errors import AbplatformError
from abplatform.registry import strategies
from strategies.array_artifact import catalog_arrays, catalog_of, export_version, read_version
from strategies.base import ArtifactPlace, BaseStrategy, NotFittedError, check_k
from strategies.positives import (
    PositiveMatrix,
    PositiveParams,
    positive_matrix,
    purchases_by_user,
)
from strategies.topk import top_k
from strategies.two_tower.serving import quantize

log = logging.getLogger(__name__)

FORMAT = "abplatform.als"
FORMAT_VERSION = 1
MAX_SERVED = 4.0
"""Factors are scaled (a positive factor per matrix, which ranks alike) to |x| <= this before
quantising, so every float64 dot product is exact and a batch scores as one request does."""
_FILES = (
    "items.npz",
    "user_ids.npy",
    "user_factors.npy",
    "item_factors.npy",
    "purchased.npz",
    "popularity.npy",
)


class AlsParams(PositiveParams):
    """Parameters of the ALS strategy (the seed comes from the experiment).

    Attributes
    ----------
    factors
        Size of the user and item factors.
    regularization
        L2 penalty on the factors.
    iterations
        Alternating passes (users, then items).
    alpha
        Confidence scale: a (user, item) pair with summed weight w has confidence 1 + alpha w.
    exclude_purchased
        Items a known user bought go last in their slates (returned only if k needs them).

    The defaults of `factors`, `regularization` and `alpha` were chosen on a validation split
    of MovieLens 100K's training part (bench/README.md).
    """

    factors: int = Field(default=48, ge=1, le=1024)
    regularization: float = Field(default=30.0, ge=0.0, le=1e6, allow_inf_nan=False)
    iterations: int = Field(default=15, ge=1, le=1000)
    alpha: float = Field(default=2.0, gt=0.0, le=1e6, allow_inf_nan=False)
    exclude_purchased: bool = True


@dataclass(frozen=True)
class AlsArtifact:
    """What serves ALS slates: the factors, the purchases to exclude, the popularity order."""

    catalog: Catalog
    user_ids: npt.NDArray[np.str_]
    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    purchased_indptr: npt.NDArray[np.int64]
    purchased_items: npt.NDArray[np.int64]
    popularity: npt.NDArray[np.float64]
    manifest: dict[str, Any]

    def purchased(self, row: int) -> npt.NDArray[np.int64]:
        """Item indices bought by user number `row`."""
        return self.purchased_items[self.purchased_indptr[row] : self.purchased_indptr[row + 1]]

    @property
    def item_scale(self) -> float:
        """The factor the item factors were divided by before quantising."""
        return float(self.manifest["training"]["item_scale"])


@strategies.register("als")
class AlsStrategy(BaseStrategy):
    """Implicit-feedback ALS (Hu, Koren and Volinsky 2008) over the history's positive rows.

    Each (user, item) pair's positive rows (`positive_events`, ratings at or above
    `min_rating`) sum their `weights` into w; `implicit` factorises the confidence
    1 + alpha w of the binary preference, single-threaded and seeded. A known user's slate
    is the exact top k of their factor against every item's. A user without a factor row
    whose request names catalogue items (current item, cart) is folded in: one exact
    least-squares step of ALS against the fixed item factors, with those items as
    positives. Anyone else gets the popularity ranking (summed positive weights).
    With no positive pair on two distinct items, `fit` serves popularity only and records
    why in ``manifest["training"]["fallback"]``.
    """

    kind = "als"
    Params: ClassVar[type[BaseModel]] = AlsParams

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self._artifact: AlsArtifact | None = None

    def fit(self, history: InteractionLog) -> None:
        """Factorise the positives of `history` with `implicit` (imported only here)."""
        super().fit(history)
        params: AlsParams = self.params
        matrix = positive_matrix(history, params)
        popularity = matrix.item_weights() + _jitter(len(history.catalog), self.seed)
        reason = _too_little(matrix)
        clock = time.perf_counter()
        if reason is None:
            users, items = _factorise(matrix, params, self.seed)
        else:
            log.warning("als: %s; serving a popularity ranking instead", reason)
            users = np.zeros((0, params.factors))
            items = np.zeros((len(history.catalog), params.factors))
        seconds = time.perf_counter() - clock
        user_scale = _scale(users)
        item_scale = _scale(items)
        known = matrix.user_ids if reason is None else np.zeros(0, dtype=str)
        indptr, bought = purchases_by_user(history, known)
        stamps = history.timestamps
        manifest = {
            "kind": self.kind,
            "params": params.model_dump(mode="json"),
            "seed": self.seed,
            "data": {
                "interactions": len(history),
                "positive_pairs": int(matrix.items.size),
                "users": matrix.n_users,
                "items": len(history.catalog),
                "start": _iso(int(stamps.min())) if len(history) else None,
                "end": _iso(int(stamps.max())) if len(history) else None,
            },
            "training": {
                "fallback": reason,
                "seconds": round(seconds, 3),
                "item_scale": item_scale,
                "user_scale": user_scale,
            },
            "metrics": {},
        }
        self._artifact = AlsArtifact(
            catalog=history.catalog,
            user_ids=known.astype(str),
            user_factors=quantize(users / user_scale),
            item_factors=quantize(items / item_scale),
            purchased_indptr=indptr,
            purchased_items=bought,
            popularity=popularity,
            manifest=manifest,
        )

    # -- serving ---------------------------------------------------------------------------

    @property
    def artifact(self) -> AlsArtifact:
        """The fitted (or loaded) factors."""
        if self._artifact is None:
            raise NotFittedError(
                f"strategy {self.kind!r} is not fitted",
                hint="call fit(history) first, or AlsStrategy.from_artifact(path)",
            )
        return self._artifact

    @property
    def fallback_reason(self) -> str | None:
        """Why `fit` serves popularity only (None when factors were learned)."""
        reason: str | None = self.artifact.manifest["training"].get("fallback")
        return reason

    def item_vectors(self) -> npt.NDArray[np.float64] | None:
        """Unit-norm item factors (for similarity-based strategies); None after a fallback."""
        if self.fallback_reason is not None:
            return None
        factors = self.artifact.item_factors.astype(np.float64)
        norms = np.linalg.norm(factors, axis=1, keepdims=True)
        vectors: npt.NDArray[np.float64] = factors / np.where(norms > 0, norms, 1.0)
        return vectors

    def _prepare_serving(self) -> None:
        artifact = self.artifact
        if getattr(self, "_served", None) is artifact:
            return
        self._rows = {user: i for i, user in enumerate(artifact.user_ids.tolist())}
        self._index = artifact.catalog.index()
        self._items64 = artifact.item_factors.astype(np.float64)
        self._users64 = artifact.user_factors.astype(np.float64)
        # Y^T Y of the unscaled item factors, for folding in a user from a request's items.
        unscaled = self._items64 * artifact.item_scale
        self._gram = unscaled.T @ unscaled
        self._served = artifact

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Exact top-k slates; identical to `recommend` one request at a time."""
        check_k(k)
        _ = self.catalog
        self._prepare_serving()
        artifact = self.artifact
        params: AlsParams = self.params
        if not requests:
            return []
        size = min(k, len(artifact.catalog))
        factor_rows: list[int] = []
        queries: list[npt.NDArray[np.float64]] = []
        excluded: list[npt.NDArray[np.int64]] = []
        popular: list[int] = []
        nothing = np.zeros(0, dtype=np.int64)
        for i, request in enumerate(requests):
            row = self._rows.get(request.unit_id)
            if row is not None:
                factor_rows.append(i)
                queries.append(self._users64[row])
                excluded.append(artifact.purchased(row) if params.exclude_purchased else nothing)
                continue
            context = self._context(request)
            if context.size and self.fallback_reason is None:
                factor_rows.append(i)
                queries.append(self._fold_in(context))
                excluded.append(nothing)
            else:
                popular.append(i)
        slates: list[Slate | None] = [None] * len(requests)
        if factor_rows:
            scores = np.vstack(queries) @ self._items64.T
            picked, values = top_k(scores, size, excluded)
            for i, top, value in zip(factor_rows, picked, values, strict=True):
                slates[i] = self._slate(top, value)
        if popular:
            top, value = top_k(artifact.popularity[None, :], size)
            slate = self._slate(top[0], value[0])
            for i in popular:
                slates[i] = slate
        return [s for s in slates if s is not None]

    def _context(self, request: RecRequest) -> npt.NDArray[np.int64]:
        """Catalogue indices of the request's current item and cart items (distinct)."""
        named = [request.current_item, *request.cart_items]
        found = {self._index[item] for item in named if item is not None and item in self._index}
        return np.array(sorted(found), dtype=np.int64)

    def _fold_in(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """A new user's query: the exact ALS user step with `items` as weight-1 positives."""
        params: AlsParams = self.params
        y = self._items64[items] * self.artifact.item_scale
        confidence = 1.0 + params.alpha
        a = self._gram + (confidence - 1.0) * (y.T @ y)
        a[np.diag_indices_from(a)] += params.regularization
        user = np.linalg.solve(a, confidence * y.sum(axis=0))
        served: npt.NDArray[np.float64] = quantize(user / _scale(user[None, :])).astype(np.float64)
        return served

    # -- artifacts ---------------------------------------------------------------------------

    def export(self, root: str | Path, **place: Unpack[ArtifactPlace]) -> Path:
        """Write the factors as a new version under ``root/experiment/variant``."""
        artifact = self.artifact
        files: dict[str, dict[str, npt.NDArray[Any]]] = {
            "items.npz": catalog_arrays(artifact.catalog),
            "user_ids.npy": {"": artifact.user_ids.astype(str)},
            "user_factors.npy": {"": artifact.user_factors},
            "item_factors.npy": {"": artifact.item_factors},
            "purchased.npz": {
                "indptr": artifact.purchased_indptr,
                "items": artifact.purchased_items,
            },
            "popularity.npy": {"": artifact.popularity},
        }
        return export_version(
            root,
            format_name=FORMAT,
            format_version=FORMAT_VERSION,
            files=files,
            manifest=artifact.manifest,
            place=place,
        )

    @classmethod
    def from_artifact(cls, path: str | Path) -> AlsStrategy:
        """A strategy serving an exported version directory (checksums checked), NumPy only."""
        artifact = load_als_artifact(path)
        manifest = artifact.manifest
        strategy = cls(manifest.get("params", {}), seed=int(manifest.get("seed", 0)))
        strategy._catalog = artifact.catalog
        strategy._artifact = artifact
        return strategy


def load_als_artifact(path: str | Path) -> AlsArtifact:
    """Read an ALS version directory, checking every file against its manifest's sha256."""
    manifest, arrays = read_version(
        path, format_name=FORMAT, format_version=FORMAT_VERSION, files=_FILES
    )
    return AlsArtifact(
        catalog=catalog_of(arrays["items.npz"]),
        user_ids=arrays["user_ids.npy"],
        user_factors=arrays["user_factors.npy"],
        item_factors=arrays["item_factors.npy"],
        purchased_indptr=arrays["purchased.npz"]["indptr"],
        purchased_items=arrays["purchased.npz"]["items"],
        popularity=arrays["popularity.npy"],
        manifest=manifest,
    )


def _factorise(
    matrix: PositiveMatrix, params: AlsParams, seed: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """User and item factors from `implicit` (single thread, seeded: deterministic)."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise AbplatformError(
            f"the als strategy needs the implicit library to train ({exc})",
            hint="pip install implicit==0.7.2 (pinned in requirements.lock); serving an "
            "exported ALS artifact does not need it",
        ) from exc
    with threadpool_limits(limits=1, user_api="blas"):
        # implicit takes each stored value as the pair's confidence (its `alpha` only scales
        # it), so the values given are the confidences 1 + alpha w themselves.
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,
            iterations=params.iterations,
            calculate_training_loss=False,
            num_threads=1,
            random_state=seed,
        )
        model.fit(matrix.confidences(params.alpha), show_progress=False)
    users = np.asarray(model.user_factors, dtype=np.float64)
    items = np.asarray(model.item_factors, dtype=np.float64)
    if not (np.all(np.isfinite(users)) and np.all(np.isfinite(items))):
        raise AbplatformError(
            "als: training produced non-finite factors",
            hint="raise regularization or lower alpha",
        )
    return users, items


def _scale(factors: npt.NDArray[np.float64]) -> float:
    """The divisor that brings every |factor| to at most `MAX_SERVED` (1 if already there)."""
    largest = float(np.abs(factors).max()) if factors.size else 0.0
    return max(1.0, largest / MAX_SERVED)


def _jitter(n_items: int, seed: int) -> npt.NDArray[np.float64]:
    """A seeded tie-break far below one interaction's weight."""
    jitter: npt.NDArray[np.float64] = np.random.default_rng(seed).random(n_items) * 1e-9
    return jitter


def _too_little(matrix: PositiveMatrix) -> str | None:
    """Why there is nothing to factorise, or None."""
    if matrix.items.size == 0:
        return "the history has no positive interactions on catalogue items"
    if np.unique(matrix.items).size < 2:
        return "the history's positive interactions are all on one item"
    return None


def _iso(seconds: int) -> str:
    return str(np.datetime64(seconds, "s")) + "Z"
