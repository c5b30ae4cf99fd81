"""Tests of reports.analysis on real SQLite and PostgreSQL, against hand and scipy oracles."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose
from numpy.typing import NDArray
from scipy import stats as sps
from sqlalchemy import Engine
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from abplatform.config.loader import load_experiment_text
from abplatform.errors import AbplatformError, NotFoundError
from reports.aggregate import aggregate_experiment
from reports.analysis import analyze
from reports.results import AnalysisResult, MetricResult
from reports.sufficient import MeanStats, RatioStats
from tests.factories import (
    Exposure,
    add_run,
    create_experiment,
    seed_exposures,
    seed_random_experiment,
    seed_tiny,
    tiny_yaml,
)

RTOL = 1e-9

# ---------------------------------------------------------------------------
# Helpers (the seeding builders are in tests/factories.py)
# ---------------------------------------------------------------------------


def metric(result: AnalysisResult, name: str) -> MetricResult:
    """The result of one metric by name."""
    return next(mr for mr in result.metrics if mr.metric == name)


def assert_close(actual: Any, expected: Any) -> None:
    """`actual` is set and equals `expected` to RTOL (elementwise for pairs)."""
    assert actual is not None
    assert_allclose(actual, expected, rtol=RTOL)


def assert_json_clean(result: AnalysisResult) -> dict[str, Any]:
    """`to_dict()` survives strict JSON (no NaN/inf) unchanged; return it."""
    document = result.to_dict()
    text = json.dumps(document, allow_nan=False)
    assert json.loads(text) == document
    return document


# ---------------------------------------------------------------------------
# A tiny experiment computed by hand (`seed_tiny` in tests/factories.py)
# ---------------------------------------------------------------------------


def test_tiny_sufficient_statistics(engine: Engine) -> None:
    experiment_id = seed_tiny(engine)
    config = load_experiment_text(tiny_yaml())
    with engine.connect() as conn:
        agg = aggregate_experiment(
            conn, experiment_id, [v.key for v in config.variants], config.metrics
        )
    # Per unit (clicks, purchases, revenue, impressions) after the first exposure:
    #   c1 (2, 1, 20, 10)  c2 (2, 0, 0, 4)  c3 (0, 0, 0, 6)
    #   t1 (3, 2, 30, 15)  t2 (1, 1, 15.5, 10)  t3 (0, 0, 0, 3)
    assert agg.units == {"control": 3, "treatment": 3}
    assert agg.multiple_variants == 1  # x1
    assert agg.unknown_units == 1  # g1
    assert agg.unknown_variants == {"legacy": 1}
    c, t = "control", "treatment"
    # conversion: any purchase -> c (1, 0, 0), t (1, 1, 0)
    assert agg.stats["conversion"][c] == MeanStats(3, 1.0, 1.0)
    assert agg.stats["conversion"][t] == MeanStats(3, 2.0, 2.0)
    # clicks: c 2+2+0 = 4, 4+4+0 = 8; t 3+1+0 = 4, 9+1+0 = 10
    assert agg.stats["clicks_per_user"][c] == MeanStats(3, 4.0, 8.0)
    assert agg.stats["clicks_per_user"][t] == MeanStats(3, 4.0, 10.0)
    # revenue: c 20, 20^2 = 400; t 30+15.5 = 45.5, 900+240.25 = 1140.25
    assert agg.stats["revenue_per_user"][c] == MeanStats(3, 20.0, 400.0)
    assert agg.stats["revenue_per_user"][t] == MeanStats(3, 45.5, 1140.25)
    # ctr = clicks / impressions:
    #   c num 4, den 10+4+6 = 20, num_sq 8, den_sq 100+16+36 = 152, num_den 2*10+2*4 = 28
    #   t num 4, den 15+10+3 = 28, num_sq 10, den_sq 225+100+9 = 334, num_den 3*15+1*10 = 55
    assert agg.stats["ctr"][c] == RatioStats(3, 4.0, 20.0, 8.0, 152.0, 28.0)
    assert agg.stats["ctr"][t] == RatioStats(3, 4.0, 28.0, 10.0, 334.0, 55.0)
    # order_value = revenue / purchases:
    #   c num 20, den 1, num_sq 400, den_sq 1, num_den 20*1 = 20
    #   t num 45.5, den 2+1 = 3, num_sq 1140.25, den_sq 4+1 = 5, num_den 30*2+15.5*1 = 75.5
    assert agg.stats["order_value"][c] == RatioStats(3, 20.0, 1.0, 400.0, 1.0, 20.0)
    assert agg.stats["order_value"][t] == RatioStats(3, 45.5, 3.0, 1140.25, 5.0, 75.5)


def test_tiny_analysis(engine: Engine) -> None:
    experiment_id = seed_tiny(engine)
    run_id = add_run(
        engine,
        experiment_id,
        "running",
        {"metrics": {"ctr": {"control": 0.19, "treatment": 0.15}}, "note": "oracle"},
    )
    result = analyze(engine, "tiny")
    document = assert_json_clean(result)

    assert document["experiment"] == "tiny"
    assert document["description"] == "hand-made"
    assert document["control"] == "control"
    assert document["alpha"] == 0.05
    assert document["units"] == {"control": 3, "treatment": 3}
    assert document["excluded_units"] == {"multiple_variants": 1}
    # 3 vs 3 with weights 0.5/0.5: chi2 = 0, p = 1.
    assert document["srm"] == {
        "p_value": 1.0,
        "chi2": 0.0,
        "mismatch": False,
        "observed": {"control": 3, "treatment": 3},
        "expected": {"control": 3.0, "treatment": 3.0},
    }
    assert document["run"] == {"id": run_id, "seed": 1234, "status": "running"}
    warnings = " | ".join(document["warnings"])
    assert "status 'running'" in warnings
    assert (
        "left out of every metric: 1 unit exposed only to variants that are not in the "
        "config (legacy (1 unit))"
    ) in warnings
    assert "left out of every metric: 1 unit exposed to more than one variant" in warnings
    assert [mr["metric"] for mr in document["metrics"]] == [
        "conversion",
        "clicks_per_user",
        "revenue_per_user",
        "ctr",
        "order_value",
    ]
    assert [mr["type"] for mr in document["metrics"]] == [
        "proportion",
        "mean",
        "mean",
        "ratio",
        "ratio",
    ]

    t975_2 = sps.t.ppf(0.975, 2)
    z975 = sps.norm.ppf(0.975)
    # clicks control: values (2, 2, 0): mean 4/3, s^2 = (8 - 16/3) / 2 = 4/3, se = sqrt(4/9) = 2/3
    clicks = metric(result, "clicks_per_user")
    control = clicks.variants[0]
    assert (control.variant, control.units) == ("control", 3)
    assert_close(control.mean, 4 / 3)
    assert control.ci is not None
    assert_close(control.ci, [4 / 3 - t975_2 * 2 / 3, 4 / 3 + t975_2 * 2 / 3])
    # clicks treatment: (3, 1, 0): mean 4/3, s^2 = (10 - 16/3) / 2 = 7/3
    treatment = clicks.variants[1]
    assert_close(treatment.mean, 4 / 3)
    assert treatment.ci is not None
    half = t975_2 * math.sqrt(7 / 3 / 3)
    assert_close(treatment.ci, [4 / 3 - half, 4 / 3 + half])
    (cmp,) = clicks.comparisons
    assert (cmp.variant, cmp.baseline) == ("treatment", "control")
    assert cmp.diff == pytest.approx(0.0, abs=1e-12)
    assert cmp.p_value == pytest.approx(1.0)
    assert cmp.significant is False

    # conversion: control 1/3, treatment 2/3
    conversion = metric(result, "conversion")
    assert_close([v.mean for v in conversion.variants], [1 / 3, 2 / 3])
    # revenue: control 20/3, treatment 45.5/3
    revenue = metric(result, "revenue_per_user")
    assert_close([v.mean for v in revenue.variants], [20 / 3, 45.5 / 3])

    # ctr: ratio of totals 4/20 and 4/28; delta-method se of the control:
    #   mu_x = 4/3, mu_y = 20/3, R = 0.2, s_x^2 = 4/3, s_y^2 = (152 - 400/3)/2 = 28/3,
    #   s_xy = (28 - 80/3)/2 = 2/3, var = (4/3 - 2*0.2*2/3 + 0.04*28/3) / (3 * (20/3)^2)
    ctr = metric(result, "ctr")
    assert_close([v.mean for v in ctr.variants], [0.2, 4 / 28])
    var_c = (4 / 3 - 2 * 0.2 * 2 / 3 + 0.04 * 28 / 3) / (3 * (20 / 3) ** 2)
    assert ctr.variants[0].ci is not None
    assert_close(
        ctr.variants[0].ci,
        [0.2 - z975 * math.sqrt(var_c), 0.2 + z975 * math.sqrt(var_c)],
    )
    assert ctr.ground_truth == {"control": 0.19, "treatment": 0.15}
    assert conversion.ground_truth is None

    # order_value: control 20/1 (one unit bought), treatment 45.5/3
    order_value = metric(result, "order_value")
    assert_close([v.mean for v in order_value.variants], [20.0, 45.5 / 3])


def test_tiny_without_run(engine: Engine) -> None:
    seed_tiny(engine)
    document = assert_json_clean(analyze(engine, "tiny", alpha=0.1))
    assert document["run"] is None
    assert document["alpha"] == 0.1
    assert all(mr["ground_truth"] is None for mr in document["metrics"])
    assert not any("simulation run" in w for w in document["warnings"])


def test_completed_run_gives_no_run_warning(engine: Engine) -> None:
    experiment_id = seed_tiny(engine)
    add_run(engine, experiment_id, "failed", None)
    add_run(engine, experiment_id, "completed", {"metrics": {}})
    document = analyze(engine, "tiny").to_dict()
    assert document["run"]["status"] == "completed"  # the latest run
    assert not any("simulation run" in w for w in document["warnings"])
    assert all(mr["ground_truth"] is None for mr in document["metrics"])


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_unknown_key(engine: Engine) -> None:
    seed_tiny(engine)
    with pytest.raises(NotFoundError) as info:
        analyze(engine, "nope")
    assert "no experiment 'nope' in this database; known: tiny, tiny-other" in str(info.value)


def test_experiment_without_exposures(engine: Engine) -> None:
    create_experiment(engine, tiny_yaml("empty", "nothing yet"))
    with pytest.raises(AbplatformError) as info:
        analyze(engine, "empty")
    assert info.value.message == (
        "experiment 'empty' has no exposures yet, so there is no data to analyse"
    )
    assert info.value.hint is not None
    assert "abplatform simulate" in info.value.hint
    assert "abplatform ingest" in info.value.hint


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, float("nan")])
def test_bad_alpha(engine: Engine, alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be strictly between 0 and 1"):
        analyze(engine, "tiny", alpha=alpha)


# ---------------------------------------------------------------------------
# Degenerate data stays JSON-clean
# ---------------------------------------------------------------------------


def test_degenerate_variants(engine: Engine) -> None:
    yaml_text = """
