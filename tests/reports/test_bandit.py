"""Bandit analysis: IPW estimators against hand-computed values, their bias, and the outputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from abplatform.assignment.posteriors import RewardStats
from abplatform.assignment.thompson import ThompsonPolicy
from abplatform.config import load_experiment_text
from abplatform.config.models import ProportionMetric
from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.db import open_database, transaction
from abplatform.storage.repository import save_experiment
from reports.analysis import analyze
from reports.arm_sums import arm_sums
from reports.bandit import allocation_check
from reports.ipw import ArmSums, hajek, horvitz_thompson
from simulator.runner import simulate
from tests.factories import TagChecker, bandit_config

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_780_000_000

# Arm a: rewards 1, 0, 1 with propensities 0.5, 0.25, 0.8; arm b: 0, 1 with 0.5, 0.2;
# N = 5 units in the context.
A = ArmSums.from_values("", "a", [1, 0, 1], [0.5, 0.25, 0.8])
B = ArmSums.from_values("", "b", [0, 1], [0.5, 0.2])


def test_horvitz_thompson_by_hand() -> None:
    # a: z = y/p over the 5 units = [2, 0, 1.25, 0, 0]; mean = 3.25 / 5 = 0.65;
    # sum (z - 0.65)^2 = 1.35^2 + 3 * 0.65^2 + 0.6^2 = 3.45; var = 3.45 / 25 = 0.138.
    est = horvitz_thompson(A, 5)
    assert est.mean == pytest.approx(0.65, rel=1e-12)
    assert est.se == pytest.approx(math.sqrt(0.138), rel=1e-12)
    assert est.ci == pytest.approx(
        (0.65 - 1.959963984540054 * math.sqrt(0.138), 0.65 + 1.959963984540054 * math.sqrt(0.138))
    )
    # b: z = [0, 5, 0, 0, 0]; mean = 1; sum (z - 1)^2 = 4 + 16 = 20; var = 20 / 25 = 0.8.
    est = horvitz_thompson(B, 5)
    assert est.mean == pytest.approx(1.0, rel=1e-12)
    assert est.se == pytest.approx(math.sqrt(0.8), rel=1e-12)


def test_hajek_by_hand() -> None:
    # a: sum 1/p = 2 + 4 + 1.25 = 7.25; mean = 3.25 / 7.25 = 13/29;
    # sum (y - 13/29)^2 / p^2 = (16/29)^2 * 4 + (13/29)^2 * 16 + (16/29)^2 * 1.5625 = 4128/841;
    # var = 4128/841 / 7.25^2 = 66048 / 707281.
    est = hajek(A)
    assert est.mean == pytest.approx(13 / 29, rel=1e-12)
    assert est.se == pytest.approx(math.sqrt(66048 / 707281), rel=1e-12)
    # b: sum 1/p = 7; mean = 5/7; var = ((5/7)^2 * 4 + (2/7)^2 * 25) / 49 = 200 / 2401.
    est = hajek(B)
    assert est.mean == pytest.approx(5 / 7, rel=1e-12)
    assert est.se == pytest.approx(math.sqrt(200 / 2401), rel=1e-12)


def test_estimators_need_data() -> None:
    empty = ArmSums.from_values("", "a", [], [])
    assert horvitz_thompson(empty, 5).mean is None
    assert hajek(empty).mean is None
    assert horvitz_thompson(A, 1).mean is None


THOMPSON = """
key: ipw_by_hand
assignment: {type: thompson, reward_metric: bought}
variants:
  - {key: a}
  - {key: b}
metrics:
  - {name: bought, type: proportion, event: purchase}
