"""Metric windows relative to each unit's first exposure, on SQLite and PostgreSQL.

Oracle: the per-unit values are recomputed in Python from the seeded rows with the
definition of `reports.windows` (start <= t - first exposure < end; a unit counts once
first exposure + end + delay <= as_of), then numpy means, ``numpy.percentile`` and scipy's
Welch test.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import numpy as np
import pytest
from numpy.testing import assert_allclose
from rich.console import Console
from scipy import stats as sps
from sqlalchemy import Engine

from abplatform.config import ConfigError, load_experiment_text
from reports.analysis import analyze
from reports.render import render_report
from reports.table import print_table
from tests.factories import T0, Event, Exposure, create_experiment, seed_events, seed_exposures

H = 3600
UNITS = 160
YAML = """
key: windows
variants:
  - {key: control, weight: 0.5}
  - {key: treatment, weight: 0.5}
metrics:
  - {name: conv_24h, type: proportion, event: purchase, window: {end: 24h}}
  - {name: rev_1h_48h, type: mean, event: purchase, value: sum,
     window: {start: 1h, end: 48h, delay: 2h}, cap: {type: absolute, value: 30}}
  - {name: rev_p80_24h, type: mean, event: purchase, value: sum, window: {end: 24h},
     cap: {type: percentile, value: 0.8}}
  - {name: ctr_24h, type: ratio, numerator: {event: click}, denominator: {event: impression},
     window: {end: 1d}}
  - {name: clicks_all, type: mean, event: click}
analysis: {cuped: false, correction: none}
"""
# (metric, start, end, delay) in seconds
WINDOWS = {
    "conv_24h": (0, 24 * H, 0),
    "rev_1h_48h": (1 * H, 48 * H, 2 * H),
    "rev_p80_24h": (0, 24 * H, 0),
    "ctr_24h": (0, 24 * H, 0),
}
AS_OF = 60 * H  # first exposures span 53 h: later units' windows are still open


def _seed(engine: Engine) -> tuple[dict[str, int], list[Exposure], list[Event]]:
    rng = np.random.default_rng(11)
    experiment_id = create_experiment(engine, YAML)
    first: dict[str, int] = {}
    exposures: list[Exposure] = []
    events: list[Event] = []
    for i in range(UNITS):
        unit, variant = f"u{i}", ("control", "treatment")[i % 2]
        start = 1200 * i
        first[unit] = start
        exposures.append(Exposure(unit, variant, start, 4))
        exposures.append(Exposure(unit, variant, start + int(rng.integers(1, 40 * H)), 5))
        lift = 1.4 if variant == "treatment" else 1.0
        for _ in range(int(rng.poisson(3 * lift))):
            events.append(Event(unit, "click", start + int(rng.integers(-2 * H, 60 * H))))
        for _ in range(int(rng.poisson(1.2 * lift))):
            t = start + int(rng.integers(-H, 60 * H))
            events.append(Event(unit, "purchase", t, float(rng.uniform(5, 25))))
        events.append(Event(unit, "purchase", start + 24 * H, 7.0))  # at `end`: outside
        events.append(Event(unit, "click", start + H))  # at `start` of rev window: inside
    seed_exposures(engine, experiment_id, exposures)
    seed_events(engine, experiment_id, events, prefix="w")
    return first, exposures, events


def _oracle(
    first: dict[str, int], exposures: list[Exposure], events: list[Event], metric: str
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, int]]:
    """Per variant: closed units' values (numerators), denominators, and open units."""
    start, end, delay = WINDOWS[metric]
    variant_of = {e.unit: e.variant for e in exposures}
    values: dict[str, list[float]] = {"control": [], "treatment": []}
    denominators: dict[str, list[float]] = {"control": [], "treatment": []}
    open_units = {"control": 0, "treatment": 0}
    for unit, t0 in first.items():
        variant = variant_of[unit]
        if t0 + end + delay > AS_OF:
            open_units[variant] += 1
            continue

        def inside(t: int, t0: int = t0) -> bool:
            return start <= t - t0 < end

        mine = [e for e in events if e.unit == unit and inside(e.t)]
        if metric == "conv_24h":
            value = float(any(e.type == "purchase" for e in mine))
        elif metric.startswith("rev"):
            value = sum(e.value or 0.0 for e in mine if e.type == "purchase")
        else:
            value = float(sum(e.type == "click" for e in mine))
            slates = sum(x.slate for x in exposures if x.unit == unit and inside(x.t))
            denominators[variant].append(float(slates))
        values[variant].append(value)
    return values, denominators, open_units


