"""The simulator plays a Thompson-sampling experiment: batched weights, propensities, regret."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from abplatform.storage import models as m
from abplatform.storage.db import open_database, transaction
from simulator.runner import simulate
from tests.factories import bandit_config, small_config


def bandit_rows(engine: Engine) -> dict[str, Any]:
    """Everything the run wrote that is specific to bandits."""
    with transaction(engine) as session:
        weights = session.execute(
            select(
                m.BanditWeight.version,
                m.BanditWeight.context,
                m.BanditWeight.arm,
                m.BanditWeight.weight,
                m.BanditWeight.p_best,
                m.BanditWeight.units,
            ).order_by(m.BanditWeight.version, m.BanditWeight.context, m.BanditWeight.arm)
        ).all()
        state = session.execute(
            select(
                m.BanditState.context,
                m.BanditState.arm,
                m.BanditState.units,
                m.BanditState.reward_sum,
            ).order_by(m.BanditState.context, m.BanditState.arm)
        ).all()
        exposures = session.execute(
            select(
                m.Exposure.unit_id,
                m.Exposure.scene,
                m.Exposure.variant,
                m.Exposure.propensity,
                m.Exposure.weight_version,
            ).order_by(m.Exposure.id)
        ).all()
        sticky = session.scalar(select(func.count()).select_from(m.BanditAssignment))
        run = session.scalars(select(m.SimulationRun)).one()
        return {
            "weights": [tuple(r) for r in weights],
            "state": [tuple(r) for r in state],
            "exposures": [tuple(r) for r in exposures],
            "sticky": sticky,
            "summary": run.summary,
            "truth": run.ground_truth,
        }


def test_sticky_bandit_writes_versions_propensities_and_state(db_url: str) -> None:
    engine = open_database(db_url)
    result = simulate(engine, bandit_config())
    rows = bandit_rows(engine)
    summary = rows["summary"]["bandit"]
    versions = sorted({v for v, *_ in rows["weights"]})
    assert versions == list(range(summary["versions"]))
    assert len(versions) > 3
    # Version 0 is the equal split; every version's weights sum to 1.
    first = [w for v, _, _, w, _, _ in rows["weights"] if v == 0]
    assert first == pytest.approx([1 / 3] * 3)
    for version in versions:
        in_force = [w for v, _, _, w, _, _ in rows["weights"] if v == version]
        assert len(in_force) == 3
        assert sum(in_force) == pytest.approx(1.0, abs=1e-9)

    exposures = rows["exposures"]
    assert len(exposures) == sum(t.exposures for t in result.tallies.values())
    weight_of = {(v, arm): w for v, _, arm, w, _, _ in rows["weights"]}
    by_unit: dict[str, set[tuple[str, float, int]]] = {}
    for unit, _, variant, propensity, version in exposures:
        # The propensity is the chosen arm's weight in the version the decision used.
        assert version is not None
        assert propensity == pytest.approx(weight_of[(version, variant)])
        by_unit.setdefault(unit, set()).add((variant, propensity, version))
    assert all(len(decisions) == 1 for decisions in by_unit.values())  # sticky
    assert rows["sticky"] == len(by_unit) == summary["units"]

    # The final posterior counts every unit once, with its 0/1 reward.
    assert sum(units for _, _, units, _ in rows["state"]) == len(by_unit)
    assert all(0 <= total <= units for _, _, units, total in rows["state"])

    # The allocation moves: the best arm (per the simulator's truth) ends above 1/3.
    truth = rows["truth"]["bandit"]
    best = truth["best"][""]
    assert best != "rnd"
    last = max(versions)
    assert weight_of[(last, best)] > 1 / 3
    assert weight_of[(last, "rnd")] < 1 / 3
    engine.dispose()


def test_bandit_run_is_deterministic_and_a_rerun_replaces_it(db_url: str) -> None:
    engine = open_database(db_url)
    first = simulate(engine, bandit_config())
    before = bandit_rows(engine)
    second = simulate(engine, bandit_config())
    after = bandit_rows(engine)
    assert first.tallies == second.tallies
    assert before["weights"] == after["weights"]
    assert before["state"] == after["state"]
    assert before["exposures"] == after["exposures"]
    assert before["sticky"] == after["sticky"]
    other = simulate(engine, bandit_config(), seed=12)
    assert other.tallies != first.tallies
    engine.dispose()


def test_regret_is_non_negative_and_below_the_fixed_split(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    simulate(engine, bandit_config())
    rows = bandit_rows(engine)
    regret = rows["summary"]["bandit"]["regret"]
    bandit, fixed = np.array(regret["bandit"]), np.array(regret["fixed"])
    assert np.all(np.diff(bandit) >= 0) and bandit[0] >= 0  # cumulative, non-negative
    assert np.all(np.diff(regret["units"]) > 0)
    # The fixed split pays the mean gap on every unit; the bandit stops paying for `rnd`.
    values = rows["truth"]["bandit"]["arms"][""]
    gap = max(values.values()) - float(np.mean(list(values.values())))
    assert fixed[-1] == pytest.approx(gap * regret["units"][-1])
    assert bandit[-1] < 0.6 * fixed[-1]
    engine.dispose()


def test_contextual_bandit_has_one_posterior_per_scene(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    simulate(engine, bandit_config(context="scene", min_weight=0.05))
    rows = bandit_rows(engine)
    contexts = {c for _, c, *_ in rows["weights"]}
    assert contexts == {"home_page", "product_detail"}
    # All contexts of an update share its version.
    per_version: dict[int, set[str]] = {}
    for version, context, *_ in rows["weights"]:
        per_version.setdefault(version, set()).add(context)
    assert all(found == contexts for found in per_version.values())
    assert all(w >= 0.05 - 1e-12 for *_, w, _, _ in rows["weights"])
    weight_of = {(v, c, arm): w for v, c, arm, w, _, _ in rows["weights"]}
    for _, scene, variant, propensity, version in rows["exposures"]:
        assert propensity == pytest.approx(weight_of[(version, scene, variant)])
    # Sticky per (user, scene): one decision per pair.
    pairs = {(unit, scene) for unit, scene, *_ in rows["exposures"]}
    assert rows["sticky"] == len(pairs)
    assert set(rows["truth"]["bandit"]["arms"]) == contexts
    engine.dispose()


def test_per_request_bandit_draws_every_session(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    result = simulate(engine, bandit_config(sticky=False))
    rows = bandit_rows(engine)
    assert rows["sticky"] == 0
    exposures = sum(t.exposures for t in result.tallies.values())
    assert rows["summary"]["bandit"]["units"] == exposures
    assert sum(units for _, _, units, _ in rows["state"]) == exposures
    assert rows["truth"]["bandit"]["unit"] == "request"
    engine.dispose()


def test_hashed_runs_write_no_bandit_rows(sqlite_url: str) -> None:
    engine = open_database(sqlite_url)
    simulate(engine, small_config())
    with transaction(engine) as session:
        assert session.scalar(select(func.count()).select_from(m.BanditWeight)) == 0
        assert session.scalar(select(func.count()).select_from(m.BanditState)) == 0
        versions = set(session.scalars(select(m.Exposure.weight_version).distinct()))
        assert versions == {None}
        run = session.scalars(select(m.SimulationRun)).one()
        assert run.summary is not None and "bandit" not in run.summary
    engine.dispose()
