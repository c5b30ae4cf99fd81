"""Breakdowns by `analysis.dimensions` against oracles computed here from per-unit values.

Real SQLite and PostgreSQL. A seeded experiment of 600 units whose first exposure has a scene
and a day, half of them with history before it, and a users profile column ``segment`` of 26
values (so 6 are pooled as ``other``). Each slice's numbers are recomputed with scipy and
numpy on its units; the SRM with `scipy.stats.chisquare`; the correction with statsmodels.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scipy import stats as sps
from sqlalchemy import Engine, select
from statsmodels.stats.multitest import multipletests

from abplatform.errors import AbplatformError
from abplatform.storage import models as m
from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.catalog import insert_users
from reports.analysis import analyze
from reports.breakdowns import OTHER
from reports.render import render_report
from reports.table import print_table
from simulator.synthetic import experiment_yaml
from tests.factories import (
    ROOT,
    T0,
    Event,
    Exposure,
    cli,
    create_experiment,
    seed_events,
    seed_exposures,
    seed_interactions,
)

KEY = "sliced"
DAY = 86_400
SCENES = ("home_page", "product_detail", "cart_page")
HOSTILE = "<script>alert(1)</script>"
DIMENSIONS = "[scene, new_vs_returning, first_exposure_day, segment]"


@dataclass
class Unit:
    """What the oracle knows of one unit."""

    variant: str
    values: dict[str, str]
    clicks: float = 0.0
    converted: float = 0.0
    impressions: float = 0.0


def _yaml(key: str, dimensions: str, correction: str = "holm", cuped: bool = False) -> str:
    analysis = f"  cuped: {str(cuped).lower()}\n  correction: {correction}\n"
    return experiment_yaml(
        key,
        {"control": 0.5, "treatment": 0.5},
        metrics=("conversion", "clicks_per_user", "ctr"),
        analysis=analysis + f"  dimensions: {dimensions}",
    )


def _seed(
    engine: Engine, dimensions: str = DIMENSIONS, correction: str = "holm", cuped: bool = False
) -> list[Unit]:
    experiment_id = create_experiment(engine, _yaml(KEY, dimensions, correction, cuped))
    rng = np.random.default_rng(16)
    exposures: dict[str, list] = {k: [] for k in ("unit", "variant", "t", "scene", "slate")}
    events: dict[str, list] = {k: [] for k in ("unit", "type", "t")}
    history: dict[str, list] = {k: [] for k in ("unit", "t")}
    users, features = [], []
    units = []
    for i in range(600):
        unit = f"u{i}"
        variant = "treatment" if rng.random() < 0.5 else "control"
        first = int(rng.integers(0, 3 * DAY))
        scene = SCENES[int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
        n_exposures = int(rng.integers(1, 4))
        later = sorted(int(t) for t in first + rng.integers(1, DAY, size=n_exposures - 1))
        impressions = 0
        for j, t in enumerate([first, *later]):
            slate = int(rng.integers(1, 6))
            impressions += slate
            exposures["unit"].append(unit)
            exposures["variant"].append(variant)
            exposures["t"].append(t)
            exposures["scene"].append(scene if j == 0 else SCENES[int(rng.integers(3))])
            exposures["slate"].append(slate)
        lift = 1.3 if variant == "treatment" and scene == "home_page" else 1.0
        clicks = int(rng.poisson(0.3 * impressions * lift))
        buys = int(rng.binomial(clicks, 0.3))
        for type_, count in (("click", clicks), ("purchase", buys)):
            for _ in range(count):
                events["unit"].append(unit)
                events["type"].append(type_)
                events["t"].append(first + int(rng.integers(0, DAY)))
        returning = rng.random() < 0.5
        if returning:  # history before the first exposure
            history["unit"].append(unit)
            history["t"].append(first - int(rng.integers(1, 10 * DAY)))
        elif rng.random() < 0.3:  # history only after it: still new
            history["unit"].append(unit)
            history["t"].append(first + 10)
        segment = None if i % 50 == 0 else f"s{int(rng.integers(0, 26)):02d}"
        if i % 50 != 0:
            users.append(unit)
            features.append({"segment": HOSTILE if segment == "s25" else segment})
        day = datetime.fromtimestamp(T0 + first, UTC).strftime("%Y-%m-%d")
        values = {
            "scene": scene,
            "new_vs_returning": "returning" if returning else "new",
            "first_exposure_day": day,
            "segment": "(missing)" if segment is None else HOSTILE if segment == "s25" else segment,
        }
        units.append(Unit(variant, values, float(clicks), float(buys > 0), float(impressions)))
    with engine.begin() as conn:
        n = len(exposures["unit"])
        bulk_insert(
            conn,
            "exposures",
            {
                "experiment_id": [experiment_id] * n,
                "variant": exposures["variant"],
                "unit_id": exposures["unit"],
                "ts": seconds_to_sql([T0 + t for t in exposures["t"]]),
                "propensity": [0.5] * n,
                "scene": exposures["scene"],
                "slate_size": exposures["slate"],
            },
        )
        n = len(events["unit"])
        bulk_insert(
            conn,
            "events",
            {
                "event_id": [f"e{i}" for i in range(n)],
                "experiment_id": [experiment_id] * n,
                "unit_id": events["unit"],
                "type": events["type"],
                "value": [None] * n,
                "ts": seconds_to_sql([T0 + t for t in events["t"]]),
            },
        )
        n = len(history["unit"])
        bulk_insert(
            conn,
            "interactions",
            {
                "catalog": ["shop"] * n,
                "user_id": history["unit"],
                "item_id": ["i"] * n,
                "type": ["click"] * n,
                "value": [None] * n,
                "ts": seconds_to_sql([T0 + t for t in history["t"]]),
            },
        )
        insert_users(conn, "shop", users, features)
        insert_users(conn, "elsewhere", ["u0"], [{"segment": "not this catalogue"}])
    return units


def _oracle_slices(units: list[Unit], dimension: str) -> dict[str, list[Unit]]:
    """Values of a dimension -> units: the 20 with most units (ties by value), then other."""
    counts = Counter(u.values[dimension] for u in units)
    ranked = sorted(counts, key=lambda v: (-counts[v], v))
    kept = set(ranked[:20])
    out: dict[str, list[Unit]] = {}
    for u in units:
        value = u.values[dimension]
        out.setdefault(value if value in kept else OTHER, []).append(u)
    return out


def _welch(t: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    return float(t.mean() - c.mean()), float(sps.ttest_ind(t, c, equal_var=False).pvalue)


def _delta(t: list[Unit], c: list[Unit]) -> tuple[float, float]:
    """Difference of CTRs (ratio of totals) and its delta-method z-test p-value."""

    def ratio_and_var(group: list[Unit]) -> tuple[float, float]:
        x = np.array([u.clicks for u in group])
        y = np.array([u.impressions for u in group])
        r = x.sum() / y.sum()
        return r, float(np.var(x - r * y, ddof=1) / (len(x) * y.mean() ** 2))

    (rt, vt), (rc, vc) = ratio_and_var(t), ratio_and_var(c)
    diff = rt - rc
    return diff, float(2 * sps.norm.sf(abs(diff) / np.sqrt(vt + vc)))


@pytest.fixture
def seeded(engine: Engine) -> list[Unit]:
    return _seed(engine)


def test_every_slice_matches_the_analysis_of_its_units(engine: Engine, seeded: list[Unit]) -> None:
    result = analyze(engine, KEY, ranking=False)
    assert result.breakdowns is not None
    document = result.to_dict()["breakdowns"]
    assert [d["dimension"] for d in document["dimensions"]] == [
        "scene",
        "new_vs_returning",
        "first_exposure_day",
        "segment",
    ]
    for breakdown in result.breakdowns.dimensions:
        expected = _oracle_slices(seeded, breakdown.dimension)
        assert {s.value for s in breakdown.slices} == set(expected)
        for piece in breakdown.slices:
            members = expected[piece.value]
            t = [u for u in members if u.variant == "treatment"]
            c = [u for u in members if u.variant == "control"]
            assert dict(piece.units) == {"control": len(c), "treatment": len(t)}
            chi = sps.chisquare([len(c), len(t)], [len(members) / 2] * 2)
            np.testing.assert_allclose(piece.srm.p_value, chi.pvalue, rtol=1e-10)
            np.testing.assert_allclose(piece.srm.chi2, chi.statistic, rtol=1e-10)
            by_name = {metric.metric: metric.comparisons[0] for metric in piece.metrics}
            for name, field in (("conversion", "converted"), ("clicks_per_user", "clicks")):
                diff, p = _welch(
                    np.array([getattr(u, field) for u in t]),
                    np.array([getattr(u, field) for u in c]),
                )
                np.testing.assert_allclose(by_name[name].diff, diff, rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(by_name[name].p_value, p, rtol=1e-7)
            diff, p = _delta(t, c)
            np.testing.assert_allclose(by_name["ctr"].diff, diff, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(by_name["ctr"].p_value, p, rtol=1e-7)


def test_values_beyond_twenty_are_pooled_as_other(engine: Engine, seeded: list[Unit]) -> None:
    result = analyze(engine, KEY, ranking=False)
    assert result.breakdowns is not None
    segment = result.breakdowns.dimensions[3]
    counts = Counter(u.values["segment"] for u in seeded)
    assert segment.values == len(counts) == 27  # 26 segments and (missing)
    assert len(segment.slices) == 21
    other = segment.slices[-1]
    assert other.value == OTHER
    assert other.pooled_values == 7
    ranked = sorted(counts, key=lambda v: (-counts[v], v))
    assert [s.value for s in segment.slices[:20]] == ranked[:20]
    assert sum(other.units.values()) == sum(counts[v] for v in ranked[20:])
    days = [s.value for s in result.breakdowns.dimensions[2].slices]
    assert days == sorted(days) == sorted({u.values["first_exposure_day"] for u in seeded})


@pytest.mark.parametrize("method", ["holm", "bh"])
def test_correction_runs_over_slices_metrics_and_variants(engine: Engine, method: str) -> None:
    _seed(engine, correction=method)
    result = analyze(engine, KEY, ranking=False)
    assert result.breakdowns is not None
    assert result.breakdowns.correction == method
    assert "slices x metrics x variants" in result.breakdowns.family
    statsmodels_name = {"holm": "holm", "bh": "fdr_bh"}[method]
    for breakdown in result.breakdowns.dimensions:
        comparisons = [
            cmp
            for piece in breakdown.slices
            for metric in piece.metrics
            for cmp in metric.comparisons
        ]
        raw = [cmp.p_value for cmp in comparisons]
        assert None not in raw
        assert breakdown.family_size == len(raw) == 3 * len(breakdown.slices)
        expected = multipletests(raw, method=statsmodels_name)[1]
        got = [cmp.p_value_adjusted for cmp in comparisons]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        for cmp, p in zip(comparisons, expected, strict=True):
            significant = p < result.alpha
            assert cmp.decision.startswith("significant") == significant


def test_unknown_dimension_names_the_field_and_the_valid_ones(engine: Engine) -> None:
    _seed(engine, dimensions="[scene, nope]")
    with pytest.raises(AbplatformError) as caught:
        analyze(engine, KEY, ranking=False)
    assert str(caught.value).startswith(
        "analysis.dimensions.1: unknown dimension (got 'nope'); valid: scene, "
        "new_vs_returning, first_exposure_day, segment"
    )


def test_no_dimensions_no_breakdowns_key(engine: Engine) -> None:
    _seed(engine, dimensions="[]")
    result = analyze(engine, KEY, ranking=False)
    assert result.breakdowns is None
    assert "breakdowns" not in result.to_dict()


def test_table_html_and_json_show_the_breakdowns_escaped(
    engine: Engine, seeded: list[Unit]
) -> None:
    result = analyze(engine, KEY, ranking=False)
    json.dumps(result.to_dict(), allow_nan=False)
    html = render_report(result)
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'class="breakdowns"' in html
    assert "slices x metrics x variants" in html
    console = Console(file=io.StringIO(), width=140, color_system=None)
    print_table(result, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Breakdown by scene" in text
    assert "home_page" in text and "returning" in text


def test_simulated_run_breaks_down_by_scene_through_the_cli(tmp_path: Path) -> None:
    """examples/homepage_popularity.yaml with three scenes, 1,500 users, via the command line."""
    text = (ROOT / "examples" / "homepage_popularity.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "simulation: {",
        "simulation: {scenes: {home_page: 0.6, product_detail: 0.3, cart_page: 0.1}, ",
    )
    text += "analysis:\n  dimensions: [scene, new_vs_returning, first_exposure_day]\n"
    path = tmp_path / "sliced.yaml"
    path.write_text(text, encoding="utf-8")
    url = f"sqlite:///{tmp_path}/sliced.db"
    out = cli("simulate", str(path), "--db", url, "--users", "1500", "--seed", "5")
    assert out.returncode == 0, out.stderr
    analysis = cli("analyze", "homepage_popularity", "--db", url, "--json")
    assert analysis.returncode == 0, analysis.stderr
    document = json.loads(analysis.stdout)
    scene, returning, day = document["breakdowns"]["dimensions"]
    assert scene["dimension"] == "scene"
    assert {s["value"] for s in scene["slices"]} == set(SCENES)
    for breakdown in (scene, returning, day):
        for variant, n in document["units"].items():  # the slices partition the units
            assert sum(s["units"][variant] for s in breakdown["slices"]) == n
        for piece in breakdown["slices"]:
            observed = [piece["units"]["control"], piece["units"]["treatment"]]
            chi = sps.chisquare(observed, [sum(observed) / 2] * 2)
            np.testing.assert_allclose(piece["srm"]["p_value"], chi.pvalue, rtol=1e-10)
            assert [m["metric"] for m in piece["metrics"]] == [
                m["metric"] for m in document["metrics"]
            ]
    assert {s["value"] for s in returning["slices"]} <= {"new", "returning"}
    table = cli("analyze", "homepage_popularity", "--db", url)
    assert table.returncode == 0, table.stderr
    assert "Breakdown by scene" in table.stdout and "product_detail" in table.stdout


def _copy_units(engine: Engine, key: str, kept: set[str]) -> None:
    """Copy the exposures and events of the `kept` units of KEY into experiment `key`."""
    new_id = create_experiment(engine, _yaml(key, "[]", cuped=True))
    x, ev = m.Exposure.__table__, m.Event.__table__
    with engine.begin() as conn:
        old_id = conn.execute(select(m.Experiment.id).where(m.Experiment.key == KEY)).scalar_one()
        rows = conn.execute(
            select(x.c.variant, x.c.unit_id, x.c.ts, x.c.scene, x.c.slate_size).where(
                x.c.experiment_id == old_id, x.c.unit_id.in_(sorted(kept))
            )
        ).all()
        bulk_insert(
            conn,
            "exposures",
            {
                "experiment_id": [new_id] * len(rows),
                "variant": [r.variant for r in rows],
                "unit_id": [r.unit_id for r in rows],
                "ts": [r.ts for r in rows],
                "propensity": [0.5] * len(rows),
                "scene": [r.scene for r in rows],
                "slate_size": [r.slate_size for r in rows],
            },
        )
        rows = conn.execute(
            select(ev.c.unit_id, ev.c.type, ev.c.ts).where(
                ev.c.experiment_id == old_id, ev.c.unit_id.in_(sorted(kept))
            )
        ).all()
        bulk_insert(
            conn,
            "events",
            {
                "event_id": [f"{key}-{i}" for i in range(len(rows))],
                "experiment_id": [new_id] * len(rows),
                "unit_id": [r.unit_id for r in rows],
                "type": [r.type for r in rows],
                "value": [None] * len(rows),
                "ts": [r.ts for r in rows],
            },
        )


def test_a_slice_is_the_overall_analysis_of_its_units_cuped_included(engine: Engine) -> None:
    """The home_page slice equals the analysis of an experiment holding only those units."""
    units = _seed(engine, dimensions="[scene]", cuped=True)
    kept = {f"u{i}" for i, u in enumerate(units) if u.values["scene"] == "home_page"}
    _copy_units(engine, "home_only", kept)
    result = analyze(engine, KEY, ranking=False)
    overall = analyze(engine, "home_only", ranking=False)
    assert result.breakdowns is not None
    (piece,) = [s for s in result.breakdowns.dimensions[0].slices if s.value == "home_page"]
    assert dict(piece.units) == dict(overall.units)
    assert piece.srm == overall.srm
    clicks = next(m for m in overall.metrics if m.metric == "clicks_per_user")
    assert clicks.cuped is not None and clicks.cuped.applied  # the history is the covariate
    for mine, theirs in zip(piece.metrics, overall.metrics, strict=True):
        ignored = ("ground_truth", "comparisons")
        assert {k: v for k, v in mine.to_dict().items() if k not in ignored} == {
            k: v for k, v in theirs.to_dict().items() if k not in ignored
        }
        for a, b in zip(mine.comparisons, theirs.comparisons, strict=True):
            # Only the correction family differs (this dimension's slices vs the metrics).
            left = dataclasses.replace(a, p_value_adjusted=None, decision="keep running")
            right = dataclasses.replace(b, p_value_adjusted=None, decision="keep running")
            assert left == right


def test_new_vs_returning_follows_the_pre_period_window(engine: Engine) -> None:
    """With analysis.pre_period only history (or the experiment's own events) inside the
    window and before the first exposure makes a unit returning."""
    start = datetime.fromtimestamp(T0 - 10 * DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = datetime.fromtimestamp(T0 + DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    yaml = experiment_yaml(
        KEY,
        {"control": 0.5, "treatment": 0.5},
        metrics=("clicks_per_user",),
        analysis=f"  pre_period: {{start: '{start}', end: '{end}'}}\n"
        "  dimensions: [new_vs_returning]",
    )
    experiment_id = create_experiment(engine, yaml)
    # a: history before the window; b: in it; c: an own event in it; d: in it, after exposure
    seed_exposures(
        engine,
        experiment_id,
        [
            Exposure(u, v, 100, 5)
            for u, v in zip("abcde", ["control", "treatment"] * 3, strict=False)
        ],
    )
    seed_interactions(
        engine,
        [
            ("shop", "a", "click", -20 * DAY, None),
            ("shop", "b", "click", -DAY, None),
            ("shop", "d", "click", 200, None),
            ("other", "e", "click", -DAY, None),  # another catalogue's history
        ],
    )
    seed_events(engine, experiment_id, [Event("c", "click", 50)], "pre")
    result = analyze(engine, KEY, ranking=False)
    assert result.breakdowns is not None
    slices = {s.value: dict(s.units) for s in result.breakdowns.dimensions[0].slices}
    # a, d, e (control, treatment, control) are new; b, c (treatment, control) returning
    assert slices == {
        "new": {"control": 2, "treatment": 1},
        "returning": {"control": 1, "treatment": 1},
    }
