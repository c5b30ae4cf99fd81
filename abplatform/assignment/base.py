"""The assignment policy contract and the batch decision shared by every policy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


class MissingContext(ValueError):
    """A policy with per-context state got a request without its context value."""

    def __init__(self, key: str) -> None:
        super().__init__(f"this policy needs context[{key!r}]")
        self.key = key


class AssignmentPolicy(Protocol):
    """Chooses a variant for a unit and learns from feedback (a no-op for hashing).

    A server decides in two steps so that a request never waits on storage it does not
    need: `draw` (memory) and, for a `sticky` policy, `known` (memory) or else `settle`
    (may read or write storage: call it off the event loop). `assign` is both at once.
    """

    variant_keys: tuple[str, ...]

    @property
    def sticky(self) -> bool:
        """Whether a unit keeps its first decision (then `settle` may touch storage)."""
        ...

    def assign(self, unit_id: str, context: Mapping[str, Any] | None = None) -> Decision | None:
        """The unit's decision, or None when the unit is outside the experiment."""
        ...

    def assign_batch(self, unit_ids: Sequence[str] | npt.NDArray[np.str_]) -> BatchDecision:
        """Decisions for many units at once, identical to `assign` on each."""
        ...

    def draw(self, unit_id: str, context: Mapping[str, Any] | None = None) -> Decision | None:
        """A decision from memory, before stickiness; None outside the experiment.

        Raises `MissingContext` when the policy needs a context value the request lacks.
        """
        ...

    def known(self, unit_id: str, context: Mapping[str, Any] | None = None) -> Decision | None:
        """A sticky unit's decision if memory holds it, else None (memory only)."""
        ...

    def settle(
        self, unit_id: str, context: Mapping[str, Any] | None, decision: Decision
    ) -> Decision:
        """The decision in force: `decision` unless sticky, else the unit's first one
        (stored if new)."""
        ...

    def sync(self) -> Callable[[], None] | None:
        """Background step (any thread): publish and fetch shared state that is due.

        Returns what puts the fetched state in force, to call on the thread that draws
        decisions, or None when nothing changed.
        """
        ...

    def update(self, feedback: Any) -> None:
        """Take in rewards."""
        ...
