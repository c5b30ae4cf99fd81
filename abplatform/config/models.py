"""Pydantic models of the experiment YAML."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    field_validator,
    model_validator,
)

from abplatform.config.dimensions import Dimensions
from abplatform.domain import EVENT_TYPES, SCENES

KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
LOGGING_SUFFIX = "__logging"
"""A simulation's logging period is logged as the experiment ``<key>__logging``."""


class _Strict(BaseModel):
    """Base of every config model: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_event(value: str) -> str:
    if value not in EVENT_TYPES:
        raise ValueError(f"unknown event type; known: {', '.join(EVENT_TYPES)}")
    return value


MetricEvent = Annotated[str, Field(min_length=1)]
"""The event a metric counts (checked against `abplatform.domain.EVENT_TYPES`)."""


LATEST_MODEL = "latest"
"""``model: latest``: the newest ``serving`` registered model of the experiment and variant."""


class StrategySpec(_Strict):
    """Which strategy a variant serves, with which parameters, and from which trained model.

    ``model`` pins a registered model (``abplatform models list``) by id, or ``latest``;
    without it, strategies that fit cheaply are fitted on the history when the experiment
    starts, and one trained with TensorFlow serves its ``latest`` model.

    ``realtime`` (default true): the variant's slates use the unit's online features (its
    events since the model's cut-off, from the feature store) where its strategy declares
    some; false serves from what the strategy learned at fit time alone (the classic
    static-vs-real-time experiment). It is not a model parameter: one model serves both.
    """

    kind: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    model: int | str | None = None
    realtime: StrictBool = True

    @field_validator("model", mode="before")
    @classmethod
    def _model_pin(cls, value: object) -> object:
        valid_id = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if value is None or valid_id or value == LATEST_MODEL:
            return value
        raise ValueError(f"must be a model id (a positive integer) or {LATEST_MODEL!r}")


class VariantConfig(_Strict):
    """One arm: key, share of traffic, and the strategy it serves."""

    key: str = Field(pattern=KEY_PATTERN)
    weight: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    description: str = ""
    strategy: StrategySpec | None = None


class AssignmentConfig(_Strict):
    """Hashed assignment: deterministic buckets, fixed variant weights (the default)."""

    type: Literal["hash"] = "hash"
    seed: str | None = None
    hash_version: Literal[1, 2] = 2
    coverage: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    namespace: tuple[str, float, float] | None = None

    @field_validator("namespace")
    @classmethod
    def _namespace_range(
        cls, value: tuple[str, float, float] | None
    ) -> tuple[str, float, float] | None:
        if value is not None:
            _, start, end = value
            if not 0.0 <= start < end <= 1.0:
                raise ValueError("namespace needs [name, start, end] with 0 <= start < end <= 1")
        return value


class ThompsonAssignmentConfig(_Strict):
    """Thompson-sampling bandit assignment (the `assignment:` block when type is thompson).

    Variant ``weight:`` is optional under thompson and not used for allocation: every arm
    starts at an equal weight (weight version 0, kept during burn-in) and the bandit adapts.
    """

    type: Literal["thompson"]
    reward_metric: str = Field(pattern=KEY_PATTERN, description="a proportion or mean metric")
    update_every: int = Field(default=1000, ge=1, description="new units between weight updates")
    min_weight: float = Field(default=0.0, ge=0.0, lt=1.0, allow_inf_nan=False)
    burn_in_units: int = Field(default=100, ge=0, description="units per arm before adapting")
    top_two: bool = False
    top_two_beta: float = Field(default=0.5, gt=0.0, lt=1.0, allow_inf_nan=False)
    sticky: bool = True
    context: Literal["scene"] | None = None
    draws: int = Field(default=10_000, ge=100, le=1_000_000)
    seed: int = Field(default=0, ge=0)


def _assignment_type(value: Any) -> str:
    """The union tag of an assignment block: its `type`, "hash" when omitted."""
    if isinstance(value, dict):
        return str(value.get("type", "hash"))
    return str(getattr(value, "type", "hash"))


AssignmentSpec = Annotated[
    Annotated[AssignmentConfig, Tag("hash")] | Annotated[ThompsonAssignmentConfig, Tag("thompson")],
    Discriminator(
        _assignment_type,
        custom_error_type="unknown_assignment_type",
        custom_error_message="unknown assignment type; known: hash, thompson",
    ),
]
"""`assignment:` is hashed by default or a Thompson-sampling bandit (``type: thompson``)."""


class CapConfig(_Strict):
    """Winsorisation of a per-unit value: at a percentile pooled over all variants, or at an
    absolute value (`reports.capping`)."""

    type: Literal["percentile", "absolute"]
    value: float = Field(allow_inf_nan=False)
    ignore_zeros: bool = Field(
        default=False, description="percentile only: compute it over the units with v > 0"
    )

    @model_validator(mode="after")
    def _in_range(self) -> CapConfig:
        if self.ignore_zeros and self.type != "percentile":
            raise ValueError("ignore_zeros applies to a percentile cap only")
        if self.type == "percentile" and not 0.0 < self.value < 1.0:
            raise ValueError("a percentile cap is a share strictly between 0 and 1, e.g. 0.99")
        if self.type == "absolute" and not self.value > 0.0:
            raise ValueError("an absolute cap must be positive")
        return self


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def duration_seconds(text: str) -> float:
    """``"72h"`` -> 259200.0; a number with one unit of s, m, h or d."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration such as 72h, 30m, 7d or 45s: {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _check_duration(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a duration needs its unit, such as 72h, 30m, 7d or 45s")
    duration_seconds(value)
    return value


