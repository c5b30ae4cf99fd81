"""Tests of the one per-unit definition (`reports.units`) and the typed results' JSON form."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import Engine, select

from abplatform.bandit import arm_totals, lowest_weights, weight_rows
from abplatform.config.loader import load_experiment_text
from abplatform.config.models import MeanMetric
from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.db import open_database, transaction
from abplatform.storage.repository import save_experiment
from reports.arm_sums import arm_sums
from reports.results import BanditArm, SequentialSummary
from reports.units import unit_values
from tests.factories import seed_tiny

T0 = 1_780_000_000


def test_unit_values_of_the_tiny_experiment(db_url: str) -> None:
    """One row per unit with its per-unit values, as hand-computed in test_analysis."""
    engine = open_database(db_url)
    experiment_id = seed_tiny(engine)
    keys = [("click", "count"), ("purchase", "any"), ("purchase", "sum"), ("impression", "count")]
    values = unit_values(experiment_id, keys, variants=["control", "treatment"])
    table = values.table
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.unit_key, table.c.code, *(values.value(k) for k in keys)).where(
                table.c.code == table.c.code_max, table.c.code >= 0
            )
        ).all()
    got = {str(r[0]): (int(r[1]), *(float(v) for v in r[2:])) for r in rows}
    assert got == {
        "c1": (0, 2.0, 1.0, 20.0, 10.0),
        "c2": (0, 2.0, 0.0, 0.0, 4.0),
        "c3": (0, 0.0, 0.0, 0.0, 6.0),
        "t1": (1, 3.0, 1.0, 30.0, 15.0),
        "t2": (1, 1.0, 1.0, 15.5, 10.0),
        "t3": (1, 0.0, 0.0, 0.0, 3.0),
    }
    engine.dispose()


PER_REQUEST = """
key: per_request
assignment: {type: thompson, reward_metric: spend, sticky: false}
variants:
  - {key: a}
  - {key: b}
metrics:
  - {name: spend, type: mean, event: purchase, value: sum}
