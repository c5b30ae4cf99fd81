"""Bayesian risk and lift priors through `analyze` (SQLite and PostgreSQL).

Oracle: the conjugate normal posterior of the relative lift computed here from the
comparison's own lift and its (delta-method) interval, and the closed-form expected losses.
"""

from __future__ import annotations

import math

import pytest
from numpy.testing import assert_allclose
from scipy import stats as sps
from sqlalchemy import Engine

from abplatform.config import ConfigError, load_experiment_text
from reports.analysis import analyze
from reports.bayes import expected_losses
from reports.render import render_report
from tests.factories import seed_world

YAML = """
key: priors
variants:
  - {key: control, weight: 0.34}
  - {key: treatment, weight: 0.33}
  - {key: other, weight: 0.33}
metrics:
  - {name: revenue, type: mean, event: purchase, value: sum, prior: {mean: 0.0, stddev: 0.1}}
  - {name: revenue_flat, type: mean, event: purchase, value: sum}
  - {name: conversion, type: proportion, event: purchase}
analysis: {cuped: false, correction: none}
"""


def test_priors_and_risks_in_the_analysis(engine: Engine) -> None:
    seed_world(engine, "priors", "", yaml_text=YAML)
    result = analyze(engine, "priors")
    metrics = {m["metric"]: m for m in result.to_dict()["metrics"]}
    z = sps.norm.ppf(0.975)
    for with_prior, flat in zip(
        metrics["revenue"]["comparisons"], metrics["revenue_flat"]["comparisons"], strict=True
    ):
        lift = flat["rel_lift"]
        lo, hi = flat["rel_lift_ci"]
        se = (hi - lo) / (2 * z)
        precision = 1 / 0.1**2 + 1 / se**2
        post_mean, post_sd = (lift / se**2) / precision, math.sqrt(1 / precision)
        bayes = with_prior["bayes"]
        assert bayes["method"] == "normal with prior"
        assert (bayes["prior_mean"], bayes["prior_stddev"]) == (0.0, 0.1)
        assert_allclose(bayes["lift_mean"], post_mean, rtol=1e-9)
        assert abs(post_mean) < abs(lift)  # shrunk towards the prior's 0
        assert_allclose(bayes["chance_to_beat_control"], sps.norm.cdf(post_mean / post_sd))
        ship, keep = expected_losses(post_mean, post_sd)
        assert_allclose([bayes["risk_treatment"], bayes["risk_control"]], [ship, keep])
        # Without a prior: flat, the risks of the lift's own normal approximation.
        flat_ship, flat_keep = expected_losses(lift, se)
        assert flat["bayes"]["prior_mean"] is None
        assert_allclose(flat["bayes"]["risk_treatment"], flat_ship, rtol=1e-9)
        assert_allclose(flat["bayes"]["risk_control"], flat_keep, rtol=1e-9)
    for cmp in metrics["conversion"]["comparisons"]:
        assert cmp["bayes"]["method"] == "beta-binomial"
        assert cmp["bayes"]["risk_treatment"] >= 0 and cmp["bayes"]["risk_control"] >= 0
    page = render_report(result)
    assert "prior on the lift N(" in page and "risk (expected relative loss) of shipping" in page


@pytest.mark.parametrize(
    ("prior", "path"),
    [("{mean: 0, stddev: 0}", "metrics.0.prior.stddev"), ("{mean: 0}", "metrics.0.prior.stddev")],
)
def test_bad_priors_are_named(prior: str, path: str) -> None:
    text = "key: k\nvariants:\n  - {key: a, weight: 0.5}\n  - {key: b, weight: 0.5}\n"
    text += f"metrics:\n  - {{name: m, type: proportion, event: purchase, prior: {prior}}}\n"
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text)
    assert any(p.startswith(f"{path}:") for p in info.value.problems), info.value.problems