Duration = Annotated[str, BeforeValidator(_check_duration)]
"""A length of time written with its unit: ``45s``, ``30m``, ``72h``, ``7d``."""


class MetricWindow(_Strict):
    """Which of a unit's events count, relative to its first exposure: ``start`` <= elapsed <
    ``end``; the window is closed ``delay`` after its end (late events), and units whose
    window is still open are left out of the metric (`reports.windows`)."""

    start: Duration = "0h"
    end: Duration
    delay: Duration = "0h"

    @model_validator(mode="after")
    def _ordered(self) -> MetricWindow:
        if not self.start_seconds < self.end_seconds:
            raise ValueError(f"window.start ({self.start}) must be before window.end ({self.end})")
        return self

    @property
    def start_seconds(self) -> float:
        """`start` in seconds after the first exposure."""
        return duration_seconds(self.start)

    @property
    def end_seconds(self) -> float:
        """`end` in seconds after the first exposure."""
        return duration_seconds(self.end)

    @property
    def closes_after_seconds(self) -> float:
        """Seconds from the first exposure until the window counts as closed (end + delay)."""
        return self.end_seconds + duration_seconds(self.delay)


class LiftPriorConfig(_Strict):
    """A normal prior on a metric's relative lift for the Bayesian view: N(mean, stddev²)."""

    mean: float = Field(default=0.0, allow_inf_nan=False)
    stddev: float = Field(gt=0.0, allow_inf_nan=False)


class EventCount(_Strict):
    """A per-unit aggregate of one event type: the count of events or the sum of their values."""

    event: MetricEvent
    value: Literal["count", "sum"] = "count"
    cap: CapConfig | None = None

    _event = field_validator("event")(_check_event)


