"""How events become bandit rewards: the reward rule of an experiment, what it reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from abplatform.bandit.tables import NO_CONTEXT
from abplatform.config.models import BanditSpec, ExperimentConfig


class ExposureFacts(Protocol):
    """What the bandit needs of a written exposure (e.g. `abplatform.storage.rows.ExposureRow`)."""

    @property
    def experiment_id(self) -> int: ...
    @property
    def variant(self) -> str: ...
    @property
    def scene(self) -> str | None: ...
    @property
    def weight_version(self) -> int | None: ...


class EventFacts(Protocol):
    """What the bandit needs of a stored event (e.g. `abplatform.storage.rows.EventRow`)."""

    @property
    def experiment_id(self) -> int | None: ...
    @property
    def exposure_id(self) -> int | None: ...
    @property
    def unit_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def value(self) -> float | None: ...


@dataclass(frozen=True)
class RewardRule:
    """How the events of one bandit experiment become rewards of its trials.

    A trial is a sticky unit (the user, or the user in one scene with ``context: scene``)
    or, without ``sticky``, one exposure. Its reward follows the reward metric: 1 once it
    has an event of the metric's type (proportion), else the count of such events or the
    sum of their values (mean).
    """

    experiment_id: int
    arms: tuple[str, ...]
    event: str
    binary: bool
    use_value: bool
    sticky: bool
    by_scene: bool

    @classmethod
    def from_config(cls, experiment_id: int, config: ExperimentConfig) -> RewardRule:
        """The rule of a bandit experiment; ValueError for a hashed one."""
        return cls.from_spec(experiment_id, config.require_bandit())

    @classmethod
    def from_spec(cls, experiment_id: int, spec: BanditSpec) -> RewardRule:
        """The rule of a bandit experiment's facts."""
        return cls(
            experiment_id=experiment_id,
            arms=spec.arms,
            event=spec.reward_metric.event,
            binary=spec.reward == "binary",
            use_value=spec.sums_values,
            sticky=spec.assignment.sticky,
            by_scene=spec.assignment.context == "scene",
        )

    def amount(self, value: float | None) -> float:
        """One event's addition to a trial's reward: 1, or its value for a sum metric."""
        if not self.use_value:
            return 1.0
        return 0.0 if value is None else float(value)

    def context_of(self, scene: str | None) -> str | None:
        """The stored context of a trial in this scene; None if it has no place."""
        if not self.by_scene:
            return NO_CONTEXT
        return scene or None


@dataclass(frozen=True)
class FeedbackResult:
    """What `apply_bandit_feedback` changed: trials counted, trials rewarded, experiments."""

    trials: int = 0
    rewards: int = 0
    experiments: frozenset[int] = frozenset()
