"""The assignment policy contract and the batch decision shared by every policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

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
