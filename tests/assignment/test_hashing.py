"""Tests for GrowthBook-compatible hashed bucketing (abplatform.assignment.hashing)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from abplatform.assignment.hashing import (
    HASH_ALGORITHM_VERSIONS,
    _fnv_of_decimal,
    bucket,
    bucket_batch,
    bucket_ranges,
    choose_variant,
    choose_variant_batch,
    fnv1a32,
    in_namespace,
)

CASES_PATH = Path(__file__).with_name("hashing_cases.json")
CASES: dict[str, Any] = json.loads(CASES_PATH.read_text(encoding="utf-8"))
RANGE_TOLERANCE = 1e-12


def _case_id(case: dict[str, Any]) -> str:
    if "name" in case:
        return str(case["name"])
    return f"{case['seed']!r}|{case['unit_id']!r}|v{case['version']}"


def _ranges(raw: list[list[float]]) -> list[tuple[float, float]]:
    return [(float(start), float(end)) for start, end in raw]


def _random_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Ids of mixed length (0-24 chars), ~10% of them containing non-ASCII characters."""
    ascii_alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789-_:.ABCXYZ")
    exotic_alphabet = [*ascii_alphabet, "ü", "ñ", "é", "ß", "漢", "字", "Ж", "€", "😀", "\x00"]
    lengths = rng.integers(0, 25, size=n)
    exotic = rng.random(n) < 0.1
    ids: list[str] = []
    for length, is_exotic in zip(lengths, exotic, strict=True):
        alphabet = exotic_alphabet if is_exotic else ascii_alphabet
        picks = rng.integers(0, len(alphabet), size=int(length))
        ids.append("".join(alphabet[i] for i in picks))
    return ids


# --------------------------------------------------------------------------------------
# Golden file
# --------------------------------------------------------------------------------------


def test_golden_file_has_expected_sections() -> None:
    assert "_comment" in CASES
    assert len(CASES["bucket"]) >= 40
    sourced = [c for c in CASES["bucket"] if c.get("source") == "growthbook-sdk-cases"]
    assert len(sourced) >= 8
    assert any(c["expected"] is None for c in CASES["bucket"])
    assert any(c["unit_id"] == "" for c in CASES["bucket"])
    assert any(not c["unit_id"].isascii() for c in CASES["bucket"])


@pytest.mark.parametrize("case", CASES["bucket"], ids=_case_id)
def test_bucket_golden(case: dict[str, Any]) -> None:
    assert bucket(case["seed"], case["unit_id"], case["version"]) == case["expected"]


@pytest.mark.parametrize(
    "case",
    [c for c in CASES["bucket"] if c["version"] in HASH_ALGORITHM_VERSIONS],
    ids=_case_id,
)
def test_bucket_batch_golden(case: dict[str, Any]) -> None:
    got = bucket_batch(case["seed"], [case["unit_id"]], case["version"])
    assert got.dtype == np.float64
    assert got.tolist() == [case["expected"]]


@pytest.mark.parametrize("case", CASES["bucket_ranges"], ids=_case_id)
def test_bucket_ranges_golden(case: dict[str, Any]) -> None:
    got = bucket_ranges(case["n_variants"], case["coverage"], case["weights"])
    expected = _ranges(case["expected"])
    assert len(got) == len(expected)
    for (start, end), (exp_start, exp_end) in zip(got, expected, strict=True):
        assert start == pytest.approx(exp_start, abs=RANGE_TOLERANCE)
        assert end == pytest.approx(exp_end, abs=RANGE_TOLERANCE)


@pytest.mark.parametrize("case", CASES["choose_variant"], ids=_case_id)
def test_choose_variant_golden(case: dict[str, Any]) -> None:
    ranges = _ranges(case["ranges"])
    assert choose_variant(case["n"], ranges) == case["expected"]
    batch = choose_variant_batch(np.array([case["n"]], dtype=np.float64), ranges)
    assert batch.tolist() == [case["expected"]]


@pytest.mark.parametrize("case", CASES["in_namespace"], ids=_case_id)
def test_in_namespace_golden(case: dict[str, Any]) -> None:
    name, start, end = case["namespace"]
    assert in_namespace(case["unit_id"], (name, float(start), float(end))) is case["expected"]


# --------------------------------------------------------------------------------------
# Scalar details
# --------------------------------------------------------------------------------------


def test_fnv1a32_known_values() -> None:
    assert fnv1a32("") == 0x811C9DC5
    # Standard FNV-1a 32 test vectors (ASCII, where code points == bytes).
    assert fnv1a32("a") == 0xE40C292C
    assert fnv1a32("foobar") == 0xBF9CF968


def test_fnv1a32_iterates_code_points_not_utf8_bytes() -> None:
    hval = 0x811C9DC5
    for byte in "ü".encode():
        hval = ((hval ^ byte) * 0x01000193) % 2**32
    assert fnv1a32("ü") != hval
    assert fnv1a32("ü") == ((0x811C9DC5 ^ 0xFC) * 0x01000193) % 2**32


def test_bucket_unsupported_versions_return_none() -> None:
    for version in (0, 3, 99, -1):
        assert bucket("seed", "user", version) is None


def test_bucket_ranges_offsets_not_scaled_by_coverage() -> None:
    # GrowthBook's getBucketRanges: arm i starts at the cumulative weight, not
    # coverage * cumulative weight.
    assert bucket_ranges(2, 0.5, [0.5, 0.5]) == [(0.0, 0.25), (0.5, 0.75)]


