"""CUPED for ratio metrics on SQLite and PostgreSQL (`reports.cuped.cuped_adjust_ratio`).

Oracle: each unit's delta-method linearisation ``z = R_v + (x - R_v y) / ybar_v`` built in
numpy from the seeded rows, regressed with statsmodels OLS on variant dummies and the
pre-period numerator and denominator; Welch's test (scipy) on the adjusted values.
"""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_allclose
from scipy import stats as sps
from sqlalchemy import Engine
from statsmodels.regression.linear_model import OLS

from reports.analysis import analyze
from tests.factories import CUPED_VARIANTS, seed_world

YAML = """
key: ratio_cuped
variants:
  - {key: control, weight: 0.34}
  - {key: treatment, weight: 0.33}
  - {key: other, weight: 0.33}
metrics:
  - {name: revenue_per_order, type: ratio, numerator: {event: purchase, value: sum},
     denominator: {event: purchase}}
analysis: {correction: none}
"""


def test_ratio_cuped_is_ols_on_the_linearisation(engine: Engine) -> None:
    truth = seed_world(engine, "ratio_cuped", "", yaml_text=YAML)
    [metric] = analyze(engine, "ratio_cuped").to_dict()["metrics"]
    z, covariates = {}, {}
    for v in CUPED_VARIANTS:
        x, y = truth[v]["revenue"], truth[v]["buys"]
        ratio, y_bar = x.sum() / y.sum(), y.mean()
        z[v] = ratio + (x - ratio * y) / y_bar
        covariates[v] = np.column_stack([truth[v]["x_revenue"], truth[v]["x_buys"]])
    n = [len(z[v]) for v in CUPED_VARIANTS]
    design = np.column_stack(
        [
            np.ones(sum(n)),
            np.repeat([0.0, 1.0, 0.0], n),
            np.repeat([0.0, 0.0, 1.0], n),
            np.vstack([covariates[v] for v in CUPED_VARIANTS]),
        ]
    )
    fit = OLS(np.concatenate([z[v] for v in CUPED_VARIANTS]), design).fit()
    cuped = metric["cuped"]
    assert cuped["applied"] is True
    assert_allclose([cuped["theta"], cuped["theta_denominator"]], fit.params[3:], rtol=1e-9)
    c_bar = np.vstack(list(covariates.values())).mean(axis=0)
    adjusted = {v: z[v] - (covariates[v] - c_bar) @ fit.params[3:] for v in CUPED_VARIANTS}
    for cmp, column in zip(metric["comparisons"], (1, 2), strict=True):
        assert_allclose(cmp["diff"], fit.params[column], rtol=1e-9)
        welch = sps.ttest_ind(adjusted[cmp["variant"]], adjusted["control"], equal_var=False)
        assert_allclose(cmp["p_value"], welch.pvalue, rtol=1e-8)
        raw = (z[cmp["variant"]].var(ddof=1) / len(z[cmp["variant"]])) + z["control"].var(
            ddof=1
        ) / len(z["control"])
        adj = (adjusted[cmp["variant"]].var(ddof=1) / len(z[cmp["variant"]])) + adjusted[
            "control"
        ].var(ddof=1) / len(z["control"])
        assert_allclose(cmp["cuped"]["variance_reduction"], 1 - adj / raw, rtol=1e-8)
    # Least squares within variants can only remove variance (pooled over the variants).
    assert cuped["variance_reduction"] > 0
    # The per-variant estimates stay the raw ratios.
    for est in metric["variants"]:
        v = est["variant"]
        assert_allclose(est["mean"], truth[v]["revenue"].sum() / truth[v]["buys"].sum())