"""


def _seed_requests(engine: Engine) -> int:
    """Four requests of one user: two per arm, purchases logged against two of them."""
    with transaction(engine) as session:
        experiment_id = save_experiment(session, load_experiment_text(PER_REQUEST), "default").id
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "exposures",
            {
                "id": [101, 102, 103, 104],
                "experiment_id": [experiment_id] * 4,
                "variant": ["a", "a", "b", "b"],
                "unit_id": ["u1"] * 4,
                "ts": seconds_to_sql([T0, T0 + 1, T0 + 2, T0 + 3]),
                "propensity": [0.5, 0.25, 0.5, 0.75],
                "slate_size": [3] * 4,
                "weight_version": [0, 1, 0, 1],
            },
        )
        bulk_insert(
            conn,
            "events",
            {
                "event_id": ["e1", "e2", "e3"],
                "experiment_id": [experiment_id] * 3,
                "exposure_id": [101, 101, 104],
                "unit_id": ["u1"] * 3,
                "type": ["purchase"] * 3,
                "value": [2.0, 3.0, 4.0],
                "ts": seconds_to_sql([T0 + 5, T0 + 6, T0 + 7]),
            },
        )
        bulk_insert(
            conn,
            "bandit_weights",
            {
                "experiment_id": [experiment_id] * 6,
                "version": [0, 0, 1, 1, 2, 2],
                "context": [""] * 6,
                "arm": ["a", "b"] * 3,
                "weight": [0.5, 0.5, 0.25, 0.75, 0.2, 0.8],
                "p_best": [0.5, 0.5, 0.2, 0.8, 0.1, 0.9],
                "units": [0, 0, 2, 2, 4, 4],
                "computed_at": seconds_to_sql([T0] * 6),
            },
        )
        bulk_insert(
            conn,
            "bandit_state",
            {
                "experiment_id": [experiment_id] * 2,
                "context": ["", ""],
                "arm": ["a", "b"],
                "units": [2, 2],
                "reward_sum": [5.0, 4.0],
                "reward_sq_sum": [13.0, 16.0],
                "updated_at": seconds_to_sql([T0] * 2),
            },
        )
    return experiment_id


def test_a_request_is_a_bandit_unit_with_its_own_events(db_url: str) -> None:
    """sticky: false: each exposure is a unit; its reward is the spend logged against it."""
    engine = open_database(db_url)
    experiment_id = _seed_requests(engine)
    metric = load_experiment_text(PER_REQUEST).metrics[0]
    assert isinstance(metric, MeanMetric)
    with engine.connect() as conn:
        sums, excluded = arm_sums(conn, experiment_id, metric, "request")
    assert excluded == 0
    a, b = sums
    # a: rewards 5 (p 0.5) and 0 (p 0.25); b: 0 (p 0.5) and 4 (p 0.75).
    assert (a.arm, a.units, a.y, a.y2, a.y_p, a.inv_p) == ("a", 2, 5.0, 25.0, 10.0, 6.0)
    assert (b.arm, b.units, b.y, b.min_propensity) == ("b", 2, 4.0, 0.5)
    assert b.y_p == pytest.approx(4.0 / 0.75, rel=1e-12)
    engine.dispose()


def test_bandit_table_reads(db_url: str) -> None:
    """The typed reads of bandit_weights and bandit_state that the analysis uses."""
    engine = open_database(db_url)
    experiment_id = _seed_requests(engine)
    with engine.connect() as conn:
        every = weight_rows(conn, experiment_id)
        thinned = weight_rows(conn, experiment_id, max_points=1)
        totals = arm_totals(conn, experiment_id)
        lowest = lowest_weights(conn, experiment_id)
        unknown = weight_rows(conn, experiment_id + 99, max_points=5)
    assert [(w.version, w.arm, w.weight) for w in every] == [
        (0, "a", 0.5),
        (0, "b", 0.5),
        (1, "a", 0.25),
        (1, "b", 0.75),
        (2, "a", 0.2),
        (2, "b", 0.8),
    ]
    assert all(w.context is None for w in every)
    # About one point: every 3rd version from 0, and always the last one.
    assert [w.version for w in thinned] == [0, 0, 2, 2]
    assert unknown == []
    assert [(t.arm, t.units, t.reward_sum, t.reward_sq_sum) for t in totals] == [
        ("a", 2, 5.0, 13.0),
        ("b", 2, 4.0, 16.0),
    ]
    assert lowest == {(None, "a"): 0.2, (None, "b"): 0.5}
    engine.dispose()


def test_to_dict_cleans_non_finite_numbers_and_intervals() -> None:
    arm = BanditArm(
        context="",
        arm="a",
        units=0,
        weight=None,
        p_best=math.nan,
        naive_mean=math.inf,
        naive_ci=(math.nan, 1.0),
        ipw_mean=0.25,
        ipw_se=None,
        ipw_ci=(0.0, 0.5),
        ht_mean=None,
        ht_se=None,
        ht_ci=None,
        min_propensity=math.nan,
        effective_units=None,
        truth=None,
        lowest_weight=None,
        note=None,
    )
    document = arm.to_dict()
    assert list(document) == [
        "context",
        "arm",
        "units",
        "weight",
        "p_best",
        "naive_mean",
        "naive_ci",
        "ipw_mean",
        "ipw_se",
        "ipw_ci",
        "ht_mean",
        "ht_se",
        "ht_ci",
        "min_propensity",
        "effective_units",
        "truth",
        "lowest_weight",
        "note",
    ]
    assert document["p_best"] is None and document["naive_mean"] is None
    assert document["naive_ci"] is None and document["ipw_ci"] == [0.0, 0.5]
    assert document["min_propensity"] is None and document["units"] == 0
    summary = SequentialSummary(0.5, (-1.0, 1.0), None, 2.5, None, 5000.0)
    assert summary.to_dict() == {
        "p_value": 0.5,
        "diff_ci": [-1.0, 1.0],
        "rel_lift_ci": None,
        "boundary_z": 2.5,
        "z": None,
        "tuning_units": 5000.0,
    }
