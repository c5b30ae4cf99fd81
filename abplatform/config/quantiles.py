"""The quantile metric of the experiment YAML: the q-quantile of a per-unit count or sum."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from abplatform.config.models import (
    KEY_PATTERN,
    LiftPriorConfig,
    MetricEvent,
    MetricWindow,
    _check_event,
    _Strict,
)

__all__ = ["QuantileMetric"]


class QuantileMetric(_Strict):
    """The ``q`` quantile over units of a per-unit count or sum of an event type, e.g. the
    p90 order value per unit (`reports.quantiles`); not adjusted by CUPED, no cap, not a
    bandit reward."""

    name: str = Field(pattern=KEY_PATTERN)
    type: Literal["quantile"]
    event: MetricEvent
    value: Literal["count", "sum"] = "count"
    q: float = Field(allow_inf_nan=False)
    window: MetricWindow | None = None
    prior: LiftPriorConfig | None = None
    description: str = ""

    _event = field_validator("event")(_check_event)

    @field_validator("q")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError("a quantile is a share strictly between 0 and 1, e.g. 0.9 for p90")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_cap(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cap" in data:
            raise ValueError(
                "cap: a quantile metric is not capped (a quantile above the cap would be the "
                "cap itself); drop cap, or use a mean metric with a cap"
            )
        return data
