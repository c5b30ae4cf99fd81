"""Assignment policies and the engine that turns an experiment config into decisions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
from abplatform.config.models import AssignmentConfig, BanditSpec, ExperimentConfig
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

    sticky = False
    """A unit's bucket, not storage, keeps its variant."""

    def draw(self, unit_id: str, context: Mapping[str, Any] | None = None) -> Decision | None:
        """`assign`: a hashed decision needs nothing but memory."""
        return self.assign(unit_id, context)

    def known(self, unit_id: str, context: Mapping[str, Any] | None = None) -> Decision | None:
        """Nothing is remembered: a bucket is recomputed."""
        return None

    def settle(
        self, unit_id: str, context: Mapping[str, Any] | None, decision: Decision
    ) -> Decision:
        """The drawn decision is final."""
        return decision

    def sync(self) -> Callable[[], None] | None:
        """No shared state."""
        return None

    def update(self, feedback: Any) -> None:
        """Hashing does not learn."""


def build_thompson_policy(spec: BanditSpec) -> ThompsonPolicy:
    """The in-memory Thompson-sampling policy of a bandit experiment."""
    return ThompsonPolicy.from_config(spec.assignment, spec.arms, spec.reward)


def build_policy(config: ExperimentConfig) -> AssignmentPolicy:
    """The assignment policy an experiment config asks for (hash or thompson)."""
    spec = config.bandit
    return HashPolicy(config) if spec is None else build_thompson_policy(spec)
