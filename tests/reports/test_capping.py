"""Capping (winsorisation) of per-unit values in SQL, SQLite and PostgreSQL (`reports.capping`).

Oracles: the per-unit values are rebuilt in numpy from the seeded rows (`seed_world`), the
pooled threshold is ``numpy.percentile`` (linear interpolation, as ``percentile_cont``),
the capped means and Welch p-values come from numpy and scipy, CUPED from an OLS fit on the
capped outcome and the capped covariate (statsmodels).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from numpy.testing import assert_allclose
from rich.console import Console
from scipy import stats as sps
from sqlalchemy import Engine
from statsmodels.regression.linear_model import OLS

from abplatform.config import ConfigError, load_experiment_text
from reports.analysis import analyze
from reports.capping import percentile
from reports.render import render_report
from reports.table import print_table
from tests.factories import CUPED_VARIANTS, seed_world

IMPRESSIONS_PER_UNIT = 4  # seed_world: one exposure of 4 items per unit


def _yaml(key: str, cuped: bool) -> str:
    return f"""
key: {key}
variants:
  - {{key: control, weight: 0.34}}
  - {{key: treatment, weight: 0.33}}
  - {{key: other, weight: 0.33}}
metrics:
  - {{name: revenue_p90, type: mean, event: purchase, value: sum,
      cap: {{type: percentile, value: 0.9}}}}
  - {{name: clicks_cap3, type: mean, event: click, cap: {{type: absolute, value: 3}}}}
  - {{name: revenue_raw, type: mean, event: purchase, value: sum}}
  - {{name: revenue_p50_buyers, type: mean, event: purchase, value: sum,
      cap: {{type: percentile, value: 0.5, ignore_zeros: true}}}}
  - {{name: ctr_capped, type: ratio,
      numerator: {{event: click, cap: {{type: percentile, value: 0.75}}}},
      denominator: {{event: impression}}}}
analysis:
  cuped: {str(cuped).lower()}
  correction: none