def test_choose_variant_empty_ranges() -> None:
    assert choose_variant(0.5, []) == -1
    assert choose_variant_batch(np.array([0.1, 0.9]), []).tolist() == [-1, -1]


# --------------------------------------------------------------------------------------
# Batch path == scalar path
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_bucket_batch_matches_scalar_on_random_ids(version: int) -> None:
    rng = np.random.default_rng(0)
    ids = _random_ids(rng, 20_000)
    assert any(not uid.isascii() for uid in ids)
    assert len({len(uid) for uid in ids}) > 10
    seed = "exp-ü-seed"
    expected = np.array([bucket(seed, uid, version) for uid in ids], dtype=np.float64)
    got = bucket_batch(seed, ids, version)
    assert got.dtype == np.float64
    assert got.shape == (len(ids),)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("version", [1, 2])
def test_bucket_batch_accepts_unicode_array(version: int) -> None:
    rng = np.random.default_rng(1)
    # A numpy 'U' array cannot represent trailing NULs, so keep them out of this test.
    ids = [uid.rstrip("\x00") for uid in _random_ids(rng, 2_000)]
    arr = np.array(ids, dtype=np.str_)
    expected = [bucket("s", uid, version) for uid in ids]
    assert bucket_batch("s", arr, version).tolist() == expected
    assert bucket_batch("s", arr.astype(arr.dtype.newbyteorder(">")), version).tolist() == (
        expected
    )


@pytest.mark.parametrize("version", [1, 2])
def test_bucket_batch_edge_cases(version: int) -> None:
    ids = ["", "", "a", "ü-ñ-漢", "😀", "a\x00", "\x00", "a\x00b", "\ud800", "user-1234567"]
    expected = [bucket("seed", uid, version) for uid in ids]
    assert bucket_batch("seed", ids, version).tolist() == expected
    assert bucket_batch("seed", tuple(ids), version).tolist() == expected
    assert bucket_batch("seed", ["", ""], version).tolist() == [bucket("seed", "", version)] * 2
    assert bucket_batch("seed", [], version).shape == (0,)
    assert bucket_batch("seed", np.array([], dtype=np.str_), version).shape == (0,)


def test_decimal_hash_covers_every_digit_count() -> None:
    # bucket v2 hashes str(fnv(seed + id)); check the vectorised decimal conversion on values
    # with 1..10 digits, around every power of ten and at the uint32 extremes.
    values = [0, 1, 9, 2**32 - 1, 2**31, 1_000_000_007]
    for k in range(1, 10):
        values += [10**k - 1, 10**k, 10**k + 1]
    arr = np.array(values, dtype=np.uint32)
    expected = [fnv1a32(str(v)) for v in values]
    assert _fnv_of_decimal(arr).tolist() == expected


@pytest.mark.parametrize("version", [3, 0, 99])
def test_bucket_batch_rejects_unsupported_version(version: int) -> None:
    with pytest.raises(ValueError, match=rf"\b{version}\b"):
        bucket_batch("seed", ["user-1"], version)


def test_bucket_batch_rejects_non_str_items() -> None:
    with pytest.raises(TypeError):
        bucket_batch("seed", ["user-1", 2], 1)  # type: ignore[list-item]


def test_bucket_batch_rejects_2d_array() -> None:
    with pytest.raises(ValueError):
        bucket_batch("seed", np.array([["a", "b"]]), 1)


def test_choose_variant_batch_matches_scalar() -> None:
    rng = np.random.default_rng(0)
    buckets = bucket_batch("exp", _random_ids(rng, 20_000), 2)
    # Include exact range boundaries.
    buckets = np.concatenate([buckets, [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]])
    for ranges in (
        bucket_ranges(2, 1.0, None),
        bucket_ranges(3, 0.5, [0.2, 0.3, 0.5]),
        bucket_ranges(4, 0.9, None),
        [(0.0, 0.5), (0.5, 0.5), (0.5, 1.0)],
        [(0.0, 0.6), (0.4, 1.0)],  # overlapping: the first range wins
    ):
        got = choose_variant_batch(buckets, ranges)
        expected = [choose_variant(float(b), ranges) for b in buckets]
        assert got.tolist() == expected


# --------------------------------------------------------------------------------------
# Distribution sanity
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_bucket_distribution_is_balanced(version: int) -> None:
    n = 100_000
    ids = [f"user-{i}" for i in range(n)]
    share = float(np.mean(bucket_batch("distribution-check", ids, version) < 0.5))
    # If buckets were uniform on [0, 1), each id would land in [0, 0.5) independently with
    # p = 0.5, so the share is Binomial(n, p) / n with variance p * (1 - p) / n = 0.25 / n and
    # standard error sqrt(0.25 / 100_000) ~= 0.00158. Four standard errors (~0.0063) bound a
    # two-sided false-alarm probability of ~6e-5. Exactly half of each version's discrete
    # bucket values lie below 0.5 (500 of 1000, 5000 of 10000), so p = 0.5 up to the ~1e-7
    # modulo bias of reducing a 32-bit hash mod 1000 or 10000.
    standard_error = math.sqrt(0.25 / n)
    assert abs(share - 0.5) <= 4 * standard_error