key: lopsided
variants:
  - {key: control, weight: 0.4}
  - {key: treatment, weight: 0.4}
  - {key: empty, weight: 0.2}
metrics:
  - {name: conversion, type: proportion, event: purchase}
  - name: ctr
    type: ratio
    numerator: {event: click}
    denominator: {event: impression}
"""
    experiment_id = create_experiment(engine, yaml_text)
    # One control unit, no clicks anywhere, no unit in "empty".
    seed_exposures(
        engine,
        experiment_id,
        [Exposure("a", "control", 0, 0), Exposure("b", "treatment", 0, 4)]
        + [Exposure(f"t{i}", "treatment", 0, 4) for i in range(30)],
    )
    result = analyze(engine, "lopsided")
    document = assert_json_clean(result)
    assert document["units"] == {"control": 1, "treatment": 31, "empty": 0}
    assert document["srm"]["mismatch"] is True
    ctr = metric(result, "ctr")
    # Control has 0 impressions in total: its ratio is undefined.
    assert ctr.variants[0].mean is None
    assert ctr.variants[0].note is not None
    assert ctr.variants[2].units == 0
    assert all(c.p_value is None and not c.significant for c in ctr.comparisons)
    assert any("no units in variant(s): empty" in w for w in document["warnings"])


# ---------------------------------------------------------------------------
# A larger random experiment against scipy / statsmodels
# ---------------------------------------------------------------------------


def _delta_ratio(x: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[float, float]:
    """Ratio of totals and its delta-method variance, straight from per-unit arrays."""
    n = x.size
    ratio = x.sum() / y.sum()
    cov = np.cov(x, y, ddof=1)
    variance = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio**2 * cov[1, 1]) / (n * y.mean() ** 2)
    return float(ratio), float(variance)


def test_random_experiment_against_scipy(engine: Engine) -> None:
    truth = seed_random_experiment(engine)
    result = analyze(engine, "random")
    assert_json_clean(result)

    keys = ["control", "treatment", "other"]
    observed = [int((truth.variant == k).sum()) for k in keys]
    assert dict(result.units) == dict(zip(keys, observed, strict=True))
    assert result.excluded_units == {"multiple_variants": 0}
    # SRM against the configured weights 0.5 / 0.3 / 0.2.
    expected = np.array([0.5, 0.3, 0.2]) * sum(observed)
    srm = sps.chisquare(observed, f_exp=expected)
    assert_close(result.srm.p_value, srm.pvalue)
    assert_close(result.srm.chi2, srm.statistic)
    assert_close(list(result.srm.expected.values()), expected)

    for name in ("conversion", "clicks_per_user", "revenue_per_user"):
        mr = metric(result, name)
        control = truth.values(name, "control")
        for estimate in mr.variants:
            values = truth.values(name, estimate.variant)
            assert estimate.units == values.size
            assert_close(estimate.mean, values.mean())
            assert estimate.ci is not None
            assert_close(estimate.ci, DescrStatsW(values).tconfint_mean(0.05))
        assert [c.variant for c in mr.comparisons] == ["treatment", "other"]
        for cmp in mr.comparisons:
            treated = truth.values(name, cmp.variant)
            welch = sps.ttest_ind(treated, control, equal_var=False)
            ci = welch.confidence_interval(0.95)
            assert_close(cmp.diff, treated.mean() - control.mean())
            assert_close(cmp.p_value, welch.pvalue)
            assert cmp.diff_ci is not None
            assert_close(cmp.diff_ci, [ci.low, ci.high])
            sm = CompareMeans.from_data(treated, control)
            assert_close(cmp.diff_ci, sm.tconfint_diff(0.05, usevar="unequal"))
            assert cmp.significant == (welch.pvalue < 0.05)
            assert_close(cmp.rel_lift, treated.mean() / control.mean() - 1)

    ctr = metric(result, "ctr")
    z975 = sps.norm.ppf(0.975)
    by_variant = {
        k: _delta_ratio(truth.clicks[truth.variant == k], truth.impressions[truth.variant == k])
        for k in keys
    }
    for estimate in ctr.variants:
        ratio, variance = by_variant[estimate.variant]
        assert_close(estimate.mean, ratio)
        half = z975 * math.sqrt(variance)
        assert estimate.ci is not None
        assert_close(estimate.ci, [ratio - half, ratio + half])
    for cmp in ctr.comparisons:
        (r_t, v_t), (r_c, v_c) = by_variant[cmp.variant], by_variant["control"]
        se = math.sqrt(v_t + v_c)
        assert_close(cmp.diff, r_t - r_c)
        assert_close(cmp.p_value, 2 * sps.norm.sf(abs(r_t - r_c) / se))
        assert cmp.diff_ci is not None
        assert_close(cmp.diff_ci, [r_t - r_c - z975 * se, r_t - r_c + z975 * se])
    # The 15% lift on clicks of "treatment" is large enough to be found with 2,000 units.
    assert metric(result, "clicks_per_user").comparisons[0].significant


def test_ground_truth_only_numbers(engine: Engine) -> None:
    experiment_id = seed_tiny(engine)
    truth: Mapping[str, Any] = {
        "metrics": {
            "ctr": {"control": 0.2, "treatment": "n/a", "x": None, "y": True},
            "conversion": "not a mapping",
        }
    }
    add_run(engine, experiment_id, "completed", dict(truth))
    result = analyze(engine, "tiny")
    assert metric(result, "ctr").ground_truth == {"control": 0.2}
    assert metric(result, "conversion").ground_truth is None


def test_without_event_metrics_and_with_weight_zero_variant(engine: Engine) -> None:
    yaml_text = """