class ProportionMetric(_Strict):
    """Share of units with at least one event of a type."""

    name: str = Field(pattern=KEY_PATTERN)
    type: Literal["proportion"]
    event: MetricEvent
    window: MetricWindow | None = None
    prior: LiftPriorConfig | None = None
    description: str = ""

    _event = field_validator("event")(_check_event)

    @model_validator(mode="before")
    @classmethod
    def _no_cap(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cap" in data:
            raise ValueError(
                "cap: a proportion is 0 or 1 per unit, there is nothing to cap "
                "(cap a mean or a ratio's numerator or denominator)"
            )
        return data


class MeanMetric(_Strict):
    """Mean over units of a per-unit count or sum of an event type."""

    name: str = Field(pattern=KEY_PATTERN)
    type: Literal["mean"]
    event: MetricEvent
    value: Literal["count", "sum"] = "count"
    cap: CapConfig | None = None
    window: MetricWindow | None = None
    prior: LiftPriorConfig | None = None
    description: str = ""

    _event = field_validator("event")(_check_event)


class RatioMetric(_Strict):
    """Per-unit numerator over per-unit denominator, analysed with the delta method."""

    name: str = Field(pattern=KEY_PATTERN)
    type: Literal["ratio"]
    numerator: EventCount
    denominator: EventCount
    window: MetricWindow | None = None
    """Applies to the numerator's and the denominator's events alike."""
    prior: LiftPriorConfig | None = None
    description: str = ""


# The quantile metric lives in its own module, which reads the classes above.
from abplatform.config.quantiles import QuantileMetric  # noqa: E402

MetricConfig = Annotated[
    ProportionMetric | MeanMetric | RatioMetric | QuantileMetric, Field(discriminator="type")
]

RewardMetric = ProportionMetric | MeanMetric
"""A metric with one reward per bandit unit (a ratio metric has none)."""
RewardFamily = Literal["binary", "gaussian"]
"""The posterior family of a reward: Beta for a proportion, Normal-Inverse-Gamma for a mean."""
UnitKind = Literal["unit", "unit and scene", "request"]
"""What one bandit decision covers: the unit, the unit in one scene, or one request."""


@dataclass(frozen=True)
class BanditSpec:
    """The facts of a bandit experiment, derived once from its validated config."""

    assignment: ThompsonAssignmentConfig
    reward_metric: RewardMetric
    arms: tuple[str, ...]

    @property
    def reward(self) -> RewardFamily:
        """The reward's posterior family: binary for a proportion metric, else gaussian."""
        return "binary" if isinstance(self.reward_metric, ProportionMetric) else "gaussian"

    @property
    def unit_kind(self) -> UnitKind:
        """What one decision covers (``sticky``, ``context: scene``)."""
        if not self.assignment.sticky:
            return "request"
        return "unit" if self.assignment.context is None else "unit and scene"

    @property
    def sums_values(self) -> bool:
        """Whether a unit's reward sums event values (a mean metric with ``value: sum``)."""
        return isinstance(self.reward_metric, MeanMetric) and self.reward_metric.value == "sum"


class WorldConfig(_Strict):
    """Parameters of the simulated shop's behaviour model."""

    categories: int = Field(default=24, ge=1, le=1000)
    brands: int = Field(default=12, ge=1, le=1000)
    latent_dim: int = Field(default=16, ge=2, le=256)
    price_min: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    price_max: float = Field(default=500.0, gt=0, allow_inf_nan=False)
    position_decay: float = Field(default=0.85, gt=0, le=1.0, allow_inf_nan=False)
    click_bias: float = Field(
        default=-4.5, allow_inf_nan=False, description="intercept of the click logit"
    )
    affinity_scale: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    price_weight: float = Field(default=0.5, ge=0, allow_inf_nan=False)
    purchase_bias: float = Field(default=-3.0, allow_inf_nan=False)
    history_days: int = Field(default=30, ge=1, le=3650)
    history_sessions_per_user: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    satiation: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="click-logit penalty per unit of similarity to an item shown higher up",
    )
    cart_size_max: int = Field(default=3, ge=1, le=20)


class LoggingStrategySpec(_Strict):
    """What the shop serves during a simulation's logging period (no model pin: it is
    fitted on the organic history when the run starts)."""

    kind: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


DEFAULT_LOGGING_STRATEGY = LoggingStrategySpec(kind="popularity", params={"window_days": 30})
"""The shop's current strategy before the experiment: global popularity over 30 days."""


class SimulationConfig(_Strict):
    """Size and seed of a simulated run of the experiment."""

    users: int = Field(default=20_000, ge=2, le=50_000_000)
    days: int = Field(default=7, ge=1, le=365)
    sessions_per_user_per_day: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False)
    slate_size: int = Field(default=10, ge=1, le=200)
    items: int = Field(default=5_000, ge=10, le=5_000_000)
    seed: int = Field(default=42, ge=0)
    scenes: dict[str, float] = Field(
        default_factory=lambda: {"home_page": 1.0},
        description="share of sessions per scene (home_page, product_detail, cart_page)",
    )
    truth_draws: int = Field(
        default=2, ge=1, le=100, description="context draws per user for ground truth"
    )
    world: WorldConfig = Field(default_factory=WorldConfig)
    logging_days: int = Field(
        default=0,
        ge=0,
        le=365,
        description="days before the experiment that the shop serves `logging_strategy`, "
        "logged as the experiment `<key>__logging` (what rankers train on)",
    )
    logging_strategy: LoggingStrategySpec = Field(
        default_factory=lambda: DEFAULT_LOGGING_STRATEGY,
        description="the shop's current strategy during the logging period",
    )

    @field_validator("scenes")
    @classmethod
    def _scene_shares(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = [scene for scene in value if scene not in SCENES]
        if unknown:
            raise ValueError(f"unknown scenes {unknown}; known: {', '.join(SCENES)}")
        if any(not 0.0 <= share <= 1.0 for share in value.values()):
            raise ValueError("scene shares must lie in [0, 1]")
        if abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError(f"scene shares must sum to 1 (they sum to {sum(value.values()):.6g})")
        return value


class PrePeriod(_Strict):
    """A window of pre-experiment data for CUPED: `start` <= timestamp < `end` (UTC)."""

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> PrePeriod:
        if self.start >= self.end:
            raise ValueError("pre_period.start must be before pre_period.end")
        return self

    def naive_utc(self) -> tuple[datetime, datetime]:
        """(start, end) as naive UTC datetimes, as stored in the database."""
        return _naive_utc(self.start), _naive_utc(self.end)


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


class AnalysisConfig(_Strict):
    """How the experiment is analysed (see docs/statistics.md)."""

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, allow_inf_nan=False)
    cuped: bool = Field(
        default=True, description="adjust mean/proportion metrics with their pre-period value"
    )
    sequential: bool = Field(
        default=False, description="always-valid p-values and confidence sequences (peeking-safe)"
    )
    sequential_tuning: int = Field(
        default=5000, ge=10, description="units per variant at which the sequence is tightest"
    )
    correction: Literal["none", "holm", "bh"] = "holm"
    power: float = Field(default=0.8, gt=0.0, lt=1.0, allow_inf_nan=False)
    guardrails: list[str] = Field(default_factory=list)
    pre_period: PrePeriod | None = Field(
        default=None,
        description="CUPED window; with it, the experiment's own (ingested) events before "
        "each unit's first exposure count as pre-period data too",
    )
    dimensions: Dimensions = Field(default_factory=list)
    """Breakdowns (`reports.breakdowns`): built-in dimensions or users profile columns."""


