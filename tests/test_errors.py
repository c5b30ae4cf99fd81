"""The one error hierarchy: every platform error carries its problems as lines."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from abplatform.api.schemas import EventIn
from abplatform.config import ConfigError, ConfigProblem, load_experiment_text
from abplatform.domain import EVENT_TYPES, FEEDBACK_TYPES
from abplatform.errors import AbplatformError, DataError, NotFoundError
from abplatform.progress import no_progress


def test_every_error_has_problems_and_a_hint() -> None:
    plain = NotFoundError("no experiment 'x'", hint="see `abplatform list`")
    assert plain.problems == []
    assert str(plain) == "no experiment 'x'\nhint: see `abplatform list`"
    data = DataError("cannot use a.csv: 1 problem", ["a.csv line 2: item_id: empty"])
    assert isinstance(data, AbplatformError)
    assert data.problems == ["a.csv line 2: item_id: empty"]


def test_config_error_lines_say_where_what_and_got() -> None:
    error = ConfigError(
        [
            ConfigProblem("variants.0.weight", "must be >= 0", -1),
            ConfigProblem("key", "field required", has_got=False),
            ConfigProblem("", "the experiment must be a mapping of fields", "list"),
            ConfigProblem("variants", "weights must sum to 1", [0.7, 0.7]),
        ],
        source="x.yaml",
    )
    assert isinstance(error, AbplatformError)
    assert error.message == "x.yaml: 4 problems in the experiment config"
    assert error.source == "x.yaml"
    assert error.problems == [
        "variants.0.weight: must be >= 0 (got -1)",
        "key: field required",
        "(top level): the experiment must be a mapping of fields (got 'list')",
        "variants: weights must sum to 1 (got [0.7, 0.7])",
    ]


def test_loader_raises_config_error_with_problem_lines() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment_text("key: x\nvariants: []\n")
    assert info.value.problems == ["variants: at least one variant is required (got [])"]
    assert info.value.message == "1 problem in the experiment config"


def test_event_types_are_one_list() -> None:
    assert ("impression", *FEEDBACK_TYPES) == EVENT_TYPES
    assert FEEDBACK_TYPES == ("view", "click", "add_to_cart", "purchase", "rating")
    field = EventIn.model_fields["type"]
    adapter = TypeAdapter(field.annotation)
    for kind in FEEDBACK_TYPES:
        assert adapter.validate_python(kind) == kind
    with pytest.raises(ValidationError):
        adapter.validate_python("impression")  # recorded by the platform, never sent


def test_no_progress_reports_nothing() -> None:
    assert no_progress("fit", 1, 2) is None
