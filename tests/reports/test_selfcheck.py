"""Tests of the Monte Carlo self-check: its vectorised formulas and a small run."""

from __future__ import annotations

import json
import math

import numpy as np
from numpy.testing import assert_allclose

from reports.cuped import RatioCovariateSums, cuped_adjust_ratio
from reports.selfcheck import ratio_arrays, run_selfcheck, welch_arrays
from reports.selfcheck_methods import (
    CAP_PERCENTILE,
    CONVERSION,
    LOG_MU,
    REVENUE_LIFT,
    capped_arrays,
    capped_truth,
    ratio_cuped_arrays,
)
from reports.stats import compare
from reports.sufficient import mean_stats_from_values, ratio_stats_from_values
from tests.factories import cli


def test_vectorised_welch_and_delta_match_compare() -> None:
    rng = np.random.default_rng(4)
    for _ in range(5):
        t, c = rng.lognormal(size=37), rng.lognormal(size=52)
        st, sc = mean_stats_from_values(t), mean_stats_from_values(c)
        ref = compare(st, sc)
        got = welch_arrays(
            *(np.array([v]) for v in (st.n, st.total, st.total_sq)),
            *(np.array([v]) for v in (sc.n, sc.total, sc.total_sq)),
            0.05,
        )
        assert ref.diff_ci is not None and ref.rel_lift_ci is not None
        assert_allclose(got["p"], ref.p_value, rtol=1e-10)
        assert_allclose([got["lo"][0], got["hi"][0]], ref.diff_ci, rtol=1e-10)
        assert_allclose([got["lift_lo"][0], got["lift_hi"][0]], ref.rel_lift_ci, rtol=1e-10)

        xt, yt = rng.poisson(2, 40).astype(float), 1.0 + rng.poisson(9, 40)
        xc, yc = rng.poisson(2, 45).astype(float), 1.0 + rng.poisson(9, 45)
        rt, rc = ratio_stats_from_values(xt, yt), ratio_stats_from_values(xc, yc)
        ref = compare(rt, rc)

        def sums(r: object) -> tuple[np.ndarray, ...]:
            names = ("n", "num", "den", "num_sq", "den_sq", "num_den")
            return tuple(np.array([float(getattr(r, k))]) for k in names)

        got = ratio_arrays(sums(rt), sums(rc), 0.05)  # type: ignore[arg-type]
        assert ref.diff_ci is not None
        assert_allclose(got["p"], ref.p_value, rtol=1e-10)
        assert_allclose([got["lo"][0], got["hi"][0]], ref.diff_ci, rtol=1e-10)


def test_small_run_is_calibrated() -> None:
    reps = 600
    result = run_selfcheck(replications=reps, seed=7, units_per_variant=400)
    assert result.replications == reps and result.checks
    # With this few replications a check may miss the 3-SE band of the full run by
    # chance; 4 SE (two-sided 6e-5 per check) keeps ~20 checks from flaking.
    for check in result.checks:
        if check.relation == "info":
            continue
        se = (
            math.sqrt(check.target * (1 - check.target) / reps)
            if check.group != "CUPED"
            else check.mc_se
        )
        if check.relation == "=":
            assert abs(check.estimate - check.target) <= 4 * se, check
        elif check.relation == "<=":
            assert check.estimate <= check.target + 4 * se, check
        else:
            assert check.estimate >= check.target - 4 * se, check
    # Peeking: the naive test's FPR at 10 looks is far above alpha (~19%; 4 SE = 0.064).
    naive = next(c for c in result.checks if "naive" in c.name)
    assert naive.estimate > 0.05 + 4 * math.sqrt(0.05 * 0.95 / reps)
    json.dumps(result.to_dict(), allow_nan=False)


def test_selfcheck_cli_json() -> None:
    out = cli("selfcheck", "--replications", "50", "--seed", "3", "--json")
    assert out.returncode in (0, 1), out.stderr  # 1 = a check missed (possible at 50 reps)
    document = json.loads(out.stdout)
    assert document["replications"] == 50
    assert {"group", "name", "estimate", "mc_se", "target", "passed"} <= set(document["checks"][0])


def test_power_cli() -> None:
    out = cli(
        "power",
        "--baseline",
        "0.05",
        "--mde",
        "0.10",
        "--alpha",
        "0.05",
        "--power",
        "0.8",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    # NormalIndPower().solve_power(proportion_effectsize(0.055, 0.05), 0.05, power=0.8) = 31217.4
    assert json.loads(out.stdout)["units_per_variant"] == 31218
    bad = cli("power", "--baseline", "2", "--mde", "0.1", "--metric-type", "mean")
    assert bad.returncode == 2
    assert "a mean metric needs --sd" in bad.stderr


def test_vectorised_capping_and_ratio_cuped_match_the_analysis_code() -> None:
    rng = np.random.default_rng(8)
    # Capping: one replication, pooled numpy percentile, then the scalar Welch test.
    t, c = rng.lognormal(3, 1, size=(1, 60)), rng.lognormal(3, 1, size=(1, 70))
    got = capped_arrays(t, c, 0.05)
    cut = np.percentile(np.concatenate([t[0], c[0]]), CAP_PERCENTILE * 100)
    ref = compare(
        mean_stats_from_values(np.minimum(t[0], cut)), mean_stats_from_values(np.minimum(c[0], cut))
    )
    assert_allclose(got["p"], ref.p_value, rtol=1e-10)
    # Ratio CUPED: the vectorised slope and test equal `cuped_adjust_ratio` + `compare`.
    units = {}
    for key, size in (("t", 50), ("c", 65)):
        w = rng.uniform(0.5, 1.5, size)
        y = 1.0 + rng.poisson(9, size)
        x = rng.binomial(y.astype(int), 0.05 * w).astype(float)
        a = rng.binomial(1 + rng.poisson(9, size), 0.05 * w).astype(float)
        units[key] = (x, y, a)
    got = ratio_cuped_arrays(
        tuple(v[None, :] for v in units["t"]),  # type: ignore[arg-type]
        tuple(v[None, :] for v in units["c"]),  # type: ignore[arg-type]
        0.05,
    )
    stats = {k: ratio_stats_from_values(x, y) for k, (x, y, _) in units.items()}
    sums = {
        k: RatioCovariateSums(("a",), a=a.sum(), aa=a @ a, xa=x @ a, ya=y @ a)
        for k, (x, y, a) in units.items()
    }
    adjusted = cuped_adjust_ratio(stats, sums)
    ref = compare(adjusted.stats["t"], adjusted.stats["c"])
    assert_allclose(got["p"], ref.p_value, rtol=1e-9)
    assert ref.diff_ci is not None
    assert_allclose([got["lo"][0], got["hi"][0]], ref.diff_ci, rtol=1e-9)


def test_capped_truth_is_the_capped_mean_difference() -> None:
    # Against a large seeded Monte Carlo of the same laws at the same pooled threshold.
    rng = np.random.default_rng(3)
    size = 2_000_000
    t = rng.lognormal(LOG_MU, 1.0, size) * REVENUE_LIFT * (rng.random(size) < CONVERSION)
    c = rng.lognormal(LOG_MU, 1.0, size) * (rng.random(size) < CONVERSION)
    cut = np.percentile(np.concatenate([t, c]), CAP_PERCENTILE * 100)
    diff = np.minimum(t, cut) - np.minimum(c, cut)
    se = diff.std() / math.sqrt(size)
    assert abs(capped_truth() - diff.mean()) < 4 * se
