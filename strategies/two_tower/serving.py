"""Exact, deterministic top-k retrieval over embeddings with NumPy (no TensorFlow).

Notes
-----
Embeddings are quantised to multiples of 2**-20 (`quantize`). A product of two such numbers
is a multiple of 2**-40, and for vectors of norm about 1 every partial sum of a dot product
stays below 2**12, so the float64 dot product is *exact* whatever the summation order, the
BLAS kernel or the batch size. A slate is therefore the same bit for bit whether one user
or a thousand are scored together (``recommend_batch == recommend``), and ties are broken
by the lower item index. Quantisation moves a component by at most 5e-7, far below the
gaps that order a slate.

Scoring every item exactly in float64 is slow, so `ItemIndex.search` first scores them in
float32 (four times faster), where the error of a dot product is provably below a small
`margin`, keeps every item that could still be in the exact top k given that margin, and
ranks those few candidates with their exact float64 scores. The result is the exact top k.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from abplatform.domain import UnitFeatures

QUANTUM = 2.0**-20
EXCLUDED_PENALTY = 4.0  # scores lie in about [-1.5, 1.5]; minus 4 puts excluded items last
PAD = 64  # the float32 item matrix is padded to a multiple of this many columns
BLOCKS_PER_K = 4
CHUNK_ROWS = 1024
EXHAUSTIVE_CELLS = 1 << 23  # scores held at once by the exhaustive path

Float64Array = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]


def quantize(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Round to the nearest multiple of 2**-20 (exactly representable in float32 for |x| < 8)."""
    array = np.asarray(vectors, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("embeddings contain NaN or infinite values")
    if np.any(np.abs(array) >= 8.0):
        raise ValueError("embeddings must be (about) unit vectors to be served exactly")
    out: npt.NDArray[np.float32] = (np.round(array / QUANTUM) * QUANTUM).astype(np.float32)
    return out


MAX_SERVED_OFFSET = 0.5
"""|temperature * b_item| is clipped to this when served: scores stay within the exclusion
penalty's reach (see serving.EXCLUDED_PENALTY) and the quantised dot products exact."""


def served_offsets(offsets: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Item offsets centred on their median (a shift ranks alike) and clipped for serving."""
    centred = offsets - np.median(offsets) if offsets.size else offsets
    out: npt.NDArray[np.float64] = np.clip(centred, -MAX_SERVED_OFFSET, MAX_SERVED_OFFSET)
    return out


def _ranked(
    rows: Int64Array, cols: Int64Array, values: Float64Array, n_rows: int, k: int
) -> Int64Array:
    """The first `k` columns of each row by (value desc, column asc); every row has >= k."""
    order = np.lexsort((cols, -values, rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    rank = np.arange(rows.size) - starts[rows]
    picked: Int64Array = cols[rank < k].reshape(n_rows, k).astype(np.int64)
    return picked


@dataclass(frozen=True)
class ItemIndex:
    """Quantised item embeddings prepared for exact top-k search.

    Build it with `ItemIndex.build`; `search` never changes the results it returns (it only
    caches float32 layouts of the items).
    """

    items: Float64Array  # (items, D) quantised, float64
    max_norm: float
    width: int  # number of items padded to a multiple of PAD
    _layouts: dict[int, tuple[npt.NDArray[np.float32], Int64Array]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, embeddings: npt.ArrayLike) -> ItemIndex:
        """Index (items, D) quantised embeddings."""
        items = np.asarray(embeddings, dtype=np.float64)
        if not np.array_equal(quantize(items).astype(np.float64), items):
            raise ValueError("item embeddings must be quantised (see quantize)")
        n_items = items.shape[0]
        max_norm = float(np.linalg.norm(items, axis=1).max()) if n_items else 0.0
        return cls(items=items, max_norm=max_norm, width=-(-n_items // PAD) * PAD)

    @property
    def n_items(self) -> int:
        """Number of items."""
        return int(self.items.shape[0])

    def _layout(self, block: int) -> tuple[npt.NDArray[np.float32], Int64Array]:
        """Float32 items, transposed, with item ``b * block + o`` in column ``o * blocks + b``.

        Scores computed against it reshape to (queries, block, blocks) with each block's items
        along axis 1, whose maximum NumPy takes fast (it vectorises over the last axis).
        Also returns the columns that hold padding.
        """
        cached = self._layouts.get(block)
        if cached is None:
            blocks = self.width // block
            padded = np.zeros((self.width, self.items.shape[1]), dtype=np.float32)
            padded[: self.n_items] = self.items
            order = np.arange(self.width).reshape(blocks, block).T.ravel()
            layout = np.ascontiguousarray(padded[order].T)
            padding = np.flatnonzero(order >= self.n_items).astype(np.int64)
            cached = self._layouts.setdefault(block, (layout, padding))
        return cached

    def search(
        self,
        queries: Float64Array,
        k: int,
        excluded: list[Int64Array] | None = None,
    ) -> tuple[Int64Array, Float64Array]:
        """Each query's exact top-`k` items (best first, ties by lower index) and scores.

        Parameters
        ----------
        queries
            (n, D) quantised query embeddings.
        k
            Slate size, 1 <= k <= number of items.
        excluded
            Per query, item indices ranked after every other item (still returned, with
            their true score, when `k` needs them).

        Returns
        -------
        indices, scores
            (n, k) item indices and their exact dot-product scores.
        """
        if not 1 <= k <= self.n_items:
            raise ValueError(f"k must be in [1, {self.n_items}] (got {k})")
        n = queries.shape[0]
        indices = np.zeros((n, k), dtype=np.int64)
        scores = np.zeros((n, k), dtype=np.float64)
        for lo in range(0, n, CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, n)
            chunk_excluded = excluded[lo:hi] if excluded is not None else None
            indices[lo:hi], scores[lo:hi] = self._search(queries[lo:hi], k, chunk_excluded)
        return indices, scores

    def _search(
        self, queries: Float64Array, k: int, excluded: list[Int64Array] | None
    ) -> tuple[Int64Array, Float64Array]:
        n, dim = queries.shape
        penalised = np.zeros(0, dtype=np.int64)  # sorted keys row * n_items + item
        if excluded is not None and any(len(e) for e in excluded):
            lengths = [len(e) for e in excluded]
            rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
            cols = np.concatenate(excluded).astype(np.int64)
            penalised = np.unique(rows * self.n_items + cols)
        block = min(1 << int(np.log2(max(self.width // (BLOCKS_PER_K * k), 1))), PAD)
        if block < 2:
            return self._exhaustive(queries, k, penalised)
        blocks = self.width // block
        layout, padding = self._layout(block)
        approx = queries.astype(np.float32) @ layout
        approx[:, padding] = -np.inf
        if penalised.size:
            items = penalised % self.n_items
            columns = (items % block) * blocks + items // block
            approx[penalised // self.n_items, columns] -= EXCLUDED_PENALTY
        # A float32 dot product of length D errs by at most about D * 2**-24 * |q| * |v|;
        # `margin` is ten times that, plus the rounding of the penalty.
        norms = np.linalg.norm(queries, axis=1)
        margin = (dim + 8) * 2.0**-20 * norms * self.max_norm + 2.0**-18
        grid = approx.reshape(n, block, blocks)
        maxima = grid.max(axis=1)
        threshold = np.partition(maxima, blocks - k, axis=1)[:, blocks - k]
        # k blocks reach `threshold`, so the exact k-th score is >= threshold - margin and
        # every item of the exact top k has an approximate score >= threshold - 2 margin.
        floor = threshold - 2.0 * margin
        block_rows, block_ids = np.nonzero(maxima >= floor[:, None])
        inside = grid[block_rows, :, block_ids] >= floor[block_rows, None]
        pair, offset = np.nonzero(inside)
        rows = block_rows[pair].astype(np.int64)
        cols = (block_ids[pair] * block + offset).astype(np.int64)
        exact = np.einsum("cd,cd->c", queries[rows], self.items[cols])
        ranking = exact.copy()
        if penalised.size:
            ranking[np.isin(rows * self.n_items + cols, penalised)] -= EXCLUDED_PENALTY
        picked = _ranked(rows, cols, ranking, n, k)
        values = np.einsum("nkd,nd->nk", self.items[picked], queries)
        return picked, values

    def _exhaustive(
        self, queries: Float64Array, k: int, penalised: Int64Array
    ) -> tuple[Int64Array, Float64Array]:
        """Score every item exactly (small catalogues, or k close to their size)."""
        n = queries.shape[0]
        picked = np.zeros((n, k), dtype=np.int64)
        values = np.zeros((n, k), dtype=np.float64)
        step = max(1, EXHAUSTIVE_CELLS // max(self.n_items, 1))
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            exact = queries[lo:hi] @ self.items.T
            ranking = exact.copy()
            mine = penalised[(penalised >= lo * self.n_items) & (penalised < hi * self.n_items)]
            if mine.size:
                ranking[mine // self.n_items - lo, mine % self.n_items] -= EXCLUDED_PENALTY
            if k == self.n_items:
                chosen = np.argsort(-ranking, axis=1, kind="stable").astype(np.int64)
            else:
                # Everything at or above each row's k-th largest value, then exact ordering.
                kth = -np.partition(-ranking, k - 1, axis=1)[:, k - 1]
                rows, cols = np.nonzero(ranking >= kth[:, None])
                chosen = _ranked(rows, cols, ranking[rows, cols], hi - lo, k)
            picked[lo:hi] = chosen
            values[lo:hi] = np.take_along_axis(exact, chosen, axis=1)
        return picked, values


FRESH_QUERIES = 50_000
"""Fresh-feature user queries a served strategy keeps (then it starts afresh)."""


class FreshQueries:
    """User queries embedded from online features, by their exact inputs: (unit, positive
    items, online purchases, profile). An unchanged unit costs a look-up, not an embedding;
    a changed one has another key (never a stale query)."""

    def __init__(self, limit: int = FRESH_QUERIES) -> None:
        self.limit = limit
        self._queries: dict[Hashable, tuple[npt.NDArray[np.float64], Int64Array]] = {}

    @staticmethod
    def key(unit_id: str, features: UnitFeatures) -> Hashable | None:
        """The cache key of a unit's merged features (None: a profile value is unhashable)."""
        key = (
            unit_id,
            features.positive_items,
            features.purchased,
            tuple(features.profile.items()),
        )
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def get(self, key: Hashable | None) -> tuple[npt.NDArray[np.float64], Int64Array] | None:
        """The query and exclusions embedded for `key`, if kept."""
        return None if key is None else self._queries.get(key)

    def put(
        self, key: Hashable | None, query: tuple[npt.NDArray[np.float64], Int64Array]
    ) -> tuple[npt.NDArray[np.float64], Int64Array]:
        """Keep `query` for `key`; returns it."""
        if key is not None:
            if len(self._queries) >= self.limit:
                self._queries.clear()
            self._queries[key] = query
        return query
