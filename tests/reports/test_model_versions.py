"""Models served per variant in the analysis: a hand-built experiment with a model switch.

Real SQLite and PostgreSQL. Control is served by one model; treatment by a strategy fitted at
start (no model id), then models 2 (v1) and 3 (v2) of its variant. Every number below is
worked out by hand in the comments.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import Engine

from abplatform.artifacts import artifact_sha256
from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.db import transaction
from abplatform.storage.model_registry import promote, register
from reports.analysis import analyze
from reports.render import render_report
from reports.table import print_table
from simulator.synthetic import experiment_yaml
from tests.factories import T0, Event, create_experiment, seed_events

KEY = "switch"


def _model(engine: Engine, tmp_path: Path, variant: str) -> int:
    directory = tmp_path / f"{variant}-{len(list(tmp_path.iterdir()))}"
    directory.mkdir()
    (directory / "manifest.json").write_text("{}\n", encoding="utf-8")
    with transaction(engine) as session:
        return register(
            session,
            experiment=KEY,
            variant=variant,
            kind="popularity",
            params={},
            seed=0,
            catalog="shop",
            history_cutoff=datetime(2026, 11, 30),
            history_rows=10,
            artifact_path=directory,
            artifact_sha256=artifact_sha256(directory),
            metrics={},
        ).id


def _seed(engine: Engine, tmp_path: Path) -> tuple[int, int, int]:
    yaml = experiment_yaml(
        KEY,
        {"control": 0.5, "treatment": 0.5},
        metrics=("conversion", "clicks_per_user", "ctr"),
    )
    experiment_id = create_experiment(engine, yaml)
    m1 = _model(engine, tmp_path, "control")
    m2 = _model(engine, tmp_path, "treatment")
    m3 = _model(engine, tmp_path, "treatment")
    with transaction(engine) as session:
        promote(session, m3)
    # (unit, variant, model id, offset seconds, slate size)
    exposures = [
        ("c1", "control", m1, 100, 5),
        ("c2", "control", m1, 100, 5),
        ("x1", "control", m1, 100, 5),  # x1 sees both variants: out of every metric
        ("x1", "treatment", m3, 200, 5),
        ("t1", "treatment", m2, 100, 5),  # enrolled by m2, then served by m3
        ("t1", "treatment", m3, 300, 5),
        ("t2", "treatment", m2, 100, 4),
        ("t3", "treatment", m3, 200, 5),
        ("t4", "treatment", None, 150, 5),  # enrolled fitted at start, then m3
        ("t4", "treatment", m3, 400, 5),
    ]
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "exposures",
            {
                "experiment_id": [experiment_id] * len(exposures),
                "variant": [e[1] for e in exposures],
                "unit_id": [e[0] for e in exposures],
                "ts": seconds_to_sql([T0 + e[3] for e in exposures]),
                "propensity": [0.5] * len(exposures),
                "slate_size": [e[4] for e in exposures],
                "model_id": [e[2] for e in exposures],
            },
        )
    seed_events(
        engine,
        experiment_id,
        [
            Event("c1", "click", 110),
            Event("t1", "click", 110),
            Event("t1", "click", 310),
            Event("t1", "purchase", 320, 10.0),
            Event("t2", "click", 120),
            Event("t4", "click", 160),
            Event("t4", "purchase", 170, 5.0),
            Event("x1", "purchase", 210, 1.0),
        ],
        prefix="switch",
    )
    return m1, m2, m3


def test_a_variant_served_by_several_models_is_broken_down(engine: Engine, tmp_path: Path) -> None:
    m1, m2, m3 = _seed(engine, tmp_path)
    result = analyze(engine, KEY, ranking=False)
    document = result.to_dict()
    models = document["models"]
    assert models["control"]["breakdown"] is None
    assert [
        (s["model_id"], s["version"], s["exposures"], s["units"])
        for s in models["control"]["models"]
    ] == [(m1, 1, 3, 3)]  # c1, c2, x1
    served = models["treatment"]["models"]
    # fitted at start: t4 once; m2: t1, t2; m3: x1, t1, t3, t4 (a unit served twice counts
    # under both models).
    assert [(s["model_id"], s["version"], s["exposures"], s["units"]) for s in served] == [
        (None, None, 1, 1),
        (m2, 1, 2, 2),
        (m3, 2, 4, 4),
    ]
    assert [(s["label"], s["kind"], s["status"]) for s in served] == [
        ("fitted at start", None, None),
        (f"model {m2} (v1)", "popularity", "candidate"),
        (f"model {m3} (v2)", "popularity", "serving"),
    ]
    # Units by the model of their first exposure (x1 excluded): t4 -> fitted at start,
    # t1, t2 -> m2, t3 -> m3; 1 + 2 + 1 = the variant's 4 units.
    # conversion: t4 1/1; t1 1, t2 0 -> 0.5; t3 0. clicks: t4 1; (2 + 1) / 2 = 1.5; 0.
    # ctr (clicks / impressions): t4 1 / 10; (2 + 1) / (10 + 4) = 3 / 14; t3 0 / 5.
    breakdown = models["treatment"]["breakdown"]
    assert [(b["model_id"], b["version"], b["units"]) for b in breakdown] == [
        (None, None, 1),
        (m2, 1, 2),
        (m3, 2, 1),
    ]
    assert sum(b["units"] for b in breakdown) == document["units"]["treatment"] == 4
    expected = [
        {"conversion": 1.0, "clicks_per_user": 1.0, "ctr": 0.1},
        {"conversion": 0.5, "clicks_per_user": 1.5, "ctr": 3 / 14},
        {"conversion": 0.0, "clicks_per_user": 0.0, "ctr": 0.0},
    ]
    for row, means in zip(breakdown, expected, strict=True):
        assert row["means"] == pytest.approx(means, rel=1e-12)
    warning = (
        f"variant 'treatment' was served by 3 model versions (fitted at start, model {m2} "
        f"(v1), model {m3} (v2)): its metrics mix them; see the per-version breakdown "
        "(models.treatment.breakdown)"
    )
    assert warning in document["warnings"]
    assert not any("'control'" in w for w in document["warnings"])

    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_table(result, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "SEVERAL MODEL VERSIONS served treatment (3)" in text
    assert "treatment per model version" in text
    assert "21.43%" not in text and "0.2143" in text  # ctr of m2, a ratio: 3 / 14
    page = render_report(result)
    assert "Several model versions served treatment" in page
    assert f"model {m3} (v2)" in page and "fitted at start" in page


def test_one_model_per_variant_gives_no_warning(engine: Engine, tmp_path: Path) -> None:
    experiment_id = create_experiment(
        engine, experiment_yaml(KEY, {"control": 0.5, "treatment": 0.5}, metrics=("conversion",))
    )
    m1 = _model(engine, tmp_path, "control")
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "exposures",
            {
                "experiment_id": [experiment_id] * 3,
                "variant": ["control", "control", "treatment"],
                "unit_id": ["a", "a", "b"],
                "ts": seconds_to_sql([T0, T0 + 5, T0]),
                "propensity": [0.5] * 3,
                "slate_size": [5] * 3,
                "model_id": [m1, m1, None],
            },
        )
    document = analyze(engine, KEY, ranking=False).to_dict()
    assert document["models"]["control"]["models"][0]["exposures"] == 2
    assert document["models"]["control"]["models"][0]["units"] == 1
    assert [s["label"] for s in document["models"]["treatment"]["models"]] == ["fitted at start"]
    assert all(v["breakdown"] is None for v in document["models"].values())
    assert not any("model versions" in w for w in document["warnings"])


def test_a_model_that_served_exposures_cannot_be_deleted(engine: Engine, tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    m1, _, _ = _seed(engine, tmp_path)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("DELETE FROM models WHERE id = :id"), {"id": m1})
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM models")).scalar_one() == 3
