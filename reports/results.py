"""Typed results of an analysis (frozen dataclasses); each `to_dict` is the JSON contract."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from abplatform.config.models import UnitKind

if TYPE_CHECKING:
    from reports.breakdown_results import Breakdowns

__all__ = [
    "AllocationCheck",
    "AllocationPoint",
    "AnalysisResult",
    "BanditArm",
    "BanditResult",
    "BayesSummary",
    "CapSummary",
    "ComparisonResult",
    "CupedInfo",
    "MetricResult",
    "MetricType",
    "ModelVersionBreakdown",
    "RankingQuality",
    "Regret",
    "RunInfo",
    "SequentialSummary",
    "ServedModel",
    "SrmSummary",
    "VariantEstimate",
    "VariantModels",
    "Verdict",
    "WindowSummary",
    "clean_float",
    "clean_pair",
]

MetricType = Literal["proportion", "mean", "ratio", "quantile"]
Verdict = Literal["significant win", "significant loss", "inconclusive", "keep running"]
"""The decision line of a comparison (JSON key ``decision``)."""
RewardFamily = Literal["binary", "gaussian"]
"""What one bandit decision covers: a unit, a unit in one scene, or one request."""


def clean_float(value: float | None) -> float | None:
    """``value`` as a plain float, or None when missing or not finite (JSON has no NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def clean_pair(pair: tuple[float, float] | Sequence[float] | None) -> list[float] | None:
    """An interval as ``[lo, hi]``, or None when missing or not finite."""
    if pair is None:
        return None
    lo, hi = clean_float(pair[0]), clean_float(pair[1])
    return None if lo is None or hi is None else [lo, hi]


class JsonResult:
    """Base of the result types: `to_dict` is the JSON form of the fields, in field order.

    Floats become None when not finite (JSON has no NaN), intervals (fields typed
    ``tuple[float, float]``) ``[lo, hi]`` or None, tuples lists, and nested results their
    own `to_dict`.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        hints = _hints(type(self))
        out = {}
        for name in hints:
            value = getattr(self, name)
            out[name] = clean_pair(value) if hints[name] in _INTERVALS else _json(value)
        return out


_INTERVALS = (tuple[float, float], tuple[float, float] | None)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The field types of a result class, in field order (worked out once per class)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def _json(value: object) -> object:
    if isinstance(value, JsonResult):
        return value.to_dict()
    if isinstance(value, float):
        return clean_float(value)
    if isinstance(value, Mapping):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_json(item) for item in value]
    return value


@dataclass(frozen=True)
class VariantEstimate(JsonResult):
    """One variant's estimate of a metric: mean (or ratio of totals) with its CI."""

    variant: str
    units: int
    mean: float | None
    ci: tuple[float, float] | None
    note: str | None


@dataclass(frozen=True)
class CupedInfo(JsonResult):
    """Whether CUPED was applied to a comparison and how much variance it removed."""

    applied: bool
    variance_reduction: float
    theta: float
    """The slope on the pre-period value (a ratio's: on its pre-period numerator)."""
    note: str | None
    theta_denominator: float | None = None
    """A ratio's slope on its pre-period denominator; None when not used."""


NOT_REQUESTED = CupedInfo(False, 0.0, 0.0, "not requested")


@dataclass(frozen=True)
class BayesSummary(JsonResult):
    """Posterior view of a comparison: chance to beat the control and the lift's interval."""

    method: str
    chance_to_beat_control: float
    lift_mean: float | None
    lift_interval: tuple[float, float] | None
    risk_treatment: float | None = None
    """Expected loss (relative lift) of shipping the variant: E[max(-lift, 0)]."""
    risk_control: float | None = None
    """Expected loss (relative lift) of keeping the control: E[max(lift, 0)]."""
    prior_mean: float | None = None
    """Mean of the normal prior on the relative lift; None: a flat (or Beta(1, 1)) prior."""
    prior_stddev: float | None = None


@dataclass(frozen=True)
class SequentialSummary(JsonResult):
    """Always-valid (mixture sequential) view of a comparison."""

    p_value: float
    diff_ci: tuple[float, float]
    rel_lift_ci: tuple[float, float] | None
    boundary_z: float
    z: float | None
    tuning_units: float


@dataclass(frozen=True)
class ComparisonResult(JsonResult):
    """A non-control variant against the control on one metric."""

    variant: str
    baseline: str
    diff: float | None
    diff_ci: tuple[float, float] | None
    rel_lift: float | None
    rel_lift_ci: tuple[float, float] | None
    p_value: float | None
    significant: bool
    note: str | None
    p_value_adjusted: float | None = None
    """P-value behind the decision (always-valid when sequential), corrected for multiplicity."""
    decision: Verdict = "keep running"
    chance_to_beat_control: float | None = None
    bayes: BayesSummary | None = None
    cuped: CupedInfo | None = None
    sequential: SequentialSummary | None = None
    mde: float | None = None
    """Absolute difference detectable with the configured power at the current size."""
    mde_relative: float | None = None
    guardrail: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf); no CUPED record reads "not requested"."""
        return {**super().to_dict(), "cuped": (self.cuped or NOT_REQUESTED).to_dict()}


@dataclass(frozen=True)
class CapSummary(JsonResult):
    """A capped per-unit value of a metric: its rule, the threshold and the units cut."""

    role: str
    """``value`` (a mean metric), ``numerator`` or ``denominator`` (a ratio)."""
    type: str
    value: float
    threshold: float | None
    """None when a percentile had no analysed unit to be computed from."""
    capped_units: Mapping[str, int]
    """Per variant, the units whose value was above the threshold (and was cut to it)."""


@dataclass(frozen=True)
class WindowSummary(JsonResult):
    """A metric's window (`reports.windows`) and the units left out while it is open."""

    start: str
    end: str
    delay: str
    as_of: str
    """The analysis time that decided which windows had closed (UTC, ISO 8601)."""
    open_units: Mapping[str, int]
    """Per variant, the units whose window had not closed yet (left out of this metric)."""


