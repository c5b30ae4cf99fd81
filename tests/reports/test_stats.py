"""Tests of reports.stats against independent oracles (scipy, statsmodels, numpy)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats as sps
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from reports.stats import SRM_ALPHA, Comparison, Estimate, compare, estimate, srm_test
from reports.sufficient import (
    MeanStats,
    RatioStats,
    mean_stats_from_values,
    ratio_stats_from_values,
)

RTOL = 1e-10
Z975 = sps.norm.ppf(0.975)


# ---------------------------------------------------------------------------
# Data generators (seeded)
# ---------------------------------------------------------------------------


def _normal_pair(seed: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    return rng.normal(10.3, 2.0, size=317), rng.normal(10.0, 5.0, size=541)


def _proportion_pair(seed: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    a = (rng.random(2_003) < 0.12).astype(float)
    b = (rng.random(1_989) < 0.10).astype(float)
    return a, b


def _revenue_pair(seed: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    # Revenue-like: most users spend nothing, buyers spend lognormal amounts.
    rng = np.random.default_rng(seed)
    a = (rng.random(1_500) < 0.3) * rng.lognormal(3.0, 1.2, size=1_500)
    b = (rng.random(1_700) < 0.25) * rng.lognormal(3.1, 1.0, size=1_700)
    return a, b


PAIRS = {
    "normal": _normal_pair,
    "proportion": _proportion_pair,
    "lognormal_revenue": _revenue_pair,
}


def _is_clean(value: object) -> bool:
    """True if ``value`` contains no NaN/inf float anywhere (None is fine)."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_is_clean(v) for v in value)
    if dataclasses.is_dataclass(value):
        return all(_is_clean(getattr(value, f.name)) for f in dataclasses.fields(value))
    raise AssertionError(f"unexpected type {type(value)}")


# ---------------------------------------------------------------------------
# Mean / proportion metrics: Welch vs scipy + statsmodels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_matches_scipy_and_statsmodels(kind: str, seed: int) -> None:
    a, b = PAIRS[kind](seed)
    result = compare(mean_stats_from_values(a), mean_stats_from_values(b))

    ref = sps.ttest_ind(a, b, equal_var=False)
    lo, hi = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(usevar="unequal")

    assert result.note is None
    assert result.diff == pytest.approx(a.mean() - b.mean(), rel=RTOL)
    assert result.p_value == pytest.approx(ref.pvalue, rel=RTOL)
    assert result.diff_ci is not None
    np.testing.assert_allclose(result.diff_ci, (lo, hi), rtol=RTOL)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.2])
def test_welch_ci_respects_alpha(alpha: float) -> None:
    a, b = _revenue_pair(7)
    result = compare(mean_stats_from_values(a), mean_stats_from_values(b), alpha=alpha)
    expected = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(
        alpha=alpha, usevar="unequal"
    )
    assert result.diff_ci is not None
    np.testing.assert_allclose(result.diff_ci, expected, rtol=RTOL)


# scipy warns about its own precision on the constant arm; the result is still exact.
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_welch_with_one_constant_arm_matches_scipy() -> None:
    # Only one arm has zero variance: Welch is still well defined, df = n_other - 1.
    a = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 2.5])
    b = np.full(9, 2.0)
    result = compare(mean_stats_from_values(a), mean_stats_from_values(b))
    ref = sps.ttest_ind(a, b, equal_var=False)
    lo, hi = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(usevar="unequal")
    assert result.note is None
    assert result.p_value == pytest.approx(ref.pvalue, rel=RTOL)
    assert result.diff_ci is not None
    np.testing.assert_allclose(result.diff_ci, (lo, hi), rtol=RTOL)


