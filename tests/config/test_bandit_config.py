"""The `assignment: {type: thompson}` block: defaults, variant weights, readable errors."""

from __future__ import annotations

import pytest

from abplatform.config import ConfigError, load_experiment_text
from abplatform.config.models import AssignmentConfig, ExperimentConfig, ThompsonAssignmentConfig

METRICS = (
    "metrics:\n"
    "  - {name: buy, type: proportion, event: purchase}\n"
    "  - {name: revenue, type: mean, event: purchase, value: sum}\n"
    "  - {name: ctr, type: ratio, numerator: {event: click}, denominator: {event: impression}}\n"
)
VARIANTS = "variants: [{key: pop}, {key: rnd}, {key: tt}]\n"


def bandit(assignment: str, variants: str = VARIANTS) -> str:
    return f"key: b\nassignment: {{type: thompson, {assignment}}}\n{variants}{METRICS}"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_experiment_text(text, "exp.yaml")
    return info.value.problems


def test_thompson_defaults() -> None:
    config = load_experiment_text(bandit("reward_metric: buy"))
    assignment = config.assignment
    assert isinstance(assignment, ThompsonAssignmentConfig)
    assert config.is_bandit
    assert (assignment.update_every, assignment.min_weight, assignment.burn_in_units) == (
        1000,
        0.0,
        100,
    )
    assert (assignment.top_two, assignment.top_two_beta, assignment.sticky) == (False, 0.5, True)
    assert (assignment.context, assignment.draws, assignment.seed) == (None, 10_000, 0)
    assert config.hash_seed == "b"  # the bandit's integer seed is not a hash seed


def test_variant_weights_are_optional_and_equal_under_thompson() -> None:
    config = load_experiment_text(bandit("reward_metric: buy"))
    assert [v.weight for v in config.variants] == [1 / 3] * 3
    # Given weights are kept (and still checked), but a bandit does not allocate by them.
    given = "variants: [{key: a, weight: 0.5}, {key: b, weight: 0.5}]\n"
    assert [
        v.weight for v in load_experiment_text(bandit("reward_metric: buy", given)).variants
    ] == [
        0.5,
        0.5,
    ]


def test_hash_stays_the_default_assignment() -> None:
    config = load_experiment_text("key: h\nvariants: [{key: a, weight: 1}]\n")
    assert isinstance(config.assignment, AssignmentConfig) and not config.is_bandit
    # A hash experiment still needs its weights.
    assert problems("key: h\nvariants: [{key: a}]\n") == ["variants.0.weight: field required"]


def test_round_trip_through_json() -> None:
    config = load_experiment_text(bandit("reward_metric: revenue, context: scene, min_weight: 0.1"))
    again = load_experiment_text(config.model_dump_json())
    assert again == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            bandit("reward_metric: clicks"),
            [
                "assignment.reward_metric: not a metric name; metrics: buy, revenue, ctr "
                "(got 'clicks')"
            ],
            id="unknown-reward-metric",
        ),
        pytest.param(
            "key: b\nassignment: {type: thompson, reward_metric: buy}\n" + VARIANTS,
            [
                "assignment.reward_metric: not a metric name; metrics: none (add one under "
                "metrics:) (got 'buy')"
            ],
            id="no-metrics",
        ),
        pytest.param(
            bandit("reward_metric: ctr"),
            [
                "assignment.reward_metric: ratio metrics are not supported as a bandit reward "
                "(it needs one reward per unit); use a proportion metric (binary reward) or a "
                "mean metric (continuous) (got 'ctr')"
            ],
            id="ratio-reward",
        ),
        pytest.param(
            bandit("reward_metric: buy, min_weight: 0.4"),
            [
                "assignment.min_weight: min_weight * arms must be <= 1 (0.4 * 3 arms = 1.2); "
                "lower it to at most 0.333333 (got 0.4)"
            ],
            id="floor-times-arms",
        ),
        pytest.param(
            bandit("reward_metric: buy, context: device"),
            ["assignment.context: input should be 'scene' (got 'device')"],
            id="context-not-scene",
        ),
        pytest.param(
            bandit("reward_metric: buy, update_every: 0, draws: 5, top_two_beta: 1.0"),
            [
                "assignment.update_every: input should be greater than or equal to 1 (got 0)",
                "assignment.top_two_beta: input should be less than 1 (got 1.0)",
                "assignment.draws: input should be greater than or equal to 100 (got 5)",
            ],
            id="out-of-range",
        ),
        pytest.param(
            bandit("reward_metric: buy, coverage: 0.5"),
            ["assignment.coverage: unknown field (got 0.5)"],
            id="hash-field-under-thompson",
        ),
        pytest.param(
            "key: b\nassignment: {type: thompson}\n" + VARIANTS + METRICS,
            ["assignment.reward_metric: field required"],
            id="missing-reward-metric",
        ),
        pytest.param(
            "key: b\nassignment: {type: epsilon}\nvariants: [{key: a, weight: 1}]\n",
            ["assignment.type: unknown assignment type; known: hash, thompson (got 'epsilon')"],
            id="unknown-type",
        ),
        pytest.param(
            bandit("reward_metric: buy", "variants: [{key: solo}]\n"),
            ["variants: a thompson bandit needs at least two variants (got 1)"],
            id="one-arm",
        ),
        pytest.param(
            bandit("reward_metric: buy", "variants: [{key: a, weight: 0.7}, {key: b}]\n"),
            ["variants: weights must sum to 1 (they sum to 1.2) (got [0.7, 0.5])"],
            id="some-weights-given",
        ),
    ],
)
def test_bandit_problem_lines(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_bandit_spec_is_derived_once_from_the_config() -> None:
    config = load_experiment_text(bandit("reward_metric: buy"))
    spec = config.bandit
    assert spec is not None and spec is config.bandit  # computed once
    assert spec is config.require_bandit()
    assert spec.assignment is config.assignment
    assert spec.reward_metric.name == "buy" and spec.reward == "binary"
    assert spec.arms == ("pop", "rnd", "tt")
    assert spec.unit_kind == "unit" and not spec.sums_values
    revenue = load_experiment_text(bandit("reward_metric: revenue, sticky: false")).bandit
    assert revenue is not None and revenue.reward == "gaussian" and revenue.sums_values
    assert revenue.unit_kind == "request"
    by_scene = load_experiment_text(bandit("reward_metric: buy, context: scene")).bandit
    assert by_scene is not None and by_scene.unit_kind == "unit and scene"


def test_a_hashed_experiment_has_no_bandit_spec() -> None:
    config = load_experiment_text("key: h\nvariants: [{key: a, weight: 1}]\n")
    assert config.bandit is None
    with pytest.raises(ValueError, match=r"not a bandit experiment \(assignment type 'hash'\)"):
        config.require_bandit()


def test_a_config_built_without_the_loader_fails_on_its_bandit_spec() -> None:
    config = ExperimentConfig.model_validate(
        {
            "key": "b",
            "assignment": {"type": "thompson", "reward_metric": "nope"},
            "variants": [{"key": "a"}, {"key": "b"}],
        }
    )
    with pytest.raises(ValueError, match="must name a proportion or mean metric"):
        _ = config.bandit
