"""Assignment policies and the engine that turns an experiment config into decisions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from abplatform.assignment.base import AssignmentPolicy as AssignmentPolicy
from abplatform.assignment.base import BatchDecision as BatchDecision
from abplatform.assignment.hashing import (
    bucket,
    bucket_batch,
    bucket_ranges,
    choose_variant,
    choose_variant_batch,
)
from abplatform.assignment.thompson import ThompsonPolicy
from abplatform.config.models import (
    AssignmentConfig,
    ExperimentConfig,
    MeanMetric,
    ProportionMetric,
    ThompsonAssignmentConfig,
)
from abplatform.domain import Decision


class HashPolicy:
    """Deterministic hashed bucketing as in GrowthBook: coverage, weights, namespace.

    The propensity of a decision is the variant's weight: the probability that a unit in
    the experiment lands in that variant.
    """

    def __init__(self, config: ExperimentConfig) -> None:
        assignment = config.assignment
        if not isinstance(assignment, AssignmentConfig):
            raise ValueError(f"HashPolicy needs a hash assignment, got {assignment.type!r}")
        self.seed = config.hash_seed
        self.version = assignment.hash_version
        self.namespace = assignment.namespace
        self.variant_keys = tuple(v.key for v in config.variants)
        self.weights = [v.weight for v in config.variants]
        self.ranges = bucket_ranges(len(config.variants), assignment.coverage, self.weights)

    def _in_namespace_batch(
        self, unit_ids: Sequence[str] | npt.NDArray[np.str_]
    ) -> npt.NDArray[np.bool_]:
        if self.namespace is None:
            return np.ones(len(unit_ids), dtype=bool)
        name, start, end = self.namespace
        n = bucket_batch("__" + name, unit_ids, 1)
        return (n >= start) & (n < end)

    def assign(self, unit_id: str, context: Mapping[str, Any] | None = None) -> Decision | None:
        """The unit's variant, or None when outside the namespace or coverage."""
        if self.namespace is not None:
            name, start, end = self.namespace
            n_ns = bucket("__" + name, unit_id, 1)
            if n_ns is None or not start <= n_ns < end:
                return None
        n = bucket(self.seed, unit_id, self.version)
        if n is None:
            return None
        index = choose_variant(n, self.ranges)
        if index < 0:
            return None
        return Decision(self.variant_keys[index], self.weights[index], n)

    def assign_batch(self, unit_ids: Sequence[str] | npt.NDArray[np.str_]) -> BatchDecision:
        """Vectorised `assign` for many units."""
        buckets = bucket_batch(self.seed, unit_ids, self.version)
        index = np.asarray(choose_variant_batch(buckets, self.ranges), dtype=np.int64)
        index[~self._in_namespace_batch(unit_ids)] = -1
        weights = np.asarray(self.weights, dtype=np.float64)
        propensity = np.where(index >= 0, weights[np.maximum(index, 0)], 0.0)
        return BatchDecision(index, propensity, buckets)

    def update(self, feedback: Any) -> None:
        """Hashing does not learn."""


def reward_family(config: ExperimentConfig) -> Literal["binary", "gaussian"]:
    """The posterior family of a bandit's reward metric: binary for proportion, else gaussian.

    Raises
    ------
    ValueError
        If the experiment is not a bandit, or its reward metric is unknown or a ratio.
    """
    assignment = config.assignment
    if not isinstance(assignment, ThompsonAssignmentConfig):
        raise ValueError(f"not a bandit experiment (assignment type {assignment.type!r})")
    for metric in config.metrics:
        if metric.name == assignment.reward_metric:
            if isinstance(metric, ProportionMetric):
                return "binary"
            if isinstance(metric, MeanMetric):
                return "gaussian"
            raise ValueError(
                f"reward metric {metric.name!r} is a {metric.type} metric; a bandit needs a "
                "per-unit reward: a proportion or mean metric"
            )
    known = ", ".join(m.name for m in config.metrics) or "none"
    raise ValueError(f"unknown reward metric {assignment.reward_metric!r}; metrics: {known}")


def build_thompson_policy(config: ExperimentConfig) -> ThompsonPolicy:
    """The in-memory Thompson-sampling policy of a bandit experiment."""
    assignment = config.assignment
    if not isinstance(assignment, ThompsonAssignmentConfig):
        raise ValueError(f"not a bandit experiment (assignment type {assignment.type!r})")
    keys = [v.key for v in config.variants]
    return ThompsonPolicy.from_config(assignment, keys, reward_family(config))


def build_policy(config: ExperimentConfig) -> AssignmentPolicy:
    """The assignment policy an experiment config asks for (hash or thompson)."""
    if config.assignment.type == "hash":
        return HashPolicy(config)
    if config.assignment.type == "thompson":
        return build_thompson_policy(config)
    raise ValueError(f"unknown assignment type {config.assignment.type!r}")