key: holdout
variants:
  - {key: control, weight: 1.0}
  - {key: holdout, weight: 0.0}
metrics:
  - {name: impressions_per_user, type: mean, event: impression, value: sum}
  - {name: saw_a_slate, type: proportion, event: impression}
"""
    experiment_id = create_experiment(engine, yaml_text)
    seed_exposures(
        engine,
        experiment_id,
        [
            Exposure("a", "control", 0, 3),
            Exposure("a", "control", 5, 4),
            Exposure("b", "control", 0, 0),
            Exposure("c", "holdout", 0, 2),
        ],
    )
    result = analyze(engine, "holdout")
    document = assert_json_clean(result)
    # Only impressions are used: no events query. Per unit: a 7, b 0 (control), c 2 (holdout).
    assert document["units"] == {"control": 2, "holdout": 1}
    impressions = metric(result, "impressions_per_user")
    assert [v.mean for v in impressions.variants] == [3.5, 2.0]
    saw = metric(result, "saw_a_slate")
    assert [v.mean for v in saw.variants] == [0.5, 1.0]
    # One variant with traffic: nothing to test, but a unit in the weight-0 variant is a mismatch.
    assert document["srm"]["p_value"] == 1.0
    assert document["srm"]["mismatch"] is True
    assert document["srm"]["expected"] == {"control": 3.0, "holdout": 0.0}
    assert "the SRM check needs at least two variants with traffic; skipped" in result.warnings
    assert (
        "sample ratio mismatch: units in variants with weight 0: holdout (1 unit)"
        in result.warnings
    )


def test_experiment_without_metrics(engine: Engine) -> None:
    experiment_id = create_experiment(
        engine,
        "key: bare\nvariants: [{key: a, weight: 0.5}, {key: b, weight: 0.5}]\n",
    )
    seed_exposures(engine, experiment_id, [Exposure("u1", "a", 0, 1), Exposure("u2", "b", 0, 1)])
    document = assert_json_clean(analyze(engine, "bare"))
    assert document["units"] == {"a": 1, "b": 1}
    assert document["metrics"] == []
    assert document["control"] == "a"
