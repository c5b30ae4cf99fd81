"""Config errors of quantile metrics (`abplatform.config.quantiles`): path, problem, value."""

from __future__ import annotations

import pytest

from tests.factories import config_problems, metric_problems


@pytest.mark.parametrize(
    ("metric", "path", "problem"),
    [
        ("{name: m, type: quantile, event: purchase, q: 1.0}", "metrics.0.q", "strictly between"),
        ("{name: m, type: quantile, event: purchase, q: 0}", "metrics.0.q", "strictly between"),
        ("{name: m, type: quantile, event: purchase, q: -0.5}", "metrics.0.q", "strictly between"),
        ("{name: m, type: quantile, event: purchase}", "metrics.0.q", "field required"),
        (
            "{name: m, type: quantile, event: purchase, q: 0.9, value: mean}",
            "metrics.0.value",
            "count",
        ),
        ("{name: m, type: quantile, event: buy, q: 0.9}", "metrics.0.event", "unknown"),
        (
            "{name: m, type: quantile, event: purchase, q: 0.9, cap: {type: absolute, value: 9}}",
            "metrics.0",
            "a quantile metric is not capped",
        ),
        ("{name: m, type: quantile, event: purchase, q: high}", "metrics.0.q", "number"),
    ],
)
def test_bad_quantile_metrics_are_named(metric: str, path: str, problem: str) -> None:
    message = metric_problems(metric)
    assert f"{path}:" in message and problem in message, message


def test_a_quantile_bandit_reward_is_refused() -> None:
    text = """
key: k
assignment: {type: thompson, reward_metric: p90}
variants: [{key: a}, {key: b}]
metrics:
  - {name: p90, type: quantile, event: purchase, value: sum, q: 0.9}
"""
    message = config_problems(text)
    assert "assignment.reward_metric:" in message and "quantile metrics are not" in message
