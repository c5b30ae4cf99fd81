"""Config errors of `analysis.dimensions`: one readable line per problem, naming field and value."""

from __future__ import annotations

import pytest

from abplatform.config import load_experiment_text
from tests.factories import config_problems

BASE = "key: k\nvariants:\n  - {key: a, weight: 0.5}\n  - {key: b, weight: 0.5}\nanalysis:\n"
VALID = "scene, new_vs_returning, first_exposure_day or a users profile column"


@pytest.mark.parametrize(
    ("dimensions", "expected"),
    [
        pytest.param(
            '[scene, "bad name"]',
            f"analysis.dimensions.1: a dimension is one of {VALID} "
            "(a letter or _, then up to 63 letters, digits, _ . -) (got 'bad name')",
            id="bad-name",
        ),
        pytest.param(
            "[scene, country, scene]",
            "analysis.dimensions: each dimension may appear once (got scene twice) "
            "(got [scene, country, scene])",
            id="duplicate",
        ),
        pytest.param(
            "scene",
            "analysis.dimensions: input should be a valid list (got 'scene')",
            id="not-a-list",
        ),
        pytest.param(
            "[3]",
            "analysis.dimensions.0: input should be a valid string (got 3)",
            id="not-a-string",
        ),
    ],
)
def test_dimension_errors(dimensions: str, expected: str) -> None:
    assert config_problems(BASE + f"  dimensions: {dimensions}\n") == expected


def test_dimensions_default_to_none_and_keep_their_order() -> None:
    assert load_experiment_text(BASE + "  alpha: 0.05\n").analysis.dimensions == []
    config = load_experiment_text(BASE + "  dimensions: [segment, scene]\n")
    assert config.analysis.dimensions == ["segment", "scene"]