@dataclass(frozen=True)
class MetricResult(JsonResult):
    """Per-variant estimates, comparisons with the control and ground truth of one metric."""

    metric: str
    type: MetricType
    variants: tuple[VariantEstimate, ...]
    comparisons: tuple[ComparisonResult, ...]
    ground_truth: Mapping[str, float] | None
    guardrail: bool = False
    cuped: CupedInfo | None = None
    """Pooled over variants; ``variance_reduction`` is 1 - var(adjusted) / var(raw)."""
    capping: tuple[CapSummary, ...] = ()
    """The metric's capped values (`reports.capping`); empty when it is not capped."""
    window: WindowSummary | None = None
    """The metric's window (`reports.windows`); None when every event counts."""
    quantile: float | None = None
    """A quantile metric's ``q`` (`reports.quantiles`); None (and not in the JSON) otherwise."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf); no CUPED record reads "not requested"."""
        out = {**super().to_dict(), "cuped": (self.cuped or NOT_REQUESTED).to_dict()}
        if self.quantile is None:
            del out["quantile"]
        return out


@dataclass(frozen=True)
class SrmSummary(JsonResult):
    """Sample-ratio-mismatch check of the units per variant against the configured weights."""

    p_value: float
    chi2: float
    mismatch: bool
    observed: Mapping[str, int]
    expected: Mapping[str, float]


@dataclass(frozen=True)
class RunInfo(JsonResult):
    """The experiment's latest simulation run."""

    id: int
    seed: int
    status: str


@dataclass(frozen=True)
class RankingQuality(JsonResult):
    """Ranking metrics of one variant (see `reports.ranking`)."""

    slates: int
    hit_rate: float | None
    ndcg: float | None
    coverage: float | None
    intra_list_diversity: float | None
    novelty: float | None


@dataclass(frozen=True)
class BanditArm(JsonResult):
    """One arm in one context of a bandit: allocation, P(best), naive and IPW means."""

    context: str
    arm: str
    units: int
    weight: float | None
    """The weight in force now (latest version)."""
    p_best: float | None
    naive_mean: float | None
    naive_ci: tuple[float, float] | None
    ipw_mean: float | None
    """Hajek (self-normalised) inverse-propensity-weighted mean: the headline."""
    ipw_se: float | None
    ipw_ci: tuple[float, float] | None
    ht_mean: float | None
    ht_se: float | None
    ht_ci: tuple[float, float] | None
    min_propensity: float | None
    effective_units: float | None
    """``(sum 1/p)^2 / sum 1/p^2``."""
    truth: float | None
    lowest_weight: float | None
    note: str | None


@dataclass(frozen=True)
class AllocationPoint(JsonResult):
    """One kept weight version of one context: each arm's weight and P(best)."""

    version: int
    context: str
    units: int
    weights: Mapping[str, float]
    p_best: Mapping[str, float]


@dataclass(frozen=True)
class AllocationCheck(JsonResult):
    """Do the units per arm match the logged weights they were drawn from?"""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    df: int
    p_value: float
    mismatch: bool
    units_checked: int
    units_unchecked: int


