"""EASE: the closed-form linear item-item model (Steck 2019), fitted and served with NumPy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Unpack

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

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

FORMAT = "abplatform.ease"
FORMAT_VERSION = 1
_FILES = (
    "items.npz",
    "user_ids.npy",
    "positives.npz",
    "weights.npy",
    "purchased.npz",
    "popularity.npy",
)
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


@dataclass(frozen=True)
class EaseArtifact:
    """What serves EASE slates: B, each known user's row of X, purchases, popularity."""

    catalog: Catalog
    user_ids: npt.NDArray[np.str_]
    indptr: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float32]
    purchased_indptr: npt.NDArray[np.int64]
    purchased_items: npt.NDArray[np.int64]
    popularity: npt.NDArray[np.float64]
    manifest: dict[str, Any]

    def purchased(self, row: int) -> npt.NDArray[np.int64]:
        """Item indices bought by user number `row`."""
        return self.purchased_items[self.purchased_indptr[row] : self.purchased_indptr[row + 1]]


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
    popularity ranking (summed positive weights, seeded tie-break). `export` writes B
    (float32, as served) and the users' rows of X; `from_artifact` serves them again without
    refitting: the inverse takes seconds on a few thousand items (bench_baselines.py), too
    long for every API worker's start.
    """

    kind = "ease"
    Params: ClassVar[type[BaseModel]] = EaseParams

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self._artifact: EaseArtifact | None = None

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
        values = np.ones_like(matrix.weights) if params.binary else matrix.weights
        x = _csr(matrix, values)
        gram = np.asarray((x.T @ x).toarray(), dtype=np.float64)
        jitter = np.random.default_rng(self.seed).random(n_items) * 1e-9
        stamps = history.timestamps
        manifest = {
            "kind": self.kind,
            "params": params.model_dump(mode="json"),
            "seed": self.seed,
            "data": {
                "interactions": len(history),
                "positive_pairs": int(matrix.items.size),
                "users": matrix.n_users,
                "items": n_items,
                "start": _iso(int(stamps.min())) if len(history) else None,
                "end": _iso(int(stamps.max())) if len(history) else None,
            },
            "metrics": {},
        }
        indptr, bought = purchases_by_user(history, matrix.user_ids)
        self._use(
            EaseArtifact(
                catalog=history.catalog,
                user_ids=matrix.user_ids,
                indptr=matrix.indptr,
                items=matrix.items,
                values=values,
                # float32 halves the memory; serving and the artifact use these very numbers.
                weights=ease_weights(gram, params.l2).astype(np.float32),
                purchased_indptr=indptr,
                purchased_items=bought,
                popularity=matrix.item_weights() + jitter,
                manifest=manifest,
            )
        )

    def _use(self, artifact: EaseArtifact) -> None:
        self._catalog = artifact.catalog
        self._artifact = artifact
        self._rows = {user: i for i, user in enumerate(artifact.user_ids.tolist())}
        self._index = artifact.catalog.index()

    @property
    def artifact(self) -> EaseArtifact:
        """The fitted (or loaded) weights."""
        if self._artifact is None:
            raise NotFittedError(
                f"strategy {self.kind!r} is not fitted",
                hint="call fit(history) first, or EaseStrategy.from_artifact(path)",
            )
        return self._artifact

    def export(self, root: str | Path, **place: Unpack[ArtifactPlace]) -> Path:
        """Write B and the users' rows of X as a new version under ``root/experiment/variant``."""
        artifact = self.artifact
        files: dict[str, dict[str, npt.NDArray[Any]]] = {
            "items.npz": catalog_arrays(artifact.catalog),
            "user_ids.npy": {"": artifact.user_ids.astype(str)},
            "positives.npz": {
                "indptr": artifact.indptr,
                "items": artifact.items,
                "values": artifact.values,
            },
            "weights.npy": {"": artifact.weights},
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
    def from_artifact(cls, path: str | Path) -> EaseStrategy:
        """A strategy serving an exported version directory (checksums checked), no refit."""
        manifest, arrays = read_version(
            path, format_name=FORMAT, format_version=FORMAT_VERSION, files=_FILES
        )
        strategy = cls(manifest.get("params", {}), seed=int(manifest.get("seed", 0)))
        strategy._use(
            EaseArtifact(
                catalog=catalog_of(arrays["items.npz"]),
                user_ids=arrays["user_ids.npy"],
                indptr=arrays["positives.npz"]["indptr"],
                items=arrays["positives.npz"]["items"],
                values=arrays["positives.npz"]["values"],
                weights=arrays["weights.npy"],
                purchased_indptr=arrays["purchased.npz"]["indptr"],
                purchased_items=arrays["purchased.npz"]["items"],
                popularity=arrays["popularity.npy"],
                manifest=manifest,
            )
        )
        return strategy

    def user_scores(
        self, items: npt.NDArray[np.int64], values: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """x B for a user whose row holds `values` at catalogue indices `items`."""
        # One user at a time, in float32 as B is stored: the same numbers in any batch.
        rows = self.artifact.weights[items]
        scores: npt.NDArray[np.float64] = (values.astype(np.float32) @ rows).astype(np.float64)
        return scores

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Exact top-k slates; each user is scored on their own, so batch == single."""
        check_k(k)
        _ = self.catalog
        if not requests:
            return []
        params: EaseParams = self.params
        artifact = self.artifact
        size = min(k, len(self.catalog))
        slates: list[Slate] = []
        popular: Slate | None = None
        nothing = np.zeros(0, dtype=np.int64)
        for request in requests:
            row = self._rows.get(request.unit_id)
            if row is not None:
                span = slice(artifact.indptr[row], artifact.indptr[row + 1])
                scores = self.user_scores(artifact.items[span], artifact.values[span])
                excluded = artifact.purchased(row) if params.exclude_purchased else nothing
            else:
                context = self._context(request)
                if context.size == 0:
                    if popular is None:
                        top, value = top_k(artifact.popularity[None, :], size)
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


def _iso(seconds: int) -> str:
    return str(np.datetime64(seconds, "s")) + "Z"