"""


def test_sql_sums_match_the_hand_dataset(db_url: str) -> None:
    """The same five units written as exposures and events: SQL gives the sums of A and B."""
    engine = open_database(db_url)
    config = load_experiment_text(THOMPSON)
    with transaction(engine) as session:
        experiment_id = save_experiment(session, config, "default").id
    # (unit, arm, propensity, exposure times); u6 saw both arms and is excluded.
    exposures = [
        ("u1", "a", 0.5, [0, 50]),
        ("u2", "a", 0.25, [10]),
        ("u3", "a", 0.8, [20]),
        ("u4", "b", 0.5, [30]),
        ("u5", "b", 0.2, [40]),
        ("u6", "a", 0.5, [5]),
        ("u6", "b", 0.5, [6]),
    ]
    rows = [(u, arm, p, t) for u, arm, p, times in exposures for t in times]
    # u4's purchase comes before its first exposure: it does not count (y = 0).
    events = [
        ("u1", "purchase", 60),
        ("u1", "purchase", 70),
        ("u3", "purchase", 25),
        ("u3", "click", 21),
        ("u4", "purchase", 1),
        ("u5", "purchase", 45),
        ("u6", "purchase", 7),
    ]
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "exposures",
            {
                "experiment_id": [experiment_id] * len(rows),
                "variant": [r[1] for r in rows],
                "unit_id": [r[0] for r in rows],
                "ts": seconds_to_sql([T0 + r[3] for r in rows]),
                "propensity": [r[2] for r in rows],
                "slate_size": [3] * len(rows),
                "weight_version": [0] * len(rows),
            },
        )
        bulk_insert(
            conn,
            "events",
            {
                "event_id": [f"e{i}" for i in range(len(events))],
                "experiment_id": [experiment_id] * len(events),
                "unit_id": [e[0] for e in events],
                "type": [e[1] for e in events],
                "value": [None] * len(events),
                "ts": seconds_to_sql([T0 + e[2] for e in events]),
            },
        )
    metric = config.metrics[0]
    assert isinstance(metric, ProportionMetric)
    with engine.connect() as conn:
        sums, excluded = arm_sums(conn, experiment_id, metric, "unit")
    assert excluded == 1
    assert [(s.arm, s.units) for s in sums] == [("a", 3), ("b", 2)]
    for got, want in zip(sums, (A, B), strict=True):
        for name in ("inv_p", "inv_p2", "y", "y2", "y_p", "y_p2", "y2_p2", "min_propensity"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-12), name
    # Through `analyze`: no weight history or posterior state yet, the estimates still come.
    bandit = analyze(engine, "ipw_by_hand", ranking=False).to_dict()["bandit"]
    arm_a = next(row for row in bandit["arms"] if row["arm"] == "a")
    assert arm_a["ipw_mean"] == pytest.approx(13 / 29, rel=1e-12)
    assert arm_a["ht_mean"] == pytest.approx(0.65, rel=1e-12)
    assert arm_a["naive_mean"] == pytest.approx(2 / 3, rel=1e-12)
    assert arm_a["weight"] is None and arm_a["p_best"] is None
    assert bandit["excluded_units"] == 1
    engine.dispose()


def test_ipw_is_unbiased_where_the_naive_mean_is_not() -> None:
    """Units drift (early ones buy more) while Thompson sampling shifts traffic to arm a.

    The truth of an arm is the mean of its success probability over all units. Over R
    seeded replications the mean estimate of IPW must lie within 4 standard errors of the
    truth; the naive mean's bias must exceed 4 standard errors.
    """
    n_units, batch, replications = 2000, 200, 200
    base = np.where(np.arange(n_units) < n_units // 2, 0.5, 0.1)
    p = {"a": base + 0.1, "b": base}
    truth = {arm: float(values.mean()) for arm, values in p.items()}
    estimates: dict[str, list[float]] = {"ht": [], "hajek": [], "naive": []}
    covered = 0
    for r in range(replications):
        rng = np.random.default_rng([2026, r])
        policy = ThompsonPolicy(["a", "b"], min_weight=0.05, seed=r)
        arm = np.empty(n_units, dtype=np.int64)
        propensity = np.empty(n_units)
        reward = np.empty(n_units)
        for lo in range(0, n_units, batch):
            weights = policy.weights()
            chosen = (rng.random(batch) >= weights[0]).astype(np.int64)  # 0 = a, 1 = b
            units = np.arange(lo, lo + batch)
            arm[units] = chosen
            propensity[units] = weights[chosen]
            prob = np.where(chosen == 0, p["a"][units], p["b"][units])
            reward[units] = rng.random(batch) < prob
            policy.update(
                {
                    key: RewardStats.binary(
                        int((chosen == i).sum()), int(reward[units][chosen == i].sum())
                    )
                    for i, key in enumerate(("a", "b"))
                }
            )
        mine = arm == 0
        sums = ArmSums.from_values("", "a", reward[mine], propensity[mine])
        ht = horvitz_thompson(sums, n_units)
        assert ht.mean is not None and ht.ci is not None
        estimates["ht"].append(ht.mean)
        estimates["hajek"].append(float(hajek(sums).mean or math.nan))
        estimates["naive"].append(float(reward[mine].mean()))
        covered += ht.ci[0] <= truth["a"] <= ht.ci[1]
    for name in ("ht", "hajek"):
        values = np.array(estimates[name])
        se = values.std(ddof=1) / math.sqrt(replications)
        assert abs(values.mean() - truth["a"]) < 4 * se, (name, values.mean(), truth["a"], se)
    naive = np.array(estimates["naive"])
    se = naive.std(ddof=1) / math.sqrt(replications)
    assert abs(naive.mean() - truth["a"]) > 4 * se
    # Coverage of the 95% HT interval: SE of a share at 0.95 over 200 runs is 0.0154.
    assert covered / replications > 0.95 - 4 * 0.0154


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ABPLATFORM_DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "abplatform.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_analyze_json_and_report_of_a_simulated_bandit(db_url: str, tmp_path: Path) -> None:
    engine = open_database(db_url)
    simulate(engine, bandit_config(min_weight=0.05))
    engine.dispose()
    done = cli("analyze", "sim_bandit", "--db", db_url, "--json", "--no-ranking")
    assert done.returncode == 0, done.stderr
    bandit = json.loads(done.stdout)["bandit"]
    assert bandit["reward_metric"] == "purchase_rate" and bandit["unit"] == "unit"
    assert {row["arm"] for row in bandit["arms"]} == {"pop", "rnd", "pop_cat"}
    weights = [row["weight"] for row in bandit["arms"]]
    assert sum(weights) == pytest.approx(1.0) and min(weights) >= 0.05 - 1e-12
    assert sum(row["p_best"] for row in bandit["arms"]) == pytest.approx(1.0)
    assert bandit["versions"] == len(bandit["allocation"]) > 3
    regret = bandit["regret"]
    assert 0 <= regret["total"] < regret["fixed_total"]
    for row in bandit["arms"]:
        assert row["ipw_ci"][0] <= row["ipw_mean"] <= row["ipw_ci"][1]
        assert row["truth"] is not None

    table = cli("analyze", "sim_bandit", "--db", db_url, "--no-ranking")
    assert table.returncode == 0, table.stderr
    assert "bandit: purchase_rate per unit" in table.stdout
    assert "cumulative regret" in table.stdout

    out = tmp_path / "bandit.html"
    done = cli("report", "sim_bandit", "--db", db_url, "-o", str(out))
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert "Bandit allocation" in html and "Cumulative regret" in html
    assert html.count("<polyline") == 3 + 2  # one line per arm, bandit and fixed regret
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    checker = TagChecker()
    checker.feed(html)
    checker.close()
    assert checker.problems == []


def test_allocation_check_by_hand(db_url: str) -> None:
    """100 units drawn 50/50 in version 0 land 60/40; 3 more carry a version never logged.

    E = (50, 50), Cov = diag(E) - 100 w w^T = [[25, -25], [-25, 25]], O - E = (10, -10):
    chi2 = 4 on 1 degree of freedom, the binomial z^2 = 10^2 / (100 * 0.25).
    """
    engine = open_database(db_url)
    config = load_experiment_text(THOMPSON)
    with transaction(engine) as session:
        experiment_id = save_experiment(session, config, "default").id
    arms = ["a"] * 60 + ["b"] * 40 + ["a"] * 3
    versions = [0] * 100 + [7] * 3
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "exposures",
            {
                "experiment_id": [experiment_id] * len(arms),
                "variant": arms,
                "unit_id": [f"u{i}" for i in range(len(arms))],
                "ts": seconds_to_sql([T0 + i for i in range(len(arms))]),
                "propensity": [0.5] * len(arms),
                "slate_size": [3] * len(arms),
                "weight_version": versions,
            },
        )
        bulk_insert(
            conn,
            "bandit_weights",
            {
                "experiment_id": [experiment_id] * 2,
                "version": [0, 0],
                "context": ["", ""],
                "arm": ["a", "b"],
                "weight": [0.5, 0.5],
                "p_best": [0.5, 0.5],
                "units": [0, 0],
                "computed_at": seconds_to_sql([T0, T0]),
            },
        )
    with engine.connect() as conn:
        check = allocation_check(conn, experiment_id, ["a", "b"], "unit")
    assert check.chi2 == pytest.approx(4.0, rel=1e-9)
    assert check.df == 1
    assert check.p_value == pytest.approx(0.04550026389635842, rel=1e-9)  # scipy chi2.sf(4, 1)
    assert check.expected == pytest.approx({"a": 50.0, "b": 50.0})
    assert (check.units_checked, check.units_unchecked) == (100, 3)
    assert not check.mismatch
    engine.dispose()


def test_allocation_check_flags_lost_units(sqlite_url: str) -> None:
    """A simulated bandit passes; dropping half of one arm's units is flagged."""
    engine = open_database(sqlite_url)
    simulate(engine, bandit_config(min_weight=0.05))
    first = analyze(engine, "sim_bandit", ranking=False).to_dict()["bandit"]["allocation_check"]
    assert first["units_checked"] > 1000 and first["units_unchecked"] == 0
    assert not first["mismatch"]
    with engine.begin() as conn:
        conn.execute(
            text(
                "DELETE FROM exposures WHERE variant = 'pop_cat' AND unit_id IN "
                "(SELECT unit_id FROM bandit_assignments WHERE arm = 'pop_cat' "
                "AND CAST(SUBSTR(unit_id, 2) AS INTEGER) % 2 = 0)"
            )
        )
    result = analyze(engine, "sim_bandit", ranking=False)
    check = result.to_dict()["bandit"]["allocation_check"]
    assert check["mismatch"]
    assert any("allocation mismatch" in w for w in result.warnings)
    engine.dispose()