def test_welch_hand_computed_example() -> None:
    a = [1.0, 2.0, 3.0, 4.0]  # treatment
    b = [2.0, 4.0, 6.0, 8.0, 10.0]  # baseline
    # By hand:
    #   mean_a = 10/4 = 2.5        var_a = (2.25+0.25+0.25+2.25)/3 = 5/3
    #   mean_b = 30/5 = 6          var_b = (16+4+0+4+16)/4       = 10
    #   v_a = var_a/n_a = 5/12     v_b = var_b/n_b = 10/5 = 2
    #   diff = 2.5 - 6 = -3.5
    #   se   = sqrt(5/12 + 2) = sqrt(29/12) = 1.5545631755148...
    #   t    = -3.5 / 1.55456... = -2.2514363231593...
    #   df   = (29/12)^2 / ((5/12)^2/3 + 2^2/4) = (841/144)/(457/432)
    #        = 2523/457 = 5.5207877461706...
    #   t_{0.975, df} = 2.4993310929466...  (scipy.stats.t.ppf)
    #   CI   = -3.5 -/+ 2.49933109 * 1.55456318 = (-7.3853680805, 0.3853680805)
    #   p    = 2 * t.sf(2.25143632, df) = 0.0691335931923...
    #   lift = 2.5/6 - 1 = -7/12 = -0.583333...
    #   var(lift) = v_a/m_b^2 + m_a^2 v_b/m_b^4 = (5/12)/36 + 6.25*2/1296
    #             = 0.0212191358024691...   ->  se 0.1456678955791877...
    ms_a, ms_b = mean_stats_from_values(a), mean_stats_from_values(b)
    assert ms_a.mean == 2.5 and ms_b.mean == 6.0
    assert ms_a.variance == pytest.approx(5 / 3, rel=1e-14)
    assert ms_b.variance == pytest.approx(10.0, rel=1e-14)
    assert ms_a.se_mean == pytest.approx(math.sqrt(5 / 12), rel=1e-14)

    df = 2523 / 457
    se = math.sqrt(29 / 12)
    t_crit = sps.t.ppf(0.975, df)
    assert df == pytest.approx(5.5207877461706, rel=1e-12)
    assert se == pytest.approx(1.5545631755148, rel=1e-12)
    assert t_crit == pytest.approx(2.4993310929466, rel=1e-12)

    result = compare(ms_a, ms_b)
    assert result.diff == -3.5
    assert result.p_value == pytest.approx(2 * sps.t.sf(3.5 / se, df), rel=1e-12)
    assert result.p_value == pytest.approx(0.0691335931923, rel=1e-10)
    assert result.diff_ci is not None
    np.testing.assert_allclose(result.diff_ci, (-7.3853680805, 0.3853680805), rtol=1e-10)
    np.testing.assert_allclose(result.diff_ci, (-3.5 - t_crit * se, -3.5 + t_crit * se), rtol=1e-12)
    assert result.rel_lift == pytest.approx(-7 / 12, rel=1e-14)
    lift_se = math.sqrt((5 / 12) / 36 + 6.25 * 2 / 1296)
    assert lift_se == pytest.approx(0.1456678955791877, rel=1e-12)
    assert result.rel_lift_ci is not None
    np.testing.assert_allclose(
        result.rel_lift_ci, (-7 / 12 - Z975 * lift_se, -7 / 12 + Z975 * lift_se), rtol=1e-12
    )
    assert result.note is None


@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_single_arm_estimate_matches_statsmodels(kind: str, alpha: float) -> None:
    a, _ = PAIRS[kind](11)
    est = estimate(mean_stats_from_values(a), alpha=alpha)
    ref = DescrStatsW(a)
    assert est.n == a.size
    assert est.note is None
    assert est.value == pytest.approx(a.mean(), rel=RTOL)
    assert est.se == pytest.approx(ref.std_mean, rel=RTOL)
    assert est.ci is not None
    np.testing.assert_allclose(est.ci, ref.tconfint_mean(alpha=alpha), rtol=RTOL)


def test_mean_stats_properties_match_numpy() -> None:
    a, _ = _revenue_pair(5)
    ms = mean_stats_from_values(a)
    assert ms.n == a.size
    assert ms.mean == pytest.approx(np.mean(a), rel=RTOL)
    assert ms.variance == pytest.approx(np.var(a, ddof=1), rel=RTOL)
    assert ms.se_mean == pytest.approx(np.std(a, ddof=1) / math.sqrt(a.size), rel=RTOL)


