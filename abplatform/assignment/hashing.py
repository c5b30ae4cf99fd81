"""GrowthBook-compatible deterministic hashing of units into buckets and variant ranges."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "HASH_ALGORITHM_VERSIONS",
    "bucket",
    "bucket_batch",
    "bucket_ranges",
    "choose_variant",
    "choose_variant_batch",
    "fnv1a32",
    "in_namespace",
]

HASH_ALGORITHM_VERSIONS: tuple[int, ...] = (1, 2)
"""Hash algorithm versions understood by :func:`bucket` and :func:`bucket_batch`."""

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_UINT32_MOD = 2**32

# Number of decimal digits of the largest uint32 (4294967295).
_MAX_UINT32_DIGITS = 10
_POW10 = tuple(np.uint32(10**k) for k in range(_MAX_UINT32_DIGITS))


def fnv1a32(text: str) -> int:
    """Hash a string with 32-bit FNV-1a, exactly as GrowthBook's Python SDK does.

    The hash iterates over the Unicode code points of ``text`` (``ord(ch)``), not over
    its UTF-8 bytes, so non-ASCII characters contribute one (possibly > 255) value each.

    Parameters
    ----------
    text : str
        The string to hash.

    Returns
    -------
    int
        The hash, an integer in ``[0, 2**32)``.
    """
    hval = _FNV_OFFSET
    for ch in text:
        hval = ((hval ^ ord(ch)) * _FNV_PRIME) % _UINT32_MOD
    return hval


def bucket(seed: str, unit_id: str, version: int) -> float | None:
    """Map a unit to a deterministic bucket in ``[0, 1)`` (GrowthBook's ``hash``).

    Parameters
    ----------
    seed : str
        The experiment seed (GrowthBook uses the experiment key when no seed is set).
    unit_id : str
        The hashed unit identifier, e.g. a user id.
    version : int
        Hash algorithm version. Version 1 is ``(fnv(unit_id + seed) % 1000) / 1000``;
        version 2 is ``(fnv(str(fnv(seed + unit_id))) % 10000) / 10000``.

    Returns
    -------
    float or None
        The bucket in ``[0, 1)``, or ``None`` when ``version`` is not supported.
    """
    if version == 2:
        return (fnv1a32(str(fnv1a32(seed + unit_id))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(unit_id + seed) % 1000) / 1000
    return None


def _equal_weights(n_variants: int) -> list[float]:
    if n_variants < 1:
        return []
    return [1 / n_variants] * n_variants


def bucket_ranges(
    n_variants: int, coverage: float, weights: Sequence[float] | None
) -> list[tuple[float, float]]:
    """Compute the bucket range of each variant (GrowthBook's ``getBucketRanges``).

    Arm ``i`` gets ``[c_i, c_i + coverage * w_i)``, where ``c_i`` is the sum of the
    weights of the previous arms (not scaled by ``coverage``). Reducing coverage
    therefore shrinks every arm from its right end, and a unit keeps its arm when
    coverage is later increased.

    Parameters
    ----------
    n_variants : int
        Number of variants (arms).
    coverage : float
        Share of units included in the experiment; clamped to ``[0, 1]``.
    weights : sequence of float or None
        Traffic split between the variants. ``None``, a sequence whose length is not
        ``n_variants``, or one summing outside ``[0.99, 1.01]`` falls back to equal
        weights.

    Returns
    -------
    list of tuple of (float, float)
        One half-open ``(start, end)`` range per variant; empty if ``n_variants < 1``.
    """
    coverage = min(max(coverage, 0.0), 1.0)
    if weights is None or len(weights) != n_variants:
        w = _equal_weights(n_variants)
    else:
        w = list(weights)
        total = sum(w)
        if total < 0.99 or total > 1.01:
            w = _equal_weights(n_variants)
    cumulative = 0.0
    ranges: list[tuple[float, float]] = []
    for weight in w:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_variant(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """Return the index of the first range containing ``n`` (GrowthBook's ``chooseVariation``).

    Parameters
    ----------
    n : float
        A bucket, as returned by :func:`bucket`.
    ranges : sequence of tuple of (float, float)
        Half-open ``(start, end)`` ranges, as returned by :func:`bucket_ranges`.

    Returns
    -------
    int
        Index of the first range with ``start <= n < end``, or ``-1`` if none matches.
    """
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def in_namespace(unit_id: str, namespace: tuple[str, float, float]) -> bool:
    """Tell whether a unit falls in a namespace slice (GrowthBook's ``inNamespace``).

    Parameters
    ----------
    unit_id : str
        The hashed unit identifier.
    namespace : tuple of (str, float, float)
        ``(name, start, end)``; the unit is in the namespace when
        ``bucket("__" + name, unit_id, 1)`` lies in ``[start, end)``.

    Returns
    -------
    bool
        ``True`` if the unit's namespace bucket is in ``[start, end)``.
    """
    name, start, end = namespace
    n = bucket("__" + name, unit_id, 1)
    if n is None:  # pragma: no cover - version 1 is always supported
        return False
    return start <= n < end


# --------------------------------------------------------------------------------------
# Vectorised batch path
# --------------------------------------------------------------------------------------


def _as_code_points(
    unit_ids: Sequence[str] | npt.NDArray[np.str_],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.intp]]:
    """Return an ``(n, width)`` uint32 code-point matrix and the length of each id."""
    if isinstance(unit_ids, np.ndarray) and unit_ids.dtype.kind == "U":
        if unit_ids.ndim != 1:
            raise ValueError(f"unit_ids must be one-dimensional, got shape {unit_ids.shape}")
        arr = unit_ids
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        # A numpy 'U' array cannot hold trailing NUL characters, so str_len is exact.
        lengths = np.strings.str_len(arr).astype(np.intp, copy=False)
    else:
        ids = unit_ids if isinstance(unit_ids, list) else list(unit_ids)
        try:
            total_chars = len("".join(ids))  # also rejects non-str items, cheaply
        except TypeError as exc:
            raise TypeError(f"unit_ids must contain only str: {exc}") from None
        arr = np.array(ids, dtype=np.str_) if ids else np.empty(0, dtype="<U1")
        lengths = np.strings.str_len(arr).astype(np.intp, copy=False)
        if int(lengths.sum()) != total_chars:
            # Some id ends with NUL characters, which numpy keeps only as zero padding;
            # take the true lengths from Python so that those NULs are hashed too.
            lengths = np.fromiter(map(len, ids), dtype=np.intp, count=len(ids))
            max_len = int(lengths.max())
            if arr.dtype.itemsize < 4 * max_len:  # pragma: no cover - numpy keeps the width
                arr = arr.astype(f"<U{max_len}")
    arr = np.ascontiguousarray(arr)
    width = arr.dtype.itemsize // 4
    codes = arr.view(np.uint32).reshape(arr.shape[0], width)
    return codes, lengths


def _fnv_scalar_step(hval: int, text: str) -> int:
    """Continue an FNV-1a state with the characters of ``text``."""
    for ch in text:
        hval = ((hval ^ ord(ch)) * _FNV_PRIME) % _UINT32_MOD
    return hval


def _fnv_columns(
    state: npt.NDArray[np.uint32],
    codes: npt.NDArray[np.uint32],
    lengths: npt.NDArray[np.intp],
) -> None:
    """Feed each row's code points into its FNV state, in place, honouring lengths."""
    n_rows, width = codes.shape
    if n_rows == 0 or width == 0:
        return
    prime = np.uint32(_FNV_PRIME)
    min_len = int(lengths.min())
    max_len = int(lengths.max())
    tmp = np.empty_like(state)
    for j in range(max_len):
        if j < min_len:
            # Every row has a character here: no mask needed.
            np.bitwise_xor(state, codes[:, j], out=state)
            np.multiply(state, prime, out=state)  # wraps modulo 2**32
        else:
            np.bitwise_xor(state, codes[:, j], out=tmp)
            np.multiply(tmp, prime, out=tmp)
            np.copyto(state, tmp, where=lengths > j)


def _fnv_text(state: npt.NDArray[np.uint32], text: str) -> None:
    """Feed the same string into every row's FNV state, in place."""
    prime = np.uint32(_FNV_PRIME)
    for ch in text:
        np.bitwise_xor(state, np.uint32(ord(ch)), out=state)
        np.multiply(state, prime, out=state)


def _fnv_of_decimal(values: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Return ``fnv1a32(str(v))`` for every uint32 ``v``, without building strings."""
    prime = np.uint32(_FNV_PRIME)
    state = np.full(values.shape, _FNV_OFFSET, dtype=np.uint32)
    tmp = np.empty_like(state)
    digit = np.empty_like(state)
    # Most significant digit first; digit k (power 10**k) exists iff v >= 10**k, except
    # that the units digit always exists (str(0) == "0").
    for k in range(_MAX_UINT32_DIGITS - 1, -1, -1):
        np.floor_divide(values, _POW10[k], out=digit)
        if k < _MAX_UINT32_DIGITS - 1:
            np.remainder(digit, np.uint32(10), out=digit)
        np.add(digit, np.uint32(ord("0")), out=digit)
        if k == 0:
            np.bitwise_xor(state, digit, out=state)
            np.multiply(state, prime, out=state)
        else:
            np.bitwise_xor(state, digit, out=tmp)
            np.multiply(tmp, prime, out=tmp)
            np.copyto(state, tmp, where=values >= _POW10[k])
    return state


def bucket_batch(
    seed: str, unit_ids: Sequence[str] | npt.NDArray[np.str_], version: int
) -> npt.NDArray[np.float64]:
    """Vectorised :func:`bucket` for many units sharing one seed.

    FNV-1a is computed column by column over the UCS-4 code points of a numpy ``'U'``
    array with wrapping uint32 arithmetic, masking rows that are shorter than the
    column. For version 2 the decimal representation of the first hash is produced
    digit by digit and hashed the same way. Results are bit-identical to
    :func:`bucket`.

    Parameters
    ----------
    seed : str
        The experiment seed.
    unit_ids : sequence of str or numpy.ndarray of str
        The unit identifiers; a one-dimensional ``'U'`` array avoids a conversion.
    version : int
        Hash algorithm version, one of :data:`HASH_ALGORITHM_VERSIONS`.

    Returns
    -------
    numpy.ndarray of float64
        ``bucket(seed, unit_ids[i], version)`` for every ``i``.

    Raises
    ------
    ValueError
        If ``version`` is not supported (the scalar function returns ``None`` instead),
        or if ``unit_ids`` is a multi-dimensional array.
    TypeError
        If a non-array ``unit_ids`` contains something other than ``str``.
    """
    if version not in HASH_ALGORITHM_VERSIONS:
        raise ValueError(
            f"unsupported hash version {version!r}; supported: {HASH_ALGORITHM_VERSIONS}"
        )
    codes, lengths = _as_code_points(unit_ids)
    n_rows = codes.shape[0]
    if version == 1:
        # fnv(unit_id + seed): the id's own characters, then the seed's.
        state = np.full(n_rows, _FNV_OFFSET, dtype=np.uint32)
        _fnv_columns(state, codes, lengths)
        _fnv_text(state, seed)
        return (state % np.uint32(1000)).astype(np.float64) / 1000.0
    # Version 2: fnv(str(fnv(seed + unit_id))); the seed prefix is shared by every row.
    state = np.full(n_rows, _fnv_scalar_step(_FNV_OFFSET, seed), dtype=np.uint32)
    _fnv_columns(state, codes, lengths)
    second = _fnv_of_decimal(state)
    return (second % np.uint32(10000)).astype(np.float64) / 10000.0


def choose_variant_batch(
    buckets: npt.NDArray[np.float64], ranges: Sequence[tuple[float, float]]
) -> npt.NDArray[np.int64]:
    """Vectorised :func:`choose_variant`.

    Parameters
    ----------
    buckets : numpy.ndarray of float64
        Buckets, as returned by :func:`bucket_batch`.
    ranges : sequence of tuple of (float, float)
        Half-open ``(start, end)`` ranges, as returned by :func:`bucket_ranges`.

    Returns
    -------
    numpy.ndarray of int64
        For each bucket, the index of the first range containing it, or ``-1``.
    """
    values = np.asarray(buckets, dtype=np.float64)
    result = np.full(values.shape, -1, dtype=np.int64)
    # Assign from the last range to the first so that the first match wins.
    for i in range(len(ranges) - 1, -1, -1):
        start, end = ranges[i]
        result[(values >= start) & (values < end)] = i
    return result
