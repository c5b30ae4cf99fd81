"""Tests of the statistical methods: multiplicity, sequential, Bayes, power, CUPED.

Oracles are statsmodels / scipy calls written next to the numbers, or numerical
integration of the defining formula; Monte Carlo results get tolerances from
their standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate
from scipy import stats as sps
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from reports.bayes import LiftPrior, beta_binomial, expected_losses, normal_approximation
from reports.cuped import CovariateSums, cuped_adjust
from reports.multiple import adjust_pvalues
from reports.power import mde_at, power_at, units_per_variant
from reports.sequential import always_valid, always_valid_arrays, mixture_ratio
from reports.stats import Comparison, compare
from reports.sufficient import MeanStats, mean_stats_from_values

RTOL = 1e-10


# ---------------------------------------------------------------------------
# Multiple comparisons
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("ours", "theirs"), [("holm", "holm"), ("bh", "fdr_bh")])
@pytest.mark.parametrize("m", [1, 2, 7, 40])
def test_adjust_matches_statsmodels(ours: str, theirs: str, m: int) -> None:
    rng = np.random.default_rng(m)
    p = rng.uniform(size=m) ** 3  # many small p-values
    p[: m // 3] = p[0]  # ties
    expected = multipletests(p, alpha=0.05, method=theirs)[1]
    assert_allclose(adjust_pvalues(p, ours), expected, rtol=RTOL)


def test_adjust_rows_are_independent_families() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(5, 20)) ** 2
    got = adjust_pvalues(p, "holm")
    for row, adjusted in zip(p, got, strict=True):
        assert_allclose(adjusted, multipletests(row, method="holm")[1], rtol=RTOL)


def test_adjust_none_and_hand_values() -> None:
    p = [0.01, 0.04, 0.03]
    assert_allclose(adjust_pvalues(p, "none"), p)
    # Holm: sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04) = 0.03, 0.06, 0.06.
    assert_allclose(adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06], rtol=RTOL)
    # BH: 3*0.01/1 = 0.03; min(3*0.03/2, 3*0.04/3) = 0.04; 0.04.
    assert_allclose(adjust_pvalues(p, "bh"), [0.03, 0.04, 0.04], rtol=RTOL)
    assert adjust_pvalues([], "holm").size == 0


def test_adjust_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown correction 'bonf'; choose one of none, holm, bh"):
        adjust_pvalues([0.1], "bonf")
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        adjust_pvalues([0.1, float("nan")], "holm")


# ---------------------------------------------------------------------------
# Sequential (mSPRT)
# ---------------------------------------------------------------------------


def test_mixture_likelihood_ratio_matches_numerical_integration() -> None:
    diff, se, n, alpha, tuning = 0.012, 0.005, 3000.0, 0.05, 5000.0
    r = float(mixture_ratio(n, alpha, tuning))
    tau = math.sqrt(r) * se
    # Lambda = int N(diff; theta, se^2) N(theta; 0, tau^2) dtheta / N(diff; 0, se^2)
    numerator = integrate.quad(
        lambda th: sps.norm.pdf(diff, th, se) * sps.norm.pdf(th, 0.0, tau), -1, 1, points=[diff]
    )[0]
    expected_p = min(1.0, sps.norm.pdf(diff, 0.0, se) / numerator)
    p, half = always_valid_arrays(diff, se, n, alpha, tuning)
    assert_allclose(p, expected_p, rtol=1e-7)
    # rho^2 = (-2 log a + log(1 - 2 log a)) / n*: with a = 0.05, 2 log 20 = 5.99146...
    two_log = 2 * math.log(20)
    assert_allclose(r, (two_log + math.log(1 + two_log)) / tuning * n, rtol=RTOL)
    # At the boundary, Lambda == 1/alpha, i.e. p == alpha.
    p_edge, _ = always_valid_arrays(float(half), se, n, alpha, tuning)
    assert_allclose(p_edge, alpha, rtol=1e-9)


def test_always_valid_is_wider_than_fixed_horizon_and_consistent() -> None:
    cmp = Comparison(0.01, None, 0.1, None, None, None, se=0.004, rel_lift_se=0.04)
    res = always_valid(cmp, 2000, 0.05, 5000)
    assert res.boundary > 1.959963984540054
    lo, hi = res.diff_ci
    assert_allclose([lo, hi], [0.01 - res.boundary * 0.004, 0.01 + res.boundary * 0.004])
    assert res.rel_lift_ci is not None
    assert_allclose(res.rel_lift_ci, [0.1 - res.boundary * 0.04, 0.1 + res.boundary * 0.04])
    assert (res.p_value < 0.05) == (lo > 0 or hi < 0)


def test_always_valid_degenerate() -> None:
    def estimate(diff: float, se: float) -> Comparison:
        return Comparison(diff, None, None, None, None, None, se=se)

    assert always_valid(estimate(0.0, 0.0), 10, 0.05).p_value == 1.0
    assert always_valid(estimate(0.5, 0.0), 10, 0.05).p_value == 0.0
    with pytest.raises(ValueError, match="alpha must be in"):
        always_valid(estimate(0.1, 0.1), 10, 1.5)


# ---------------------------------------------------------------------------
# Bayes
# ---------------------------------------------------------------------------


def test_beta_binomial_chance_matches_integral() -> None:
    x_t, n_t, x_c, n_c = 130, 1000, 110, 1000
    post_t, post_c = sps.beta(1 + x_t, 1 + n_t - x_t), sps.beta(1 + x_c, 1 + n_c - x_c)
    # P(p_t > p_c) = int f_c(u) (1 - F_t(u)) du
    exact = integrate.quad(lambda u: post_c.pdf(u) * post_t.sf(u), 0, 1, limit=200)[0]
    res = beta_binomial(x_t, n_t, x_c, n_c, draws=200_000, seed=1)
    mc_se = math.sqrt(exact * (1 - exact) / 200_000)
    assert abs(res.chance_to_beat_control - exact) < 4 * mc_se
    assert (
        res.lift_interval is not None
        and res.lift_interval[0] < 130 / 110 - 1 < res.lift_interval[1]
    )
    # Seeded: the same answer twice.
    assert beta_binomial(x_t, n_t, x_c, n_c, draws=1000, seed=5) == beta_binomial(
        x_t, n_t, x_c, n_c, draws=1000, seed=5
    )


def test_beta_binomial_all_zero_conversions_is_a_coin_flip() -> None:
    res = beta_binomial(0, 500, 0, 500, draws=100_000, seed=2)
    # Identical posteriors: P = 1/2, MC SE = sqrt(0.25 / 1e5) = 0.0016.
    assert abs(res.chance_to_beat_control - 0.5) < 4 * 0.0016
    with pytest.raises(ValueError, match="treatment: need 0 <= successes <= n, got 5 of 3"):
        beta_binomial(5, 3, 0, 1)


def test_normal_approximation() -> None:
    res = normal_approximation(0.3, 0.2, 0.1, 0.05, alpha=0.05)
    assert_allclose(res.chance_to_beat_control, sps.norm.cdf(1.5), rtol=RTOL)
    assert res.lift_interval is not None
    assert_allclose(res.lift_interval, sps.norm.interval(0.95, 0.1, 0.05), rtol=RTOL)
    assert normal_approximation(0.0, 0.0, None, None).chance_to_beat_control == 0.5
    assert normal_approximation(-1.0, 0.0, None, None).chance_to_beat_control == 0.0


def test_expected_losses_match_numerical_integrals() -> None:
    for mean, sd in ((0.03, 0.02), (-0.05, 0.01), (0.0, 0.1), (0.2, 0.001)):
        law = sps.norm(mean, sd)
        lo, hi = mean - 12 * sd, mean + 12 * sd
        keep = integrate.quad(lambda x, law=law: max(x, 0.0) * law.pdf(x), lo, hi, points=[0])[0]
        ship = integrate.quad(lambda x, law=law: max(-x, 0.0) * law.pdf(x), lo, hi, points=[0])[0]
        got_ship, got_keep = expected_losses(mean, sd)
        assert_allclose([got_ship, got_keep], [ship, keep], rtol=1e-7, atol=1e-12)
    assert expected_losses(0.1, 0.0) == (0.0, 0.1)
    res = normal_approximation(0.3, 0.2, 0.1, 0.05)
    assert (res.risk_treatment, res.risk_control) == expected_losses(0.1, 0.05)


def test_beta_binomial_risk_matches_an_independent_monte_carlo() -> None:
    x_t, n_t, x_c, n_c = 130, 1000, 110, 1000
    res = beta_binomial(x_t, n_t, x_c, n_c, draws=200_000, seed=1)
    rng = np.random.default_rng(99)  # another stream than the function's
    lift = rng.beta(1 + x_t, 1 + n_t - x_t, 400_000) / rng.beta(1 + x_c, 1 + n_c - x_c, 400_000)
    lift -= 1.0
    for got, loss in (
        (res.risk_treatment, np.maximum(-lift, 0)),
        (res.risk_control, np.maximum(lift, 0)),
    ):
        # Two independent MC means: SE of the difference from both sample sizes.
        se = loss.std() * math.sqrt(1 / 200_000 + 1 / 400_000)
        assert got is not None and abs(got - loss.mean()) < 4 * se


def test_a_lift_prior_gives_the_conjugate_normal_posterior() -> None:
    # Lift estimate 0.10 with se 0.05, prior N(0, 0.02^2): precision 1/0.0004 + 1/0.0025.
    res = normal_approximation(0.3, 0.2, 0.10, 0.05, prior=LiftPrior(0.0, 0.02))
    precision = 1 / 0.02**2 + 1 / 0.05**2  # 2500 + 400 = 2900
    post_mean, post_sd = (0.10 / 0.05**2) / precision, math.sqrt(1 / precision)
    assert_allclose(post_mean, 0.0137931034482758, rtol=1e-12)  # 40 / 2900, by hand
    assert res.method == "normal with prior"
    assert_allclose(res.lift_mean, post_mean, rtol=1e-12)
    assert_allclose(res.chance_to_beat_control, sps.norm.cdf(post_mean / post_sd), rtol=1e-12)
    assert res.lift_interval is not None
    assert_allclose(res.lift_interval, sps.norm.interval(0.95, post_mean, post_sd), rtol=1e-9)
    assert (res.risk_treatment, res.risk_control) == expected_losses(post_mean, post_sd)
    # A prior that is very wide changes nothing visible; without a lift it cannot apply.
    wide = normal_approximation(0.3, 0.2, 0.10, 0.05, prior=LiftPrior(0.0, 1e6))
    assert_allclose(wide.chance_to_beat_control, sps.norm.cdf(2.0), rtol=1e-9)
    assert normal_approximation(0.3, 0.2, None, None, prior=LiftPrior(0.0, 0.02)).method == "normal"


# ---------------------------------------------------------------------------
# Power / MDE
# ---------------------------------------------------------------------------


def test_power_proportion_matches_statsmodels() -> None:
    res = units_per_variant(0.05, 0.10, alpha=0.05, power=0.8)
    # NormalIndPower().solve_power(proportion_effectsize(0.055, 0.05), alpha=0.05, power=0.8)
    #   -> 31217.4234...
    h = proportion_effectsize(0.055, 0.05)
    expected = NormalIndPower().solve_power(h, alpha=0.05, power=0.8, ratio=1.0)
    assert_allclose(res.exact_units, expected, rtol=1e-8)
    assert res.units_per_variant == 31218 == math.ceil(expected)
    absolute = units_per_variant(0.05, 0.005, absolute=True)
    assert absolute.units_per_variant == 31218


def test_power_mean_matches_statsmodels() -> None:
    res = units_per_variant(10.0, 0.5, metric_type="mean", sd=20.0, absolute=True, power=0.9)
    expected = NormalIndPower().solve_power(0.5 / 20.0, alpha=0.05, power=0.9)
    assert_allclose(res.exact_units, expected, rtol=1e-8)
    # The t-test needs about one unit more at this size (df ~ 67,000).
    t_units = TTestIndPower().solve_power(0.5 / 20.0, alpha=0.05, power=0.9)
    assert 0 < t_units - res.exact_units < 2


def test_power_at_and_mde_are_inverse() -> None:
    se = 0.01
    mde = mde_at(se, 0.05, 0.8)
    assert_allclose(mde, (1.959963984540054 + 0.8416212335729143) * se, rtol=1e-12)
    # Both tails: d sqrt(n/2) with d = mde/sigma and se = sigma sqrt(2/n) -> shift = mde/se.
    assert_allclose(power_at(mde / 1.0, 2.0 / se**2, 0.05), 0.8, rtol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline": 1.5, "mde": 0.1}, r"a proportion baseline must be in \(0, 1\), got 1.5"),
        ({"baseline": 0.9, "mde": 0.2}, "outside \\(0, 1\\); use --absolute"),
        ({"baseline": 0.1, "mde": 0.0}, "mde must be a non-zero number"),
        ({"baseline": 0.1, "mde": 0.1, "alpha": 0.0}, r"alpha must be in \(0, 1\)"),
        ({"baseline": 0.1, "mde": 0.1, "power": 0.01}, r"power must be in \(alpha, 1\)"),
        ({"baseline": 3.0, "mde": 0.1, "metric_type": "mean"}, "needs --sd"),
        ({"baseline": 3.0, "mde": 0.1, "metric_type": "median"}, "unknown metric type 'median'"),
    ],
)
def test_power_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        units_per_variant(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# CUPED
# ---------------------------------------------------------------------------


def _cuped_inputs(
    y: dict[str, np.ndarray], x: dict[str, np.ndarray]
) -> tuple[dict[str, MeanStats], dict[str, CovariateSums]]:
    stats = {k: mean_stats_from_values(v) for k, v in y.items()}
    cov = {k: CovariateSums(float(x[k].sum()), float(x[k] @ x[k]), float(x[k] @ y[k])) for k in y}
    return stats, cov


def test_cuped_matches_regression_with_group_dummy() -> None:
    rng = np.random.default_rng(8)
    x = {k: rng.gamma(2.0, 3.0, size=n) for k, n in (("c", 400), ("t", 350), ("t2", 300))}
    y = {k: 0.6 * x[k] + rng.normal(size=x[k].size) + (0.3 if k != "c" else 0.0) for k in x}
    stats, cov = _cuped_inputs(y, x)
    res = cuped_adjust(stats, cov)
    assert res.applied
    # OLS y ~ 1 + dummies + x: the slope of x is the pooled within-variant theta and a
    # dummy's coefficient is that variant's CUPED-adjusted difference from control.
    design = np.column_stack(
        [
            np.ones(1050),
            np.r_[np.zeros(400), np.ones(350), np.zeros(300)],
            np.r_[np.zeros(750), np.ones(300)],
            np.concatenate([x["c"], x["t"], x["t2"]]),
        ]
    )
    fit = OLS(np.concatenate([y["c"], y["t"], y["t2"]]), design).fit()
    assert_allclose(res.theta, fit.params[3], rtol=1e-9)
    for key, column in (("t", 1), ("t2", 2)):
        diff = compare(res.stats[key], res.stats["c"]).diff
        assert diff is not None
        assert_allclose(diff, fit.params[column], rtol=1e-9)
    # Adjusted values y - theta (x - xbar) through Welch == compare() on adjusted stats.
    x_bar = np.concatenate(list(x.values())).mean()
    adj = {k: y[k] - res.theta * (x[k] - x_bar) for k in x}
    welch = sps.ttest_ind(adj["t"], adj["c"], equal_var=False)
    got = compare(res.stats["t"], res.stats["c"])
    assert got.p_value is not None
    assert_allclose(got.p_value, welch.pvalue, rtol=1e-8)
    # Variance reduction: 1 - within SS of adjusted / within SS of raw.
    ss = lambda d: sum(((v - v.mean()) ** 2).sum() for v in d.values())  # noqa: E731
    assert_allclose(res.variance_reduction, 1 - ss(adj) / ss(y), rtol=1e-9)


def test_cuped_not_applied_without_covariate_variation_or_units() -> None:
    y = {"c": np.array([1.0, 2.0, 3.0]), "t": np.array([2.0, 2.0, 5.0])}
    stats, cov = _cuped_inputs(y, {"c": np.zeros(3), "t": np.zeros(3)})
    res = cuped_adjust(stats, cov)
    assert not res.applied and res.note == "no variation in the pre-experiment covariate"
    assert res.stats == stats and res.variance_reduction == 0.0
    one = {"c": MeanStats(1, 1.0, 1.0), "t": stats["t"]}
    res = cuped_adjust(one, cov)
    assert not res.applied and res.note == "needs at least 2 units per variant"


def test_comparison_reports_its_standard_errors() -> None:
    a, b = np.array([1.0, 4.0, 2.0, 8.0]), np.array([2.0, 3.0, 3.0])
    cmp = compare(mean_stats_from_values(a), mean_stats_from_values(b))
    assert cmp.se is not None
    assert_allclose(cmp.se, math.sqrt(a.var(ddof=1) / 4 + b.var(ddof=1) / 3), rtol=RTOL)
    assert cmp.rel_lift_ci is not None and cmp.rel_lift is not None and cmp.rel_lift_se
    assert_allclose(cmp.rel_lift_ci[1] - cmp.rel_lift, 1.959963984540054 * cmp.rel_lift_se)