"""


def _by_metric(document: dict[str, object]) -> dict[str, dict[str, object]]:
    return {m["metric"]: m for m in document["metrics"]}  # type: ignore[index, union-attr]


def test_percentile_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 10, 101):
        values = np.sort(rng.integers(0, 5, size=n).astype(float))  # ties included
        for share in (0.01, 0.5, 0.9, 0.99, 0.999):
            x = share * (n - 1)
            ranks = [r for r in range(n) if x - 1 < r <= x + 1]  # what the statement returns
            got = percentile([(r, float(values[r])) for r in ranks], n, share)
            assert_allclose(got, np.percentile(values, share * 100), rtol=1e-12, atol=1e-12)


def test_capped_means_and_tests_match_numpy(engine: Engine) -> None:
    truth = seed_world(engine, "capped", "", yaml_text=_yaml("capped", cuped=False))
    document = json.loads(json.dumps(analyze(engine, "capped").to_dict(), allow_nan=False))
    metrics = _by_metric(document)

    revenue = {v: truth[v]["revenue"] for v in CUPED_VARIANTS}
    clicks = {v: truth[v]["clicks"] for v in CUPED_VARIANTS}
    t_revenue = np.percentile(np.concatenate(list(revenue.values())), 90)
    t_clicks = np.percentile(np.concatenate(list(clicks.values())), 75)
    pooled = np.concatenate(list(revenue.values()))
    t_buyers = np.percentile(pooled[pooled > 0], 50)
    assert (pooled == 0).mean() > 0.2  # zeros would move the percentile
    cases = {
        "revenue_p90": ({v: np.minimum(revenue[v], t_revenue) for v in revenue}, t_revenue),
        "revenue_p50_buyers": ({v: np.minimum(revenue[v], t_buyers) for v in revenue}, t_buyers),
        "clicks_cap3": ({v: np.minimum(clicks[v], 3.0) for v in clicks}, 3.0),
    }
    for name, (capped, threshold) in cases.items():
        metric = metrics[name]
        [cap] = metric["capping"]  # type: ignore[misc]
        assert cap["role"] == "value"
        assert_allclose(cap["threshold"], threshold, rtol=1e-12)
        raw = clicks if name == "clicks_cap3" else revenue
        assert cap["capped_units"] == {v: int((raw[v] > threshold).sum()) for v in CUPED_VARIANTS}
        assert sum(cap["capped_units"].values()) > 0
        for est in metric["variants"]:  # type: ignore[union-attr]
            assert_allclose(est["mean"], capped[est["variant"]].mean(), rtol=1e-12)
        for cmp in metric["comparisons"]:  # type: ignore[union-attr]
            welch = sps.ttest_ind(capped[cmp["variant"]], capped["control"], equal_var=False)
            assert_allclose(cmp["p_value"], welch.pvalue, rtol=1e-8)
    # The uncapped metric of the same event keeps its raw values.
    assert metrics["revenue_raw"]["capping"] == []
    for est in metrics["revenue_raw"]["variants"]:  # type: ignore[union-attr]
        assert_allclose(est["mean"], revenue[est["variant"]].mean(), rtol=1e-12)
    # Ratio: the numerator is capped, the denominator (impressions) is not.
    ratio = metrics["ctr_capped"]
    [cap] = ratio["capping"]  # type: ignore[misc]
    assert cap["role"] == "numerator"
    assert_allclose(cap["threshold"], t_clicks, rtol=1e-12)
    for est in ratio["variants"]:  # type: ignore[union-attr]
        capped_clicks = np.minimum(clicks[est["variant"]], t_clicks)
        assert_allclose(est["mean"], capped_clicks.mean() / IMPRESSIONS_PER_UNIT, rtol=1e-12)


def test_cuped_uses_the_capped_covariate(engine: Engine) -> None:
    truth = seed_world(engine, "capcuped", "", yaml_text=_yaml("capcuped", cuped=True))
    metric = _by_metric(analyze(engine, "capcuped").to_dict())["revenue_p90"]
    y_all = np.concatenate([truth[v]["revenue"] for v in CUPED_VARIANTS])
    threshold = np.percentile(y_all, 90)
    y = {v: np.minimum(truth[v]["revenue"], threshold) for v in CUPED_VARIANTS}
    x = {v: np.minimum(truth[v]["x_revenue"], threshold) for v in CUPED_VARIANTS}
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
    assert_allclose(metric["cuped"]["theta"], fit.params[3], rtol=1e-9)
    for cmp, column in zip(metric["comparisons"], (1, 2), strict=True):
        assert_allclose(cmp["diff"], fit.params[column], rtol=1e-9)


def test_reports_show_the_threshold(engine: Engine) -> None:
    seed_world(engine, "capshow", "", yaml_text=_yaml("capshow", cuped=False))
    result = analyze(engine, "capshow")
    out = io.StringIO()
    print_table(result, Console(file=out, width=400, color_system=None))
    table = out.getvalue()
    html = render_report(result)
    assert "value capped at 3 (absolute)" in table
    assert "numerator capped at" in table and "75th percentile, pooled over variants" in table
    assert html.count("Capping: ") == 4


@pytest.mark.parametrize(
    ("metric", "path", "problem"),
    [
        (
            "{name: m, type: proportion, event: purchase, cap: {type: absolute, value: 2}}",
            "metrics.0",
            "a proportion is 0 or 1 per unit",
        ),
        (
            "{name: m, type: mean, event: purchase, cap: {type: percentile, value: 1.5}}",
            "metrics.0.cap",
            "strictly between 0 and 1",
        ),
        (
            "{name: m, type: mean, event: purchase, cap: {type: absolute, value: 0}}",
            "metrics.0.cap",
            "must be positive",
        ),
        (
            "{name: m, type: mean, event: purchase, "
            "cap: {type: absolute, value: 2, ignore_zeros: true}}",
            "metrics.0.cap",
            "percentile cap only",
        ),
        (
            "{name: m, type: mean, event: purchase, cap: {type: median, value: 2}}",
            "metrics.0.cap.type",
            "percentile",
        ),
        (
            "{name: m, type: ratio, numerator: {event: click, cap: {type: percentile}}, "
            "denominator: {event: impression}}",
            "metrics.0.numerator.cap.value",
            "",
        ),
    ],
)
def test_bad_caps_are_named(metric: str, path: str, problem: str) -> None:
    text = "key: k\nvariants:\n  - {key: a, weight: 0.5}\n  - {key: b, weight: 0.5}\n"
    text += f"metrics:\n  - {metric}\n"
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text)
    message = "\n".join(info.value.problems)
    assert f"{path}:" in message and problem in message, message


def test_a_capped_bandit_reward_is_refused() -> None:
    text = """
key: k
assignment: {type: thompson, reward_metric: revenue}
variants: [{key: a}, {key: b}]
metrics:
  - {name: revenue, type: mean, event: purchase, value: sum, cap: {type: absolute, value: 9}}
"""
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text)
    message = "\n".join(info.value.problems)
    assert "assignment.reward_metric:" in message and "is capped" in message, message
