"""Every invalid experiment config gives one readable line per problem, naming field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from abplatform.config import ConfigError, load_experiment, load_experiment_text, validate_config
from abplatform.registry import strategies

KNOWN = ", ".join(strategies.names())  # built-ins plus any installed plug-ins
EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text, "exp.yaml")
    return info.value.problems


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    config = load_experiment(path)
    assert config.variants


def test_defaults_and_derived_fields() -> None:
    config = load_experiment_text(
        "key: exp\nvariants:\n  - {key: a, weight: 0.5}\n  - {key: b, weight: 0.5}\n"
    )
    assert config.unit == "user"
    assert config.assignment.hash_version == 2
    assert config.assignment.coverage == 1.0
    assert config.hash_seed == "exp"  # seed defaults to the key
    assert config.control_key == "a"  # the first variant is the control
    assert config.simulation is None


def test_named_control() -> None:
    config = load_experiment_text(
        "key: e\ncontrol: b\nvariants: [{key: a, weight: 0.5}, {key: b, weight: 0.5}]\n"
    )
    assert config.control_key == "b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "key: x\nvariants:\n  - {key: a, weight: 1.0, colour: red}\n",
            ["variants.0.colour: unknown field (got 'red')"],
            id="unknown-key",
        ),
        pytest.param(
            "key: x\nbudget: 3\nvariants: [{key: a, weight: 1}]\n",
            ["budget: unknown field (got 3)"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            "key: x\nvariants:\n  - {key: a, weight: 0.5}\n  - {key: b, weight: 0.4}\n",
            ["variants: weights must sum to 1 (they sum to 0.9) (got [0.5, 0.4])"],
            id="weights-sum",
        ),
        pytest.param(
            "key: x\nvariants:\n  - {key: a, weight: -0.5}\n  - {key: b, weight: 1.5}\n",
            [
                "variants.0.weight: input should be greater than or equal to 0 (got -0.5)",
                "variants.1.weight: input should be less than or equal to 1 (got 1.5)",
            ],
            id="negative-weight",
        ),
        pytest.param(
            "key: x\nvariants:\n  - {key: a, weight: 0.5}\n  - {key: a, weight: 0.5}\n",
            ["variants.1.key: duplicate variant key (got 'a')"],
            id="duplicate-variant",
        ),
        pytest.param(
            "key: x\nvariants:\n  - {key: a, weight: 1, strategy: {kind: popularityy}}\n",
            [
                f"variants.0.strategy.kind: unknown strategy kind; known: {KNOWN} "
                "(got 'popularityy')"
            ],
            id="unknown-strategy",
        ),
        pytest.param(
            "key: x\nvariants:\n  - {key: a, weight: 1, strategy: {kind: popularity, "
            "params: {window_days: -3, foo: 1}}}\n",
            [
                "variants.0.strategy.params.window_days: input should be greater than or "
                "equal to 1 (got -3)",
                "variants.0.strategy.params.foo: unknown field (got 1)",
            ],
            id="bad-strategy-params",
        ),
        pytest.param(
            "key: x\nvariants:\n  - {key: a, weight: 0.5, strategy: {kind: ease, "
            "params: {lambda: -1, positive_events: [click, like]}}}\n"
            "  - {key: b, weight: 0.5, strategy: {kind: als, params: {factors: 0, alpha: 0, "
            "weights: {view: 2, click: -1}}}}\n",
            [
                "variants.0.strategy.params.positive_events.1: input should be 'view', 'click', "
                "'add_to_cart', 'purchase' or 'rating' (got 'like')",
                "variants.0.strategy.params.lambda: input should be greater than or equal to 0 "
                "(got -1)",
                "variants.1.strategy.params.weights.click: input should be greater than 0 (got -1)",
                "variants.1.strategy.params.factors: input should be greater than or equal to 1 "
                "(got 0)",
                "variants.1.strategy.params.alpha: input should be greater than 0 (got 0)",
            ],
            id="bad-als-ease-params",
        ),
        pytest.param(
            "key: x\nvariants:\n  - {key: a, weight: 1, strategy: {kind: als, "
            "params: {positive_events: [rating], weights: {purchase: 2}}}}\n",
            [
                "variants.0.strategy.params.weights: 'purchase' is not a positive event "
                "(positive_events: ['rating']) (got {purchase: 2})"
            ],
            id="weight-of-a-non-positive-event",
        ),
        pytest.param(
            "key: x\nvariants: [{key: a, weight: 1}]\nmetrics:\n"
            "  - {name: m, type: proportion, event: purchse}\n"
            "  - {name: r, type: ratio, numerator: {event: clik}, "
            "denominator: {event: impression}}\n",
            [
                "metrics.0.event: unknown event type; known: impression, view, click, "
                "add_to_cart, purchase, rating (got 'purchse')",
                "metrics.1.numerator.event: unknown event type; known: impression, view, click, "
                "add_to_cart, purchase, rating (got 'clik')",
            ],
            id="unknown-event-type",
        ),
        pytest.param(
            "key: x\nvariants: [{key: a, weight: 1}]\nmetrics:\n"
            "  - {name: q, type: median, event: click}\n  - {name: z, event: click}\n",
            [
                "metrics.0.type: unknown metric type; known: proportion, mean, ratio, quantile "
                "(got 'median')",
                "metrics.1.type: field required",
            ],
            id="unknown-metric-type",
        ),
        pytest.param(
            "key: x\nvariants: [{key: a, weight: 1}]\nmetrics:\n"
            "  - {name: m, type: mean, event: click}\n  - {name: m, type: mean, event: click}\n",
            ["metrics.1.name: duplicate metric name (got 'm')"],
            id="duplicate-metric",
        ),
        pytest.param(
            "key: x\nassignment: {coverage: 1.5, hash_version: 3}\n"
            "variants: [{key: a, weight: 1}]\n",
            [
                "assignment.hash_version: input should be 1 or 2 (got 3)",
                "assignment.coverage: input should be less than or equal to 1 (got 1.5)",
            ],
            id="coverage-and-hash-version",
        ),
        pytest.param(
            "key: x\nassignment: {coverage: -0.1}\nvariants: [{key: a, weight: 1}]\n",
            ["assignment.coverage: input should be greater than or equal to 0 (got -0.1)"],
            id="negative-coverage",
        ),
        pytest.param(
            "key: x\nassignment: {namespace: [ns, 0.6, 0.2]}\nvariants: [{key: a, weight: 1}]\n",
            [
                "assignment.namespace: namespace needs [name, start, end] with "
                "0 <= start < end <= 1 (got [ns, 0.6, 0.2])"
            ],
            id="bad-namespace",
        ),
        pytest.param(
            "key: x\nvariants: []\n",
            ["variants: at least one variant is required (got [])"],
            id="empty-variants",
        ),
        pytest.param(
            "key: x\ncontrol: z\nvariants: [{key: a, weight: 1}]\n",
            ["control: not a variant key; variants: a (got 'z')"],
            id="unknown-control",
        ),
        pytest.param(
            "key: x\nvariants: [{key: a, weight: 1}\nmetrics: []\n",
            ["yaml: malformed YAML at line 3, column 1: expected ',' or ']', but got '<scalar>'"],
            id="malformed-yaml",
        ),
        pytest.param(
            "description: hi\n",
            ["key: field required", "variants: field required"],
            id="missing-fields",
        ),
        pytest.param(
            "- a\n- b\n",
            ["(top level): the experiment must be a mapping of fields (got 'list')"],
            id="not-a-mapping",
        ),
        pytest.param(
            "key: x\nvariants: [{key: a, weight: .nan}]\n",
            ["variants.0.weight: input should be a finite number (got nan)"],
            id="nan-weight",
        ),
        pytest.param(
            'key: x\ndescription: "x\\0y"\nvariants: [{key: a, weight: 1, description: "\\0"}]\n',
            [
                "description: must not contain NUL characters (PostgreSQL cannot store them) "
                "(got 'x\\x00y')",
                "variants.0.description: must not contain NUL characters (PostgreSQL cannot "
                "store them) (got '\\x00')",
            ],
            id="nul-characters",
        ),
        pytest.param(
            "key: x\nvariants: [{key: a, weight: 1, "
            'strategy: {kind: popularity, params: {"\\0": 1}}}]\n',
            [
                "variants.0.strategy.params: a field name must not contain NUL characters "
                "(PostgreSQL cannot store them) (got '\\x00')"
            ],
            id="nul-in-a-field-name",
        ),
        pytest.param(
            'key: x\nvariants: [{key: a, weight: 1}]\ndescription: "\\ud800"\n',
            ["description: must be valid Unicode text (no lone surrogates) (got '\\ud800')"],
            id="lone-surrogate",
        ),
        pytest.param(
            "key: x\nvariants: " + "[" * 31 + "]" * 31 + "\n",  # 32 levels with the top one
            [
                "variants.0: input should be a valid dictionary or instance of VariantConfig "
                "(got " + "[" * 30 + "]" * 30 + ")"
            ],
            id="nested-to-the-limit",
        ),
        pytest.param(
            "key: x\nvariants:\n  - " + "{a: " * 33 + "1" + "}" * 33 + "\n",
            ["yaml: nested deeper than 32 levels at line 3, column 125"],
            id="nested-too-deep",
        ),
        pytest.param(
            "key: x\nvariants: []\n"
            + "".join(
                f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'x'] * 10)}]\n" for i in range(7)
            ),
            ["(top level): more than 100000 values (YAML aliases expanding?)"],
            id="aliases-expanding",
        ),
    ],
)
def test_problem_lines(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_deep_data_from_json_names_the_path() -> None:
    """A JSON body is not parsed by YAML: the same limit applies to the parsed data."""
    deep: list[Any] = []
    inner = deep
    for _ in range(500):
        inner.append([])
        inner = inner[0]
    with pytest.raises(ConfigError) as info:
        validate_config({"key": "x", "variants": deep})
    assert [str(p) for p in info.value.problems] == [
        "variants" + ".0" * 31 + ": nested deeper than 32 levels"
    ]


def test_error_names_the_source_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("key: x\nvariants: []\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    assert info.value.message == f"{path}: 1 problem in the experiment config"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    from abplatform.errors import AbplatformError

    with pytest.raises(AbplatformError, match=r"cannot read .*nope\.yaml: No such file"):
        load_experiment(tmp_path / "nope.yaml")
