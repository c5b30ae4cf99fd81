"""Tests of `simulator.synthetic`: the rows it writes are the truth it returns."""

from __future__ import annotations

import re

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sqlalchemy import text

from abplatform.config import load_experiment_text
from abplatform.storage.db import open_database
from reports.analysis import analyze
from simulator.synthetic import (
    METRICS,
    SyntheticSpec,
    SyntheticVariant,
    experiment_yaml,
    unit_id,
    write_synthetic,
)
from tests.factories import create_experiment

SPEC = SyntheticSpec(
    variants=(SyntheticVariant("a", 0.7), SyntheticVariant("b", 0.3, click_lift=2.0)),
    exposures_per_unit=(1, 4),
    slate_sizes=(0, 6),
    exposure_seconds=(0, 1_000),
    click_rate=0.2,
    purchase_rate=0.5,
    valueless_share=0.25,
    early_share=0.3,
    event_seconds=100,
    early_seconds=50,
    chunk_units=70,  # several chunks: event ids must stay unique across them
)


def test_experiment_yaml_loads_with_the_named_metrics() -> None:
    config = load_experiment_text(
        experiment_yaml(
            "k",
            {"control": 0.25, "treatment": 0.75},
            description="d",
            metrics=("ctr", "conversion"),
            analysis="  alpha: 0.1",
        )
    )
    assert (config.key, config.description) == ("k", "d")
    assert [(v.key, v.weight) for v in config.variants] == [("control", 0.25), ("treatment", 0.75)]
    assert [mc.name for mc in config.metrics] == ["ctr", "conversion"]
    assert config.analysis.alpha == 0.1
    everything = load_experiment_text(experiment_yaml("all", {"only": 1.0}))
    assert [mc.name for mc in everything.metrics] == list(METRICS)


def test_written_rows_are_the_returned_truth(db_url: str) -> None:
    engine = open_database(db_url)
    experiment_id = create_experiment(
        engine, experiment_yaml("synthetic", {"a": 0.7, "b": 0.3}, metrics=("clicks_per_user",))
    )
    truth = write_synthetic(engine, experiment_id, 200, SPEC, np.random.default_rng(3))
    assert truth.variant.size == truth.impressions.size == 200
    with engine.connect() as conn:
        exposures = conn.execute(
            text(
                "SELECT unit_id, COUNT(DISTINCT variant), SUM(slate_size), COUNT(*) "
                "FROM exposures WHERE experiment_id = :e GROUP BY unit_id"
            ),
            {"e": experiment_id},
        ).all()
        events = conn.execute(
            text(
                "SELECT type, COUNT(*), COUNT(DISTINCT event_id), COUNT(value), SUM(value) "
                "FROM events WHERE experiment_id = :e GROUP BY type ORDER BY type"
            ),
            {"e": experiment_id},
        ).all()
    assert sorted(r[0] for r in exposures) == [unit_id(i) for i in range(200)]
    assert {r[1] for r in exposures} == {1}  # one variant a unit
    slates = {r[0]: (float(r[2]), int(r[3])) for r in exposures}
    assert [slates[unit_id(i)][0] for i in range(200)] == truth.impressions.tolist()
    assert all(1 <= n <= 4 for _, n in slates.values())
    assert sum(n for _, n in slates.values()) == truth.exposures
    (clicks, n_clicks, click_ids, click_values, _), purchases = events
    assert (clicks, purchases[0]) == ("click", "purchase")
    early = n_clicks - truth.clicks.sum()
    assert 0 < early <= 200  # at most one early click a unit
    assert n_clicks + purchases[1] == truth.events
    assert (click_ids, click_values) == (n_clicks, 0)
    assert purchases[1] == purchases[2] == truth.purchases.sum()
    assert 0 < purchases[3] < purchases[1]  # a quarter carry no value
    assert_allclose(float(purchases[4]), truth.revenue.sum(), rtol=1e-9)

    in_b = truth.variant == "b"
    assert truth.values("clicks_per_user", "b").tolist() == truth.clicks[in_b].tolist()
    assert truth.values("conversion", "b").tolist() == (truth.purchases[in_b] > 0).tolist()
    assert truth.values("revenue_per_user", "b").tolist() == truth.revenue[in_b].tolist()
    with pytest.raises(ValueError, match=r"metric must be one of \[.*\], got 'ctr'"):
        truth.values("ctr", "b")

    result = analyze(engine, "synthetic")
    assert dict(result.units) == {k: int((truth.variant == k).sum()) for k in ("a", "b")}
    (clicks_per_user,) = result.metrics
    for estimate in clicks_per_user.variants:
        expected = truth.clicks[truth.variant == estimate.variant].mean()
        assert_allclose(estimate.mean, expected, rtol=1e-9)  # early clicks are not counted
    engine.dispose()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"variants": ()}, "needs at least one variant, got none"),
        ({"exposures_per_unit": (0, 2)}, "exposures_per_unit must be (low, high), 1 <= low"),
        ({"slate_sizes": (3, 2)}, "slate_sizes must be (low, high), 0 <= low <= high; got (3, 2)"),
        ({"early_seconds": 1}, "early_seconds >= 2; got 86400 and 1"),
    ],
)
def test_spec_says_what_it_expected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SyntheticSpec(**changes)  # type: ignore[arg-type]
