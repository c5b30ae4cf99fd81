"""Request and response bodies of the API, with limits on every field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)

from abplatform.domain import FeedbackType
from abplatform.values import seconds_problem, storable

MAX_BATCH = 1_000
MAX_SLATE = 100
MAX_CART = 100

# Plausible event times, as for ingested logs: before 1970 or after 2100 is a unit mistake.
MIN_TIME = datetime(1970, 1, 1)
MAX_TIME = datetime(2100, 1, 1)


def _unix_seconds(value: Any) -> Any:
    """A number (or numeric text) is Unix seconds, checked as CSV ingest does; never ms."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value  # left to the datetime validation, which rejects it
    try:
        seconds = float(value)
    except ValueError:
        return value  # ISO 8601 text
    problem = seconds_problem(seconds)
    if problem is not None:
        raise ValueError(problem)
    return datetime.fromtimestamp(seconds, UTC)


def _utc_naive(value: datetime) -> datetime:
    """An aware time -> naive UTC (as stored); naive means UTC. Must lie in 1970..2100."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if not MIN_TIME <= value < MAX_TIME:
        raise ValueError("must lie between 1970-01-01 and 2100-01-01 UTC")
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(storable)]
Scene = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(storable)]
Timestamp = Annotated[
    datetime,
    Field(description="ISO 8601 (naive means UTC) or Unix seconds (never ms), within 1970..2100"),
    BeforeValidator(_unix_seconds),
    AfterValidator(_utc_naive),
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssignContext(_Body):
    """What the page shows: the current item and the cart."""

    current_item: Id | None = None
    cart_items: list[Id] = Field(default_factory=list, max_length=MAX_CART)


class AssignRequest(_Body):
    """Ask for a unit's variant and its slate."""

    experiment: Id
    unit_id: Id
    scene: Scene | None = None
    context: AssignContext | None = None
    k: Annotated[int, Strict()] | None = Field(default=None, ge=1, le=MAX_SLATE)


class AssignBatchRequest(_Body):
    """Up to 1,000 assignment requests answered together."""

    requests: list[AssignRequest] = Field(min_length=1, max_length=MAX_BATCH)


class SlateItem(BaseModel):
    """One recommended item at its slate position (0-based)."""

    item_id: str
    position: int
    score: float
    source: str | None = Field(
        default=None,
        description="the retrieval source that found the item (a pipeline's stage name); "
        "absent for strategies without sources",
    )


class AssignResponse(BaseModel):
    """The decision; `variant` null means the unit is outside the experiment (no exposure)."""

    experiment: str
    variant: str | None
    propensity: float | None
    exposure_id: int | None
    items: list[SlateItem]


class AssignBatchResponse(BaseModel):
    """One response per request, in request order."""

    results: list[AssignResponse]


class EventIn(_Body):
    """A feedback event; `event_id` makes retries safe (recorded once)."""

    event_id: Id
    unit_id: Id
    type: FeedbackType
    experiment: Id | None = None
    exposure_id: Annotated[int, Strict()] | None = Field(default=None, ge=1, le=2**63 - 1)
    item_id: Id | None = None
    value: Annotated[float, Strict()] | None = Field(
        default=None, allow_inf_nan=False, ge=-1e15, le=1e15
    )
    timestamp: Timestamp | None = None


class EventBatch(_Body):
    """Up to 1,000 events."""

    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


class UnfeaturedEvent(BaseModel):
    """A newly recorded event that did not update the feature store, and why."""

    index: int = Field(description="the event's position in the request's `events`")
    event_id: str
    reason: str


UNFEATURED_LISTED = 100
"""Unfeatured events a response lists at most (`unfeatured_count` counts them all)."""


class EventsResponse(BaseModel):
    """How many events were received, newly recorded, and already recorded before; of the
    new ones, how many updated the unit's online features and which did not (unknown item,
    unit or experiment): all of them counted, the first `UNFEATURED_LISTED` listed."""

    received: int
    new: int
    duplicates: int
    featured: int
    unfeatured_count: int = Field(
        description="new events that updated no online features (unknown item, unit or "
        "experiment); `featured + unfeatured_count == new`"
    )
    unfeatured: list[UnfeaturedEvent] = Field(
        description=f"the first {UNFEATURED_LISTED} of them, in batch order, with the reason"
    )


class VariantOut(BaseModel):
    """A variant of a stored experiment."""

    key: str
    weight: float
    strategy: str | None


class ExperimentOut(BaseModel):
    """A stored experiment with its status and config."""

    key: str
    status: Literal["draft", "running", "stopped"]
    catalog: str
    description: str
    variants: list[VariantOut]
    config: dict[str, Any]


class ExperimentList(BaseModel):
    """Every stored experiment, by key."""

    experiments: list[ExperimentOut]


UtcTimeText = Annotated[
    str, Field(description="ISO 8601 time in UTC without an offset, e.g. 2026-11-30T12:00:00")
]
"""A registry time as `ModelRecord.to_dict` writes it: not an RFC 3339 ``date-time`` (no
offset), so the schema must not claim that format."""


class ModelOut(BaseModel):
    """A registered model (`abplatform models show --json`); times are ISO 8601 UTC."""

    id: int
    experiment: str
    variant: str
    version: int
    kind: str
    params: dict[str, Any]
    params_hash: str
    seed: int
    catalog: str
    history_cutoff: UtcTimeText | None
    history_rows: int
    artifact_path: str
    artifact_sha256: str
    metrics: dict[str, float]
    status: Literal["candidate", "serving", "retired"]
    created_at: UtcTimeText
    status_changed_at: UtcTimeText


class ModelList(BaseModel):
    """Registered models by experiment, variant and version."""

    models: list[ModelOut]


class Problem(BaseModel):
    """An error: what is wrong, what to do, and for configs one line per problem."""

    detail: str
    hint: str | None = None
    problems: list[str] = Field(default_factory=list)


class ValidationProblem(BaseModel):
    """A 422: `detail` lists {type, loc, msg} per bad field, or says what is wrong."""

    detail: str | list[dict[str, Any]]
    hint: str | None = None
    problems: list[str] = Field(default_factory=list)


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
