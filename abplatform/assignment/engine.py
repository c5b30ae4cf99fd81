"""Assignment policies and the engine that turns an experiment config into decisions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from abplatform.assignment.hashing import (
    bucket,
    bucket_batch,
    bucket_ranges,
    choose_variant,
    choose_variant_batch,
)
from abplatform.config.models import ExperimentConfig
from abplatform.domain import Decision


@dataclass(frozen=True)
class BatchDecision:
    """Decisions for many units: variant index (-1 = not in the experiment) and propensities."""

    variant_index: npt.NDArray[np.int64]
    propensity: npt.NDArray[np.float64]
    bucket: npt.NDArray[np.float64]


class AssignmentPolicy(Protocol):
    """Chooses a variant for a unit and learns from feedback (a no-op for hashing)."""

    variant_keys: tuple[str, ...]

    def assign(self, unit_id: str, context: Mapping[str, Any] | None = None) -> Decision | None:
        """The unit's decision, or None when the unit is outside the experiment."""
        ...

    def assign_batch(self, unit_ids: Sequence[str] | npt.NDArray[np.str_]) -> BatchDecision:
        """Decisions for many units at once, identical to `assign` on each."""
        ...

    def update(self, feedback: Any) -> None:
        """Take in rewards."""
        ...


class HashPolicy:
    """Deterministic hashed bucketing as in GrowthBook: coverage, weights, namespace.

    The propensity of a decision is the variant's weight: the probability that a unit in
    the experiment lands in that variant.
    """

    def __init__(self, config: ExperimentConfig) -> None:
        self.seed = config.hash_seed
        self.version = config.assignment.hash_version
        self.namespace = config.assignment.namespace
        self.variant_keys = tuple(v.key for v in config.variants)
        self.weights = [v.weight for v in config.variants]
        self.ranges = bucket_ranges(len(config.variants), config.assignment.coverage, self.weights)

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


def build_policy(config: ExperimentConfig) -> AssignmentPolicy:
    """The assignment policy an experiment config asks for."""
    if config.assignment.type == "hash":
        return HashPolicy(config)
    raise ValueError(f"unknown assignment type {config.assignment.type!r}")
