"""CUPED in SQL, multiplicity, sequential and decisions of `analyze` (SQLite and PostgreSQL).

Oracles: the per-unit values are rebuilt in numpy from the seeded rows, CUPED is
checked against an OLS fit with a variant dummy (statsmodels) and Welch on the
adjusted values (scipy), the corrections against ``multipletests``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import stats as sps
from sqlalchemy import Engine
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.multitest import multipletests

from abplatform.config import ConfigError, load_experiment_text
from reports.analysis import analyze
from tests.factories import (
    CUPED_VARIANTS,
    Event,
    Exposure,
    create_experiment,
    cuped_yaml,
    seed_events,
    seed_exposures,
    seed_world,
)

METRIC_COLUMNS = {
    "conversion": ("conv", "x_conv"),
    "clicks_per_user": ("clicks", "x_clicks"),
    "revenue_per_user": ("revenue", "x_revenue"),
}


def test_cuped_in_sql_matches_regression(engine: Engine) -> None:
    truth = seed_world(engine, "cuped", "  correction: none")
    result = analyze(engine, "cuped")
    document = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert document["cuped"] is True and document["correction"] == "none"
    for metric in document["metrics"]:
        if metric["type"] == "ratio":
            # ctr = clicks / impressions with 4 impressions a unit: its linearisation is
            # clicks / 4, adjusted with the pre-period clicks (impressions have no history).
            y = {v: truth[v]["clicks"] / 4.0 for v in CUPED_VARIANTS}
            x = {v: truth[v]["x_clicks"] for v in CUPED_VARIANTS}
            assert metric["cuped"]["theta_denominator"] is None
        else:
            y_name, x_name = METRIC_COLUMNS[metric["metric"]]
            y = {v: truth[v][y_name] for v in CUPED_VARIANTS}
            x = {v: truth[v][x_name] for v in CUPED_VARIANTS}
        design = np.column_stack(
            [
                np.ones(150),
                np.repeat([0.0, 1.0, 0.0], 50),
                np.repeat([0.0, 0.0, 1.0], 50),
                np.concatenate([x[v] for v in CUPED_VARIANTS]),
            ]
        )
        fit = OLS(np.concatenate([y[v] for v in CUPED_VARIANTS]), design).fit()
        assert metric["cuped"]["applied"] is True
        # Pooled over variants, least squares can only remove within-variant variance.
        assert metric["cuped"]["variance_reduction"] > 0
        assert_allclose(metric["cuped"]["theta"], fit.params[3], rtol=1e-9)
        x_bar = np.concatenate(list(x.values())).mean()
        adj = {v: y[v] - fit.params[3] * (x[v] - x_bar) for v in CUPED_VARIANTS}
        for cmp, column in zip(metric["comparisons"], (1, 2), strict=True):
            assert_allclose(cmp["diff"], fit.params[column], rtol=1e-9)
            welch = sps.ttest_ind(adj[cmp["variant"]], adj["control"], equal_var=False)
            assert_allclose(cmp["p_value"], welch.pvalue, rtol=1e-8)
            raw = sps.ttest_ind(y[cmp["variant"]], y["control"], equal_var=False)
            raw_var = (y[cmp["variant"]].var(ddof=1) + y["control"].var(ddof=1)) / 50
            adj_var = (adj[cmp["variant"]].var(ddof=1) + adj["control"].var(ddof=1)) / 50
            assert_allclose(cmp["cuped"]["variance_reduction"], 1 - adj_var / raw_var, rtol=1e-8)
            assert raw.pvalue != cmp["p_value"]
        # Per-variant estimates stay the raw means.
        for est in metric["variants"]:
            assert_allclose(est["mean"], y[est["variant"]].mean(), rtol=1e-9)


def test_cuped_off_gives_the_raw_welch_test(engine: Engine) -> None:
    truth = seed_world(engine, "raw", "  cuped: false\n  correction: none")
    document = analyze(engine, "raw").to_dict()
    assert document["cuped"] is False
    clicks = next(m for m in document["metrics"] if m["metric"] == "clicks_per_user")
    assert clicks["cuped"] == {
        "applied": False,
        "variance_reduction": 0.0,
        "theta": 0.0,
        "note": "CUPED is off (analysis.cuped: false)",
        "theta_denominator": None,
    }
    cmp = clicks["comparisons"][0]
    welch = sps.ttest_ind(truth["treatment"]["clicks"], truth["control"]["clicks"], equal_var=False)
    assert_allclose(cmp["p_value"], welch.pvalue, rtol=1e-9)


@pytest.mark.parametrize(("ours", "theirs"), [("holm", "holm"), ("bh", "fdr_bh")])
def test_corrections_and_guardrails_form_families(engine: Engine, ours: str, theirs: str) -> None:
    seed_world(engine, "family", f"  correction: {ours}\n  guardrails: [ctr]")
    document = analyze(engine, "family").to_dict()
    assert document["correction"] == ours and document["guardrails"] == ["ctr"]
    primary = [c for m in document["metrics"] if m["metric"] != "ctr" for c in m["comparisons"]]
    expected = multipletests([c["p_value"] for c in primary], method=theirs)[1]
    assert_allclose([c["p_value_adjusted"] for c in primary], expected, rtol=1e-12)
    guard = next(m for m in document["metrics"] if m["metric"] == "ctr")
    assert guard["guardrail"] is True
    expected = multipletests([c["p_value"] for c in guard["comparisons"]], method=theirs)[1]
    assert_allclose([c["p_value_adjusted"] for c in guard["comparisons"]], expected, rtol=1e-12)
    for metric in document["metrics"]:
        for cmp in metric["comparisons"]:
            assert cmp["guardrail"] == (metric["metric"] == "ctr")
            assert cmp["sequential"] is None
            significant = cmp["p_value_adjusted"] < 0.05
            if significant:
                assert cmp["decision"] == (
                    "significant win" if cmp["diff"] > 0 else "significant loss"
                )
            else:
                assert cmp["decision"] == "inconclusive"
            assert 0.0 <= cmp["chance_to_beat_control"] <= 1.0
            assert cmp["mde"] > 0


def test_sequential_mode(engine: Engine) -> None:
    seed_world(engine, "seq", "  sequential: true\n  sequential_tuning: 100\n  correction: none")
    document = analyze(engine, "seq").to_dict()
    assert document["sequential"] is True
    for metric in document["metrics"]:
        for cmp in metric["comparisons"]:
            seq = cmp["sequential"]
            assert seq is not None and seq["tuning_units"] == 100
            lo, hi = seq["diff_ci"]
            # The confidence sequence contains the fixed-horizon interval's centre and is wider.
            assert lo < cmp["diff"] < hi
            assert hi - lo > cmp["diff_ci"][1] - cmp["diff_ci"][0]
            assert cmp["p_value_adjusted"] == pytest.approx(seq["p_value"], rel=1e-12)
            assert (seq["p_value"] < 0.05) == (lo > 0 or hi < 0)
            if seq["p_value"] >= 0.05:
                assert cmp["decision"] == "keep running"


def test_proportion_chance_to_beat_is_beta_binomial(engine: Engine) -> None:
    truth = seed_world(engine, "bayes", "  correction: none")
    document = analyze(engine, "bayes").to_dict()
    conv = next(m for m in document["metrics"] if m["metric"] == "conversion")
    cmp = conv["comparisons"][0]
    assert cmp["bayes"]["method"] == "beta-binomial"
    x_t, x_c = int(truth["treatment"]["conv"].sum()), int(truth["control"]["conv"].sum())
    post_t, post_c = sps.beta(1 + x_t, 51 - x_t), sps.beta(1 + x_c, 51 - x_c)
    from scipy import integrate

    exact = integrate.quad(lambda u: post_c.pdf(u) * post_t.sf(u), 0, 1, limit=200)[0]
    # 200,000 draws: MC SE <= 0.0011; 4 SE.
    assert abs(cmp["chance_to_beat_control"] - exact) < 4 * 0.0012


def test_unknown_guardrail_is_a_config_problem() -> None:
    text = cuped_yaml("g", "  guardrails: [ctr, bounce_rate]")
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text)
    lines = "\n".join(info.value.problems)
    assert "analysis.guardrails.1" in lines
    assert "not a metric name; metrics: clicks_per_user, conversion, ctr, revenue_per_user" in lines
    assert "bounce_rate" in lines


def test_analysis_block_defaults_and_validation() -> None:
    config = load_experiment_text(cuped_yaml("d", "  alpha: 0.1"))
    assert config.analysis.alpha == 0.1
    assert config.analysis.cuped is True and config.analysis.sequential is False
    assert config.analysis.correction == "holm" and config.analysis.guardrails == []
    with pytest.raises(ConfigError) as info:
        load_experiment_text(cuped_yaml("d", "  correction: bonferroni"))
    assert "analysis.correction" in "\n".join(info.value.problems)


def test_degenerate_single_units(engine: Engine) -> None:
    experiment_id = create_experiment(engine, cuped_yaml("tiny", "  sequential: true"))
    seed_exposures(
        engine,
        experiment_id,
        [Exposure("a", "control", 0, 3), Exposure("b", "treatment", 0, 3)],
    )
    seed_events(engine, experiment_id, [Event("a", "click", 5)], prefix="tiny")
    document = analyze(engine, "tiny").to_dict()
    json.dumps(document, allow_nan=False)
    for metric in document["metrics"]:
        for cmp in metric["comparisons"]:
            assert cmp["decision"] == "keep running"
            assert cmp["p_value_adjusted"] is None and cmp["sequential"] is None
