"""Multiple-comparison corrections of p-values: Holm-Bonferroni and Benjamini-Hochberg."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["CORRECTIONS", "Correction", "adjust_pvalues"]

Correction = Literal["none", "holm", "bh"]
CORRECTIONS: tuple[Correction, ...] = ("none", "holm", "bh")


def adjust_pvalues(p_values: ArrayLike, method: str = "holm") -> NDArray[np.float64]:
    """Adjusted p-values of one family of tests, along the last axis.

    Parameters
    ----------
    p_values : array_like
        P-values in ``[0, 1]``; a 2-D array is treated as independent families
        in its rows (used by the Monte Carlo self-check).
    method : {"none", "holm", "bh"}
        ``"holm"``: Holm-Bonferroni step-down (controls the family-wise error
        rate); ``"bh"``: Benjamini-Hochberg step-up (controls the false
        discovery rate under independence or positive dependence);
        ``"none"``: unchanged.

    Returns
    -------
    ndarray
        Adjusted p-values, same shape, in ``[0, 1]``; reject where ``< alpha``.

    Raises
    ------
    ValueError
        On an unknown method or p-values outside ``[0, 1]`` (or NaN).

    Notes
    -----
    With the ``m`` p-values sorted, :math:`p_{(1)} \\le \\dots \\le p_{(m)}`:

    Holm: :math:`\\tilde p_{(i)} = \\max_{j \\le i} \\min(1, (m - j + 1) p_{(j)})`.

    BH: :math:`\\tilde p_{(i)} = \\min_{j \\ge i} \\min(1, m p_{(j)} / j)`.

    Both agree with ``statsmodels.stats.multitest.multipletests`` (methods
    ``"holm"`` and ``"fdr_bh"``).
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; choose one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p_values, dtype=np.float64)
    if p.size and not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError("p-values must lie in [0, 1] (and not be NaN)")
    if method == "none" or p.size == 0:
        return p.copy()
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=-1)
    rank = np.arange(1, m + 1, dtype=np.float64)
    if method == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - rank + 1.0) * sorted_p), axis=-1)
    else:
        scaled = np.minimum(1.0, m * sorted_p / rank)
        adjusted = np.flip(np.minimum.accumulate(np.flip(scaled, axis=-1), axis=-1), axis=-1)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out