def test_windowed_metrics_match_the_definition(engine: Engine) -> None:
    first, exposures, events = _seed(engine)
    as_of = datetime.fromtimestamp(T0 + AS_OF, UTC)
    result = analyze(engine, "windows", as_of=as_of)
    document = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    metrics = {m["metric"]: m for m in document["metrics"]}
    for name in WINDOWS:
        values, denominators, open_units = _oracle(first, exposures, events, name)
        metric = metrics[name]
        assert metric["window"]["open_units"] == open_units
        assert metric["window"]["as_of"] == as_of.isoformat()
        assert 0 < sum(open_units.values()) < UNITS
        arrays = {v: np.asarray(values[v]) for v in values}
        if name == "rev_1h_48h":
            [cap] = metric["capping"]
            assert cap["capped_units"] == {v: int((a > 30).sum()) for v, a in arrays.items()}
            arrays = {v: np.minimum(a, 30.0) for v, a in arrays.items()}
        if name == "rev_p80_24h":
            threshold = np.percentile(np.concatenate(list(arrays.values())), 80)
            [cap] = metric["capping"]
            assert_allclose(cap["threshold"], threshold, rtol=1e-12)
            arrays = {v: np.minimum(a, threshold) for v, a in arrays.items()}
        for est in metric["variants"]:
            v = est["variant"]
            assert est["units"] == len(values[v])
            if name == "ctr_24h":
                expected = arrays[v].sum() / np.sum(denominators[v])
            else:
                expected = arrays[v].mean()
            assert_allclose(est["mean"], expected, rtol=1e-12)
        if name != "ctr_24h":
            [cmp] = metric["comparisons"]
            welch = sps.ttest_ind(arrays["treatment"], arrays["control"], equal_var=False)
            assert_allclose(cmp["p_value"], welch.pvalue, rtol=1e-8)
    # A metric without a window keeps every unit and every event after the first exposure.
    clicks = metrics["clicks_all"]
    assert clicks["window"] is None
    assert sum(est["units"] for est in clicks["variants"]) == UNITS

    out = io.StringIO()
    print_table(result, Console(file=out, width=400, color_system=None))
    assert "events from 1h to 48h after each unit's first exposure, closed 2h after" in (
        out.getvalue()
    )
    assert render_report(result).count("Window: ") == 4


def test_every_window_closes_in_time(engine: Engine) -> None:
    _seed(engine)
    later = datetime.fromtimestamp(T0 + AS_OF + 100 * 24 * H, UTC)
    document = analyze(engine, "windows", as_of=later).to_dict()
    for metric in document["metrics"]:
        if metric["window"] is not None:
            assert set(metric["window"]["open_units"].values()) == {0}
            assert sum(est["units"] for est in metric["variants"]) == UNITS


@pytest.mark.parametrize(
    ("window", "path", "problem"),
    [
        ("{end: 72}", "metrics.0.window.end", "a duration needs its unit"),
        ("{end: 3 days}", "metrics.0.window.end", "not a duration"),
        ("{start: 2d, end: 24h}", "metrics.0.window", "must be before window.end"),
        ("{start: 2d}", "metrics.0.window.end", "required"),
        ("{end: 24h, delay: soon}", "metrics.0.window.delay", "not a duration"),
    ],
)
def test_bad_windows_are_named(window: str, path: str, problem: str) -> None:
    text = "key: k\nvariants:\n  - {key: a, weight: 0.5}\n  - {key: b, weight: 0.5}\n"
    text += f"metrics:\n  - {{name: m, type: proportion, event: purchase, window: {window}}}\n"
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text)
    message = "\n".join(info.value.problems)
    assert f"{path}:" in message and problem in message, message


def test_a_windowed_bandit_reward_is_refused() -> None:
    text = """
key: k
assignment: {type: thompson, reward_metric: conv}
variants: [{key: a}, {key: b}]
metrics:
  - {name: conv, type: proportion, event: purchase, window: {end: 24h}}
"""
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text)
    message = "\n".join(info.value.problems)
    assert "assignment.reward_metric:" in message and "has a window" in message, message