class ExperimentConfig(_Strict):
    """A whole experiment: variants with strategies, assignment, metrics, optional simulation."""

    key: str = Field(pattern=KEY_PATTERN)
    description: str = ""
    unit: str = Field(default="user", min_length=1, max_length=64)
    catalog: str | None = Field(default=None, max_length=128)
    assignment: AssignmentSpec = Field(default_factory=AssignmentConfig)
    variants: list[VariantConfig]
    control: str | None = None
    metrics: list[MetricConfig] = Field(default_factory=list)
    simulation: SimulationConfig | None = None
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    @model_validator(mode="before")
    @classmethod
    def _bandit_default_weights(cls, data: Any) -> Any:
        """Under thompson a variant may omit `weight`: it gets 1/K (the initial equal share)."""
        if not isinstance(data, dict):
            return data
        assignment, variants = data.get("assignment"), data.get("variants")
        if not (isinstance(assignment, dict) and assignment.get("type") == "thompson"):
            return data
        if not isinstance(variants, list) or not variants:
            return data
        share = 1.0 / len(variants)
        filled = [
            {**v, "weight": share} if isinstance(v, dict) and "weight" not in v else v
            for v in variants
        ]
        return {**data, "variants": filled}

    @property
    def is_bandit(self) -> bool:
        """Whether the experiment allocates adaptively (Thompson sampling)."""
        return self.assignment.type == "thompson"

    @cached_property
    def bandit(self) -> BanditSpec | None:
        """The bandit facts of a thompson experiment (its reward metric resolved), else None.

        The loader has checked them (`abplatform.config.loader`); a config built without it
        and naming no proportion or mean metric raises ValueError here.
        """
        assignment = self.assignment
        if not isinstance(assignment, ThompsonAssignmentConfig):
            return None
        metric = next((m for m in self.metrics if m.name == assignment.reward_metric), None)
        if not isinstance(metric, ProportionMetric | MeanMetric):
            raise ValueError(
                f"assignment.reward_metric must name a proportion or mean metric of the "
                f"experiment, got {assignment.reward_metric!r}"
            )
        return BanditSpec(assignment, metric, tuple(v.key for v in self.variants))

    def require_bandit(self) -> BanditSpec:
        """`bandit`, or ValueError for an experiment that is not a bandit."""
        spec = self.bandit
        if spec is None:
            raise ValueError(f"not a bandit experiment (assignment type {self.assignment.type!r})")
        return spec

    @property
    def control_key(self) -> str:
        """The control variant's key: `control:` if given, else the first variant."""
        return self.control if self.control is not None else self.variants[0].key

    @property
    def hash_seed(self) -> str:
        """The seed mixed into unit hashes (defaults to the experiment key)."""
        seed = self.assignment.seed if isinstance(self.assignment, AssignmentConfig) else None
        return seed if seed is not None else self.key

    @property
    def logging_key(self) -> str:
        """The experiment key its simulated logging period is logged under."""
        return f"{self.key}{LOGGING_SUFFIX}"

    @property
    def catalog_name(self) -> str:
        """The catalogue (items, users, history) the experiment's strategies use."""
        return self.catalog if self.catalog is not None else "default"

    def variant(self, key: str) -> VariantConfig:
        """The variant with this key."""
        for variant in self.variants:
            if variant.key == key:
                return variant
        raise KeyError(key)