def test_proportion_stats_have_total_sq_equal_total() -> None:
    a, _ = _proportion_pair(3)
    ms = mean_stats_from_values(a)
    assert ms.total_sq == ms.total == a.sum()


# ---------------------------------------------------------------------------
# Ratio metrics: delta method
# ---------------------------------------------------------------------------


def _clicks_impressions(
    rng: np.random.Generator, n: int, ctr: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    impressions = 1 + rng.poisson(4.0, size=n)
    clicks = rng.binomial(impressions, ctr)
    return clicks.astype(float), impressions.astype(float)


def _numpy_delta_se(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """Direct delta method on the raw per-unit arrays (independent of reports.stats)."""
    n = x.size
    mu_x, mu_y = x.mean(), y.mean()
    grad = np.array([1.0 / mu_y, -mu_x / mu_y**2])
    cov_of_means = np.cov(x, y) / n  # ddof=1 sample covariance matrix / n
    return float(np.sqrt(grad @ cov_of_means @ grad))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ratio_se_matches_numpy_delta_method(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = _clicks_impressions(rng, 1_000, 0.07)
    rs = ratio_stats_from_values(x, y)
    se = _numpy_delta_se(x, y)

    assert rs.ratio == pytest.approx(x.sum() / y.sum(), rel=RTOL)
    assert rs.se_ratio == pytest.approx(se, rel=RTOL)

    est = estimate(rs)
    assert est.note is None
    assert est.se == pytest.approx(se, rel=RTOL)
    assert est.ci is not None
    r = x.sum() / y.sum()
    np.testing.assert_allclose(est.ci, (r - Z975 * se, r + Z975 * se), rtol=RTOL)


def test_ratio_compare_matches_numpy_z_test() -> None:
    rng = np.random.default_rng(42)
    xt, yt = _clicks_impressions(rng, 3_000, 0.075)
    xc, yc = _clicks_impressions(rng, 2_800, 0.07)
    result = compare(ratio_stats_from_values(xt, yt), ratio_stats_from_values(xc, yc))

    rt, rc = xt.sum() / yt.sum(), xc.sum() / yc.sum()
    se_t, se_c = _numpy_delta_se(xt, yt), _numpy_delta_se(xc, yc)
    se = math.hypot(se_t, se_c)
    diff = rt - rc
    p = 2 * sps.norm.sf(abs(diff) / se)

    assert result.note is None
    assert result.diff == pytest.approx(diff, rel=RTOL)
    assert result.p_value == pytest.approx(p, rel=RTOL)
    assert result.diff_ci is not None
    np.testing.assert_allclose(result.diff_ci, (diff - Z975 * se, diff + Z975 * se), rtol=RTOL)
    lift_se = math.sqrt(se_t**2 / rc**2 + rt**2 * se_c**2 / rc**4)
    assert result.rel_lift == pytest.approx(rt / rc - 1, rel=RTOL)
    assert result.rel_lift_ci is not None
    np.testing.assert_allclose(
        result.rel_lift_ci,
        (rt / rc - 1 - Z975 * lift_se, rt / rc - 1 + Z975 * lift_se),
        rtol=RTOL,
    )


# Coverage simulations. With R = 2,000 independent replications and a true
# coverage of 0.95, the observed share is Binomial(R, 0.95)/R with Monte Carlo
# standard error sqrt(0.95 * 0.05 / 2000) = sqrt(2.375e-5) ~= 0.004873, so a
# correct 95% interval lands within 4 MC SE (~0.0195) of 0.95 with probability
# > 0.9999; the seeds are fixed, so the tests are deterministic.
N_REPS = 2_000
MC_SE = math.sqrt(0.95 * 0.05 / N_REPS)


def test_ratio_ci_coverage_by_simulation() -> None:
    true_ratio = 0.1  # E[clicks] / E[impressions] = ctr for clicks ~ Bin(impr, ctr)
    n_units = 300
    rng = np.random.default_rng(20240601)
    impressions = (1 + rng.poisson(4.0, size=(N_REPS, n_units))).astype(float)
    clicks = rng.binomial(impressions.astype(np.int64), true_ratio).astype(float)

    covered = 0
    for x, y in zip(clicks, impressions, strict=True):
        rs = RatioStats(
            n=n_units,
            num=float(x.sum()),
            den=float(y.sum()),
            num_sq=float(x @ x),
            den_sq=float(y @ y),
            num_den=float(x @ y),
        )
        ci = estimate(rs).ci
        assert ci is not None
        covered += ci[0] <= true_ratio <= ci[1]
    coverage = covered / N_REPS
    assert abs(coverage - 0.95) < 4 * MC_SE, coverage


def test_relative_lift_ci_coverage_by_simulation() -> None:
    # Skewed (exponential) revenue-like values, means 11 (treatment) vs 10 (baseline).
    true_lift = 11.0 / 10.0 - 1.0  # = 0.1
    n_t, n_c = 400, 500
    rng = np.random.default_rng(777)
    treat = rng.exponential(11.0, size=(N_REPS, n_t))
    base = rng.exponential(10.0, size=(N_REPS, n_c))
    sums_t, sumsq_t = treat.sum(axis=1), (treat**2).sum(axis=1)
    sums_c, sumsq_c = base.sum(axis=1), (base**2).sum(axis=1)

    covered_lift = covered_diff = 0
    for st, sst, sc, ssc in zip(sums_t, sumsq_t, sums_c, sumsq_c, strict=True):
        res = compare(MeanStats(n_t, float(st), float(sst)), MeanStats(n_c, float(sc), float(ssc)))
        assert res.rel_lift_ci is not None and res.diff_ci is not None
        covered_lift += res.rel_lift_ci[0] <= true_lift <= res.rel_lift_ci[1]
        covered_diff += res.diff_ci[0] <= 1.0 <= res.diff_ci[1]
    assert abs(covered_lift / N_REPS - 0.95) < 4 * MC_SE, covered_lift / N_REPS
    assert abs(covered_diff / N_REPS - 0.95) < 4 * MC_SE, covered_diff / N_REPS


# ---------------------------------------------------------------------------
# Sample ratio mismatch
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed", "weights"),
    [
        ([5_000, 5_400], [0.5, 0.5]),
        ([5_000, 5_050], [0.5, 0.5]),
        ([5_000, 2_500, 2_480], [0.5, 0.25, 0.25]),
        ([7_012, 1_985, 1_003], [0.7, 0.2, 0.1]),
    ],
)
def test_srm_matches_scipy_chisquare(observed: list[int], weights: list[float]) -> None:
    f_exp = np.array(weights) / sum(weights) * sum(observed)
    ref = sps.chisquare(observed, f_exp)
    result = srm_test(observed, weights)
    assert result.chi2 == pytest.approx(ref.statistic, rel=RTOL)
    assert result.p_value == pytest.approx(ref.pvalue, rel=RTOL)
    np.testing.assert_allclose(result.expected, f_exp, rtol=RTOL)
    assert result.mismatch == (ref.pvalue < SRM_ALPHA)


def test_srm_flags_obvious_mismatch() -> None:
    # chi2 = 2 * 200^2 / 5200 = 15.38, p = 8.8e-5 < 0.001
    result = srm_test([5_000, 5_400], [0.5, 0.5])
    assert result.expected == (5_200.0, 5_200.0)
    assert result.chi2 == pytest.approx(2 * 200**2 / 5_200, rel=1e-14)
    assert result.p_value < SRM_ALPHA
    assert result.mismatch is True


def test_srm_balanced_split_passes() -> None:
    result = srm_test([5_000, 5_050], [0.5, 0.5])
    assert result.p_value > 0.5
    assert result.mismatch is False


def test_srm_three_arms_unequal_weights() -> None:
    # 50/30/20 split with 10,000 units: expected 5000/3000/2000.
    ok = srm_test([5_030, 2_990, 1_980], [5, 3, 2])
    assert ok.expected == pytest.approx((5_000.0, 3_000.0, 2_000.0))
    assert ok.mismatch is False
    bad = srm_test([5_000, 3_200, 1_800], [5, 3, 2])
    assert bad.mismatch is True
    # Weights are normalised: fractions and integers give the same answer.
    assert srm_test([5_030, 2_990, 1_980], [0.5, 0.3, 0.2]).p_value == pytest.approx(
        ok.p_value, rel=1e-12
    )


def test_srm_alpha_is_overridable() -> None:
    assert SRM_ALPHA == 0.001
    result = srm_test([5_000, 5_200], [1, 1])  # p ~= 0.048
    assert result.mismatch is False
    assert srm_test([5_000, 5_200], [1, 1], alpha=0.05).mismatch is True


def test_srm_no_units() -> None:
    result = srm_test([0, 0], [0.5, 0.5])
    assert (result.chi2, result.p_value, result.mismatch) == (0.0, 1.0, False)
    assert result.expected == (0.0, 0.0)
    assert result.note == "no units observed"


@pytest.mark.parametrize(
    ("observed", "weights", "message"),
    [
        ([10, 10], [1.0], "differ in length"),
        ([10], [1.0], "at least 2 variants"),
        ([10, -1], [1.0, 1.0], "must be >= 0"),
        ([10, 10], [1.0, 0.0], "weights must be > 0"),
        ([10, 10], [1e300, 1e-300], "too unequal"),
    ],
)
def test_srm_rejects_invalid_input(observed: list[int], weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        srm_test(observed, weights)


# ---------------------------------------------------------------------------
# Degenerate inputs: clear answers, never NaN/inf/exceptions
# ---------------------------------------------------------------------------


def test_estimate_zero_units() -> None:
    est = estimate(MeanStats(0, 0.0, 0.0))
    assert est == Estimate(None, None, None, 0, "needs at least 2 units (got 0)")
    assert MeanStats(0, 0.0, 0.0).mean is None


def test_estimate_one_unit_gives_value_only() -> None:
    est = estimate(mean_stats_from_values([42.0]))
    assert est == Estimate(42.0, None, None, 1, "needs at least 2 units (got 1)")
    ms = mean_stats_from_values([42.0])
    assert (ms.variance, ms.se_mean) == (None, None)


def test_estimate_zero_variance() -> None:
    est = estimate(mean_stats_from_values([3.0, 3.0, 3.0]))
    assert est == Estimate(3.0, 0.0, (3.0, 3.0), 3, "zero variance")


def test_variance_rounding_noise_is_clamped_to_zero() -> None:
    # total^2/n = 0.1 but total_sq is a hair smaller, as float rounding in SQL can do.
    ms = MeanStats(n=10, total=1.0, total_sq=0.1 * (1 - 1e-13))
    assert ms.variance == 0.0
    assert estimate(ms).note == "zero variance"


def test_compare_arm_with_one_unit() -> None:
    res = compare(mean_stats_from_values([5.0]), mean_stats_from_values([1.0, 3.0]))
    assert res == Comparison(
        diff=3.0,
        diff_ci=None,
        rel_lift=pytest.approx(1.5),  # type: ignore[arg-type]
        rel_lift_ci=None,
        p_value=None,
        note="treatment needs at least 2 units (got 1)",
    )


def test_compare_arm_with_zero_units() -> None:
    res = compare(mean_stats_from_values([1.0, 2.0]), MeanStats(0, 0.0, 0.0))
    assert res == Comparison(
        None, None, None, None, None, "baseline needs at least 2 units (got 0)"
    )
    both = compare(MeanStats(0, 0.0, 0.0), MeanStats(1, 1.0, 1.0))
    assert both.diff is None
    assert both.note == (
        "treatment needs at least 2 units (got 0); baseline needs at least 2 units (got 1)"
    )


def test_compare_zero_variance_equal() -> None:
    res = compare(mean_stats_from_values([3.0] * 3), mean_stats_from_values([3.0] * 4))
    assert res == Comparison(0.0, (0.0, 0.0), 0.0, (0.0, 0.0), 1.0, "zero variance")


def test_compare_zero_variance_different() -> None:
    res = compare(mean_stats_from_values([4.0, 4.0]), mean_stats_from_values([2.0] * 3))
    assert res == Comparison(2.0, (2.0, 2.0), 1.0, (1.0, 1.0), 0.0, "zero variance")


def test_compare_constant_arms_equal_up_to_rounding() -> None:
    # 0.1 is not representable: 3 x 0.1 sums to 0.30000000000000004, so the
    # raw means differ by ~1e-17 and the one-pass variance is ~1e-18, both noise.
    t, c = mean_stats_from_values([0.1] * 3), mean_stats_from_values([0.1] * 4)
    assert t.mean != c.mean
    assert t.variance == 0.0
    res = compare(t, c)
    assert res == Comparison(0.0, (0.0, 0.0), 0.0, (0.0, 0.0), 1.0, "zero variance")
    revenue = compare(mean_stats_from_values([9.99] * 1_000), mean_stats_from_values([9.99] * 777))
    assert (revenue.diff, revenue.p_value, revenue.note) == (0.0, 1.0, "zero variance")


def test_compare_all_zero_conversions() -> None:
    zeros = mean_stats_from_values(np.zeros(1_000))
    res = compare(zeros, zeros)
    assert res.diff == 0.0
    assert res.diff_ci == (0.0, 0.0)
    assert res.p_value == 1.0
    assert (res.rel_lift, res.rel_lift_ci) == (None, None)
    assert res.note == "zero variance; baseline value is 0: relative lift undefined"
    assert estimate(zeros) == Estimate(0.0, 0.0, (0.0, 0.0), 1_000, "zero variance")


def test_compare_zero_baseline_mean_with_variance() -> None:
    t, c = np.array([1.0, 2.0, 0.5]), np.array([-1.0, 1.0, 0.0])
    res = compare(mean_stats_from_values(t), mean_stats_from_values(c))
    assert res.p_value == pytest.approx(sps.ttest_ind(t, c, equal_var=False).pvalue, rel=RTOL)
    assert res.diff_ci is not None
    assert (res.rel_lift, res.rel_lift_ci) == (None, None)
    assert res.note == "baseline value is 0: relative lift undefined"


def test_ratio_zero_denominator() -> None:
    empty = ratio_stats_from_values([0.0, 0.0], [0.0, 0.0])
    assert (empty.ratio, empty.se_ratio) == (None, None)
    assert estimate(empty) == Estimate(
        None, None, None, 2, "ratio undefined: total denominator is 0"
    )
    ok = ratio_stats_from_values([1.0, 2.0, 0.0], [10.0, 12.0, 9.0])
    res = compare(ok, empty)
    assert res == Comparison(
        None, None, None, None, None, "baseline ratio undefined: total denominator is 0"
    )


def test_ratio_zero_and_one_units() -> None:
    none = RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert estimate(none) == Estimate(None, None, None, 0, "needs at least 2 units (got 0)")
    one = ratio_stats_from_values([3.0], [10.0])
    assert estimate(one) == Estimate(0.3, None, None, 1, "needs at least 2 units (got 1)")
    res = compare(one, ratio_stats_from_values([1.0, 2.0], [10.0, 10.0]))
    assert res.diff == pytest.approx(0.15)
    assert (res.diff_ci, res.p_value) == (None, None)
    assert res.note == "treatment needs at least 2 units (got 1)"


def test_ratio_zero_variance() -> None:
    # Every unit has exactly ctr 0.1, so x - R*y == 0 for all units.
    a = ratio_stats_from_values([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])
    b = ratio_stats_from_values([2.0, 4.0], [10.0, 20.0])
    assert a.se_ratio == 0.0
    assert estimate(a).note == "zero variance"
    res = compare(b, a)
    assert res.diff == pytest.approx(0.1)
    assert res.diff_ci == (res.diff, res.diff)
    assert res.p_value == 0.0
    assert res.note == "zero variance"


DEGENERATE_MEAN = [
    MeanStats(0, 0.0, 0.0),
    MeanStats(1, 0.0, 0.0),
    MeanStats(1, 5.0, 25.0),
    MeanStats(2, 0.0, 0.0),
    MeanStats(3, 3.0, 3.0),
    MeanStats(50, 7.0, 7.0),
    MeanStats(2, 1e150, 5e299),
    MeanStats(2, 0.0, 1.7e308),  # variance near float max
    MeanStats(2, 2e-300, 0.0),  # mean near float min
]
DEGENERATE_RATIO = [
    RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0),
    RatioStats(1, 1.0, 2.0, 1.0, 4.0, 2.0),
    RatioStats(2, 0.0, 0.0, 0.0, 0.0, 0.0),
    RatioStats(2, 1.0, 0.0, 1.0, 0.0, 0.0),
    RatioStats(3, 0.0, 5.0, 0.0, 9.0, 0.0),
    RatioStats(2, 2.0, 4.0, 2.0, 8.0, 4.0),
    ratio_stats_from_values([1e5, -1e5], [7e-150, 7e-150]),  # delta variance overflows
    ratio_stats_from_values([1.0, 3.0], [5e-324, 0.0]),  # subnormal denominator
]


@pytest.mark.parametrize("alpha", [0.05, 1e-300])
@pytest.mark.parametrize("t", DEGENERATE_MEAN)
@pytest.mark.parametrize("c", DEGENERATE_MEAN)
def test_degenerate_mean_pairs_never_nan(t: MeanStats, c: MeanStats, alpha: float) -> None:
    assert _is_clean(estimate(t, alpha))
    assert _is_clean(compare(t, c, alpha))


@pytest.mark.parametrize("alpha", [0.05, 1e-300])
@pytest.mark.parametrize("t", DEGENERATE_RATIO)
@pytest.mark.parametrize("c", DEGENERATE_RATIO)
def test_degenerate_ratio_pairs_never_nan(t: RatioStats, c: RatioStats, alpha: float) -> None:
    assert _is_clean(estimate(t, alpha))
    assert _is_clean(compare(t, c, alpha))


def test_overflow_is_reported_not_returned() -> None:
    # Delta variance (sum (x - R y)^2 / n) / mu_y^2 exceeds float64 for a tiny mu_y.
    rs = ratio_stats_from_values([1e5, -1e5], [7e-150, 7e-150])
    overflow = "non-finite intermediate result (numerical overflow)"
    assert estimate(rs) == Estimate(0.0, None, None, 2, overflow)
    res = compare(rs, ratio_stats_from_values([1.0, 2.0], [3.0, 4.0]))
    assert (res.diff_ci, res.p_value, res.note) == (None, None, overflow)
    # Relative lift over a ~1e-300 baseline overflows; the difference does not.
    wide, tiny = MeanStats(2, 0.0, 2.0), MeanStats(2, 2e-300, 0.0)
    lift = compare(wide, tiny)
    assert lift.diff == pytest.approx(-1e-300)
    assert lift.p_value == 1.0
    assert lift.rel_lift == -1.0
    assert (lift.rel_lift_ci, lift.note) == (None, overflow)


def test_tiny_alpha_uses_lower_tail_quantile() -> None:
    # 1 - 1e-300/2 rounds to 1.0, where the upper-tail quantile would be infinite;
    # the critical value must equal the (finite) lower-tail one, -t_{alpha/2}.
    alpha = 1e-300
    a, b = _normal_pair(4)
    est = estimate(mean_stats_from_values(a), alpha=alpha)
    assert est.ci is not None and est.se is not None
    crit = (est.ci[1] - est.ci[0]) / 2 / est.se
    assert crit == pytest.approx(-sps.t.ppf(alpha / 2, a.size - 1), rel=1e-10)

    res = compare(mean_stats_from_values(a), mean_stats_from_values(b), alpha=alpha)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert res.diff_ci is not None
    se = res.diff / ref.statistic
    crit = (res.diff_ci[1] - res.diff_ci[0]) / 2 / se
    assert crit == pytest.approx(-sps.t.ppf(alpha / 2, ref.df), rel=1e-10)


# ---------------------------------------------------------------------------
# Types and validation
# ---------------------------------------------------------------------------


def test_mixed_types_raise_type_error() -> None:
    ms = mean_stats_from_values([1.0, 2.0])
    rs = ratio_stats_from_values([1.0, 2.0], [3.0, 4.0])
    with pytest.raises(TypeError) as info:
        compare(ms, rs)
    assert str(info.value) == (
        "compare() expects treatment and baseline of the same type "
        "(both MeanStats or both RatioStats), got treatment=MeanStats, baseline=RatioStats"
    )
    with pytest.raises(TypeError, match="treatment=RatioStats, baseline=MeanStats"):
        compare(rs, ms)


def test_non_stats_inputs_raise_type_error() -> None:
    ms = mean_stats_from_values([1.0, 2.0])
    with pytest.raises(TypeError, match="baseline must be MeanStats or RatioStats, got list"):
        compare(ms, [1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="stats must be MeanStats or RatioStats, got dict"):
        estimate({})  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, float("nan")])
def test_invalid_alpha(alpha: float) -> None:
    ms = mean_stats_from_values([1.0, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        estimate(ms, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        compare(ms, ms, alpha=alpha)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n": -1, "total": 0.0, "total_sq": 0.0}, ValueError, "n must be >= 0"),
        ({"n": 2.5, "total": 0.0, "total_sq": 0.0}, TypeError, "integer count"),
        ({"n": True, "total": 0.0, "total_sq": 0.0}, TypeError, "got bool"),
        ({"n": 3, "total": float("nan"), "total_sq": 0.0}, ValueError, "finite"),
        ({"n": 3, "total": 1.0, "total_sq": float("inf")}, ValueError, "finite"),
        ({"n": 0, "total": 1.0, "total_sq": 1.0}, ValueError, "n == 0"),
        ({"n": 4, "total": 4.0, "total_sq": 3.0}, ValueError, "negative variance"),
    ],
)
def test_invalid_mean_stats(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        MeanStats(**kwargs)  # type: ignore[arg-type]


def test_invalid_ratio_stats() -> None:
    with pytest.raises(ValueError, match="correlation outside"):
        # var_x = var_y = 1 per unit but |cov| far larger.
        RatioStats(n=3, num=3.0, den=3.0, num_sq=5.0, den_sq=5.0, num_den=20.0)
    with pytest.raises(ValueError, match="num_sq must be >= 0"):
        RatioStats(n=3, num=0.0, den=3.0, num_sq=-1.0, den_sq=5.0, num_den=0.0)


def test_stats_are_frozen_and_coerced() -> None:
    ms = MeanStats(np.int64(3), np.float32(1.5), 2)  # type: ignore[arg-type]
    assert type(ms.n) is int and type(ms.total) is float and type(ms.total_sq) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        ms.n = 4  # type: ignore[misc]


def test_helpers_validate_shapes() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        mean_stats_from_values([[1.0, 2.0]])
    with pytest.raises(ValueError, match="finite"):
        mean_stats_from_values([1.0, float("nan")])
    with pytest.raises(ValueError, match="differ in length"):
        ratio_stats_from_values([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="overflow"):
        mean_stats_from_values([1e200, 1e200])
    assert mean_stats_from_values([]) == MeanStats(0, 0.0, 0.0)