@dataclass(frozen=True)
class Regret(JsonResult):
    """Cumulative regret of a simulated bandit beside a fixed equal split."""

    units: tuple[int, ...]
    bandit: tuple[float, ...]
    fixed: tuple[float, ...]
    total: float
    fixed_total: float
    total_units: int
    best_arm: Mapping[str, str]
    true_values: Mapping[str, Mapping[str, float]]
    definition: str


@dataclass(frozen=True)
class BanditResult(JsonResult):
    """The bandit section of a Thompson-sampling experiment's analysis."""

    reward_metric: str
    reward: RewardFamily
    context: str | None
    sticky: bool
    unit: UnitKind
    update_every: int
    min_weight: float
    alpha: float
    versions: int
    excluded_units: int
    estimator: str
    arms: tuple[BanditArm, ...]
    allocation: tuple[AllocationPoint, ...]
    allocation_check: AllocationCheck
    regret: Regret | None


FITTED_AT_START = "fitted at start"
"""How exposures without a model id (a strategy fitted when serving began) are labelled."""


@dataclass(frozen=True)
class ServedModel(JsonResult):
    """One model that served a variant: the registered model, or none (fitted at start)."""

    model_id: int | None
    version: int | None
    kind: str | None
    status: str | None
    label: str
    """``model 7 (v2)``, or ``fitted at start`` without a model id."""
    exposures: int
    units: int
    """Distinct units it served (a unit served by two models counts in both)."""


@dataclass(frozen=True)
class ModelVersionBreakdown(JsonResult):
    """A variant's units enrolled by one model version (first exposure) and their metric means."""

    model_id: int | None
    version: int | None
    label: str
    units: int
    means: Mapping[str, float | None]
    """Per metric: the mean (proportion, mean) or ratio of totals over these units."""


@dataclass(frozen=True)
class VariantModels(JsonResult):
    """The model versions that served one variant; a breakdown when there were several."""

    variant: str
    models: tuple[ServedModel, ...]
    breakdown: tuple[ModelVersionBreakdown, ...] | None = None
    """Only for a variant served by more than one model version."""


@dataclass(frozen=True)
class AnalysisResult:
    """Everything `analyze` found out about an experiment; `to_dict` is the JSON contract."""

    experiment: str
    description: str
    control: str
    alpha: float
    units: Mapping[str, int]
    excluded_units: Mapping[str, int]
    srm: SrmSummary
    metrics: tuple[MetricResult, ...]
    run: RunInfo | None
    warnings: tuple[str, ...] = ()
    correction: str = "none"
    sequential: bool = False
    cuped: bool = False
    power: float = 0.8
    guardrails: tuple[str, ...] = ()
    ranking: Mapping[str, RankingQuality] | None = None
    bandit: BanditResult | None = None
    """Thompson-sampling experiments only: allocation, P(best), IPW estimates, regret."""
    models: Mapping[str, VariantModels] | None = None
    """Per variant, the registered model versions that served it (`exposures.model_id`)."""
    descriptions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The YAML's non-empty descriptions, keyed ``variant:KEY`` and ``metric:NAME``; the HTML
    report shows them (not part of the JSON, which carries only the experiment's)."""
    breakdowns: Breakdowns | None = None
    """`analysis.dimensions` only: per slice units, SRM and metrics (`reports.breakdowns`)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of an analysis (floats or null; never NaN or infinity)."""
        extra = {} if self.breakdowns is None else {"breakdowns": self.breakdowns.to_dict()}
        return {
            "experiment": self.experiment,
            "description": self.description,
            "control": self.control,
            "alpha": self.alpha,
            "units": dict(self.units),
            "excluded_units": dict(self.excluded_units),
            "srm": self.srm.to_dict(),
            "metrics": [metric.to_dict() for metric in self.metrics],
            "run": None if self.run is None else self.run.to_dict(),
            "warnings": list(self.warnings),
            "correction": self.correction,
            "sequential": self.sequential,
            "cuped": self.cuped,
            "mde": {
                "power": self.power,
                "alpha": self.alpha,
                "meaning": "per comparison, the absolute (mde) and relative (mde_relative) "
                "difference detectable with this power at the current number of units",
            },
            "guardrails": list(self.guardrails),
            "ranking": None
            if self.ranking is None
            else {variant: values.to_dict() for variant, values in self.ranking.items()},
            "bandit": None if self.bandit is None else self.bandit.to_dict(),
            "models": None
            if self.models is None
            else {variant: served.to_dict() for variant, served in self.models.items()},
            **extra,
        }
