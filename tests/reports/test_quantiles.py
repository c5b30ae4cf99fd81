"""Quantile metrics (`reports.quantiles`, `reports.quantile_sql`) on SQLite and PostgreSQL.

Oracles: the per-unit values are rebuilt in numpy from the seeded rows; the point estimates
are ``numpy.quantile(v, q)`` (its default ``method="linear"``); the standard errors and
interval endpoints of the difference and of the relative lift are checked against a seeded
unit-level bootstrap (resampling units within each variant), within 4 of the bootstrap's own
Monte-Carlo standard errors.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
from numpy.testing import assert_allclose
from rich.console import Console
from scipy import optimize
from scipy import stats as sps
from sqlalchemy import Engine

from reports.analysis import analyze
from reports.quantiles import (
    NOTE_TIE,
    compare_quantiles,
    interval_ranks,
    point_ranks,
    quantile_stats,
)
from reports.render import render_report
from reports.selfcheck_quantiles import QUANTILE, quantile_arrays, quantile_truth
from reports.table import print_table
from tests.factories import (
    Event,
    Exposure,
    create_experiment,
    seed_events,
    seed_exposures,
)

UNITS = 2000  # per variant
VARIANTS = ("control", "treatment")
BOOTSTRAP = 2000
HOUR = 3600


def _yaml(key: str, name: str = "revenue_p90") -> str:
    return f"""
key: {key}
variants:
  - {{key: control, weight: 0.5}}
  - {{key: treatment, weight: 0.5}}
metrics:
  - {{name: {json.dumps(name)}, type: quantile, event: purchase, value: sum, q: 0.9}}
  - {{name: clicks_p75, type: quantile, event: click, q: 0.75}}
  - {{name: revenue_p50_1h, type: quantile, event: purchase, value: sum, q: 0.5,
      window: {{end: 1h}}}}
  - {{name: revenue, type: mean, event: purchase, value: sum}}
analysis:
  correction: none
