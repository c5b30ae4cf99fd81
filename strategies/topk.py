"""Exact top-k of a dense score matrix: excluded items last, ties by the lower item index."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def _best(
    scores: npt.NDArray[np.float64], columns: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]:
    """The `k` best of `columns` (ascending) by (score desc, column asc)."""
    values = scores[columns]
    if k < columns.size:
        kth = np.partition(values, columns.size - k)[columns.size - k]
        keep = values >= kth  # the k-th value's ties all stay, the exact order decides
        columns, values = columns[keep], values[keep]
    order = np.lexsort((columns, -values))
    chosen: npt.NDArray[np.int64] = columns[order[:k]]
    return chosen


def top_k(
    scores: npt.NDArray[np.float64],
    k: int,
    excluded: Sequence[npt.NDArray[np.int64]] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Each row's `k` best columns (best first) and their scores.

    Parameters
    ----------
    scores
        (n, items) finite scores; each row is ranked on its own, so a row's result does not
        depend on the other rows of the batch.
    k
        1 <= k <= items.
    excluded
        Per row, columns ranked after every other one (still returned, with their true
        score, when `k` needs them).
    """
    n, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, {n_items}] (got {k})")
    everything = np.arange(n_items, dtype=np.int64)
    picked = np.empty((n, k), dtype=np.int64)
    for row in range(n):
        out = excluded[row] if excluded is not None else None
        if out is None or len(out) == 0:
            picked[row] = _best(scores[row], everything, k)
            continue
        is_out = np.zeros(n_items, dtype=bool)
        is_out[out] = True
        allowed = np.flatnonzero(~is_out)
        head = _best(scores[row], allowed, min(k, allowed.size))
        if head.size < k:
            tail = _best(scores[row], np.flatnonzero(is_out), k - head.size)
            head = np.concatenate([head, tail])
        picked[row] = head
    values: npt.NDArray[np.float64] = np.take_along_axis(scores, picked, axis=1)
    return picked, values