"""


def _seed(engine: Engine, key: str, name: str = "revenue_p90") -> dict[str, dict[str, np.ndarray]]:
    """Two variants of `UNITS` units: revenue zero-inflated lognormal (treatment x1.1), clicks
    Poisson; 10 units exposed to both variants (left out). Returns the per-unit oracle."""
    rng = np.random.default_rng(16)
    experiment_id = create_experiment(engine, _yaml(key, name))
    exposures, events = [], []
    truth = {v: {"revenue": [], "clicks": [], "revenue_1h": []} for v in VARIANTS}
    for i in range(2 * UNITS):
        variant = VARIANTS[i % 2]
        unit, start = f"u{i}", 10_000 + int(rng.integers(0, 500))
        exposures.append(Exposure(unit, variant, start, 4))
        revenue = revenue_1h = 0.0
        for _ in range(int(rng.poisson(1.2))):
            price = float(rng.lognormal(3.0, 1.0)) * (1.1 if variant == "treatment" else 1.0)
            t = int(rng.integers(0, 2 * HOUR))
            events.append(Event(unit, "purchase", start + t, price))
            revenue += price
            revenue_1h += price if t < HOUR else 0.0
        clicks = int(rng.poisson(3.0))
        events.extend(Event(unit, "click", start + 1) for _ in range(clicks))
        row = truth[variant]
        row["revenue"].append(revenue)
        row["revenue_1h"].append(revenue_1h)
        row["clicks"].append(clicks)
    for j in range(10):  # in both variants: excluded from every metric
        exposures += [Exposure(f"both{j}", v, 10_000, 4) for v in VARIANTS]
        events.append(Event(f"both{j}", "purchase", 10_001, 1e6))
    seed_exposures(engine, experiment_id, exposures)
    seed_events(engine, experiment_id, events, prefix=key)
    return {v: {k: np.asarray(a, dtype=float) for k, a in d.items()} for v, d in truth.items()}


def _metric(document: dict, name: str) -> dict:
    return next(m for m in document["metrics"] if m["metric"] == name)


def test_point_estimates_match_numpy_quantile(engine: Engine) -> None:
    truth = _seed(engine, "qpoint")
    document = json.loads(json.dumps(analyze(engine, "qpoint").to_dict(), allow_nan=False))
    cases = {"revenue_p90": ("revenue", 0.9), "clicks_p75": ("clicks", 0.75)}
    cases["revenue_p50_1h"] = ("revenue_1h", 0.5)
    for name, (column, q) in cases.items():
        metric = _metric(document, name)
        assert metric["type"] == "quantile" and metric["quantile"] == q
        assert metric["cuped"]["applied"] is False and "not CUPED" in metric["cuped"]["note"]
        for est in metric["variants"]:
            values = truth[est["variant"]][column]
            assert est["units"] == UNITS
            assert_allclose(est["mean"], np.quantile(values, q, method="linear"), rtol=1e-12)
            # The per-variant interval is the order-statistic interval [v_(r), v_(s)].
            r, s = interval_ranks(UNITS, q, 0.05)
            ordered = np.sort(values)
            assert est["ci"] == [ordered[r - 1], ordered[s - 1]]
        [cmp] = metric["comparisons"]
        q_t, q_c = (np.quantile(truth[v][column], q) for v in ("treatment", "control"))
        assert_allclose(cmp["diff"], q_t - q_c, rtol=1e-12, atol=1e-12)
    # Other metrics keep their JSON shape (no "quantile" key).
    assert "quantile" not in _metric(document, "revenue")
    assert _metric(document, "revenue_p50_1h")["window"]["open_units"] == dict.fromkeys(VARIANTS, 0)


def _bootstrap(t: np.ndarray, c: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """`BOOTSTRAP` unit-level resamples within each variant: differences and lifts."""
    rng = np.random.default_rng(2018)
    diffs, lifts = np.empty(BOOTSTRAP), np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        q_t = np.quantile(t[rng.integers(0, t.size, t.size)], q)
        q_c = np.quantile(c[rng.integers(0, c.size, c.size)], q)
        diffs[b], lifts[b] = q_t - q_c, q_t / q_c - 1.0
    return diffs, lifts


def test_delta_method_interval_agrees_with_a_unit_bootstrap(engine: Engine) -> None:
    truth = _seed(engine, "qboot")
    [cmp] = _metric(analyze(engine, "qboot").to_dict(), "revenue_p90")["comparisons"]
    t, c = truth["treatment"]["revenue"], truth["control"]["revenue"]
    diffs, lifts = _bootstrap(t, c, 0.9)
    z = sps.norm.isf(0.025)
    checks = ((cmp["diff"], cmp["diff_ci"], diffs), (cmp["rel_lift"], cmp["rel_lift_ci"], lifts))
    for estimate, ci, draws in checks:
        se = (ci[1] - ci[0]) / (2 * z)
        boot_se = draws.std(ddof=1)
        # Monte-Carlo se of a bootstrap se: se / sqrt(2 (B - 1)).
        assert abs(se - boot_se) <= 4 * boot_se / math.sqrt(2 * (BOOTSTRAP - 1)), (se, boot_se)
        # Monte-Carlo se of the bootstrap's 2.5% / 97.5% quantile (normal shape):
        # sqrt(p (1 - p) / B) / phi(z) * se.
        mc_endpoint = math.sqrt(0.025 * 0.975 / BOOTSTRAP) / sps.norm.pdf(z) * boot_se
        for ours, boot in zip(ci, np.quantile(draws, [0.025, 0.975]), strict=True):
            # The bootstrap interval is centred on its own mean: compare the half-widths.
            assert abs((ours - estimate) - (boot - draws.mean())) <= 4 * mc_endpoint
    assert cmp["p_value"] < 0.05  # 10% higher order values: p90 higher


def test_ranks_and_ties() -> None:
    # ranks of the interpolated quantile agree with numpy's linear method
    rng = np.random.default_rng(3)
    for n in (2, 3, 10, 101):
        values = np.sort(rng.normal(size=n))
        for q in (0.01, 0.5, 0.9, 0.99):
            low, high = point_ranks(n, q)
            r, s = interval_ranks(n, q, 0.05)
            order = {i + 1: float(v) for i, v in enumerate(values)}
            got = quantile_stats(n, q, order, 0.05)
            assert_allclose(got.value, np.quantile(values, q), rtol=1e-12, atol=1e-12)
            assert 1 <= r <= low <= high <= s <= n
    # Hand values: n = 100, q = 0.5, z = 1.959964: half = 1.959964 * 5 = 9.79982,
    # r = floor(40.2) = 40, s = ceil(59.8) = 60.
    assert interval_ranks(100, 0.5, 0.05) == (40, 60)
    # On a point mass (most units at 0) the interval collapses: se 0 and a note.
    tied = quantile_stats(10, 0.5, dict.fromkeys(range(1, 11), 0.0), 0.05)
    assert tied.se == 0.0 and tied.note == NOTE_TIE
    cmp = compare_quantiles(tied, tied, 0.05)
    assert cmp.p_value == 1.0 and cmp.diff_ci == (0.0, 0.0) and NOTE_TIE in (cmp.note or "")
    empty = quantile_stats(0, 0.5, {}, 0.05)
    assert compare_quantiles(empty, tied, 0.05).diff is None


HOSTILE = "p90<script>alert(1)</script>"


def test_reports_show_the_quantile_and_escape_names(engine: Engine) -> None:
    _seed(engine, "qshow", name="revenue_p90")
    result = analyze(engine, "qshow")
    out = io.StringIO()
    print_table(result, Console(file=out, width=400, color_system=None))
    table = out.getvalue()
    assert "revenue_p90 (p90)" in table and "Deng, Knoblich and Lu 2018" in table
    html = render_report(result)
    assert html.count("Quantile: p") == 3 and "p75 of the per-unit value" in html


def test_selfcheck_arrays_match_compare_quantiles() -> None:
    rng = np.random.default_rng(9)
    t = rng.lognormal(3.0, 1.0, size=(4, 301)) * (rng.random((4, 301)) < 0.3)
    c = rng.lognormal(3.0, 1.0, size=(4, 301)) * (rng.random((4, 301)) < 0.3)
    got = quantile_arrays(t, c, QUANTILE, 0.05)
    for i in range(4):
        stats = [
            quantile_stats(301, QUANTILE, dict(enumerate(np.sort(v[i]).tolist(), 1)), 0.05)
            for v in (t, c)
        ]
        ref = compare_quantiles(stats[0], stats[1], 0.05)
        assert ref.diff_ci is not None and ref.p_value is not None
        assert_allclose([got["lo"][i], got["hi"][i]], ref.diff_ci, rtol=1e-10)
        assert_allclose(got["p"][i], ref.p_value, rtol=1e-8)


def test_quantile_truth_by_numerical_inversion() -> None:
    # P(Y <= y) = 0.7 + 0.3 Phi((log y - 3) / 1): solve for 0.9 with brentq, per scale.
    def p90(scale: float) -> float:
        def share(y: float) -> float:
            return float(0.7 + 0.3 * sps.norm.cdf((math.log(y / scale) - 3.0) / 1.0) - 0.9)

        return float(optimize.brentq(share, 1e-6, 1e6, xtol=1e-12))

    expected = p90(1.05) - p90(1.0)
    assert_allclose(quantile_truth(0.3, 3.0, 1.0, 1.05), expected, rtol=1e-9)
