"""Typed results of an analysis (frozen dataclasses); each `to_dict` is the JSON contract."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "AllocationCheck",
    "AllocationPoint",
    "AnalysisResult",
    "BanditArm",
    "BanditResult",
    "BayesSummary",
    "ComparisonResult",
    "CupedInfo",
    "MetricResult",
    "MetricType",
    "RankingQuality",
    "Regret",
    "RunInfo",
    "SequentialSummary",
    "SrmSummary",
    "VariantEstimate",
    "Verdict",
    "clean_float",
    "clean_pair",
]

MetricType = Literal["proportion", "mean", "ratio"]
Verdict = Literal["significant win", "significant loss", "inconclusive", "keep running"]
"""The decision line of a comparison (JSON key ``decision``)."""
RewardFamily = Literal["binary", "gaussian"]
UnitKind = Literal["unit", "unit and scene", "request"]
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


@dataclass(frozen=True)
class VariantEstimate:
    """One variant's estimate of a metric: mean (or ratio of totals) with its CI."""

    variant: str
    units: int
    mean: float | None
    ci: tuple[float, float] | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        return {
            "variant": self.variant,
            "units": self.units,
            "mean": clean_float(self.mean),
            "ci": clean_pair(self.ci),
            "note": self.note,
        }


@dataclass(frozen=True)
class CupedInfo:
    """Whether CUPED was applied to a comparison and how much variance it removed."""

    applied: bool
    variance_reduction: float
    theta: float
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "applied": self.applied,
            "variance_reduction": clean_float(self.variance_reduction),
            "theta": clean_float(self.theta),
            "note": self.note,
        }


NOT_REQUESTED = CupedInfo(False, 0.0, 0.0, "not requested")


@dataclass(frozen=True)
class BayesSummary:
    """Posterior view of a comparison: chance to beat the control and the lift's interval."""

    method: str
    chance_to_beat_control: float
    lift_mean: float | None
    lift_interval: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        return {
            "method": self.method,
            "chance_to_beat_control": clean_float(self.chance_to_beat_control),
            "lift_mean": clean_float(self.lift_mean),
            "lift_interval": clean_pair(self.lift_interval),
        }


@dataclass(frozen=True)
class SequentialSummary:
    """Always-valid (mixture sequential) view of a comparison."""

    p_value: float
    diff_ci: tuple[float, float]
    rel_lift_ci: tuple[float, float] | None
    boundary_z: float
    z: float | None
    tuning_units: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        return {
            "p_value": clean_float(self.p_value),
            "diff_ci": clean_pair(self.diff_ci),
            "rel_lift_ci": clean_pair(self.rel_lift_ci),
            "boundary_z": clean_float(self.boundary_z),
            "z": clean_float(self.z),
            "tuning_units": clean_float(self.tuning_units),
        }


@dataclass(frozen=True)
class ComparisonResult:
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
        """JSON-able form (no NaN/inf)."""
        return {
            "variant": self.variant,
            "baseline": self.baseline,
            "diff": clean_float(self.diff),
            "diff_ci": clean_pair(self.diff_ci),
            "rel_lift": clean_float(self.rel_lift),
            "rel_lift_ci": clean_pair(self.rel_lift_ci),
            "p_value": clean_float(self.p_value),
            "significant": self.significant,
            "note": self.note,
            "p_value_adjusted": clean_float(self.p_value_adjusted),
            "decision": self.decision,
            "chance_to_beat_control": clean_float(self.chance_to_beat_control),
            "bayes": None if self.bayes is None else self.bayes.to_dict(),
            "cuped": (self.cuped or NOT_REQUESTED).to_dict(),
            "sequential": None if self.sequential is None else self.sequential.to_dict(),
            "mde": clean_float(self.mde),
            "mde_relative": clean_float(self.mde_relative),
            "guardrail": self.guardrail,
        }


@dataclass(frozen=True)
class MetricResult:
    """Per-variant estimates, comparisons with the control and ground truth of one metric."""

    metric: str
    type: MetricType
    variants: tuple[VariantEstimate, ...]
    comparisons: tuple[ComparisonResult, ...]
    ground_truth: Mapping[str, float] | None
    guardrail: bool = False
    cuped: CupedInfo | None = None
    """Pooled over variants; ``variance_reduction`` is 1 - var(adjusted) / var(raw)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        truth = None
        if self.ground_truth is not None:
            truth = {key: clean_float(value) for key, value in self.ground_truth.items()}
        return {
            "metric": self.metric,
            "type": self.type,
            "variants": [v.to_dict() for v in self.variants],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "ground_truth": truth,
            "guardrail": self.guardrail,
            "cuped": (self.cuped or NOT_REQUESTED).to_dict(),
        }


@dataclass(frozen=True)
class SrmSummary:
    """Sample-ratio-mismatch check of the units per variant against the configured weights."""

    p_value: float
    chi2: float
    mismatch: bool
    observed: Mapping[str, int]
    expected: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        return {
            "p_value": clean_float(self.p_value),
            "chi2": clean_float(self.chi2),
            "mismatch": self.mismatch,
            "observed": dict(self.observed),
            "expected": {key: clean_float(value) for key, value in self.expected.items()},
        }


@dataclass(frozen=True)
class RunInfo:
    """The experiment's latest simulation run."""

    id: int
    seed: int
    status: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"id": self.id, "seed": self.seed, "status": self.status}


@dataclass(frozen=True)
class RankingQuality:
    """Ranking metrics of one variant (see `reports.ranking`)."""

    slates: int
    hit_rate: float | None
    ndcg: float | None
    coverage: float | None
    intra_list_diversity: float | None
    novelty: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class BanditArm:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        return {
            "context": self.context,
            "arm": self.arm,
            "units": self.units,
            "weight": clean_float(self.weight),
            "p_best": clean_float(self.p_best),
            "naive_mean": clean_float(self.naive_mean),
            "naive_ci": clean_pair(self.naive_ci),
            "ipw_mean": clean_float(self.ipw_mean),
            "ipw_se": clean_float(self.ipw_se),
            "ipw_ci": clean_pair(self.ipw_ci),
            "ht_mean": clean_float(self.ht_mean),
            "ht_se": clean_float(self.ht_se),
            "ht_ci": clean_pair(self.ht_ci),
            "min_propensity": clean_float(self.min_propensity),
            "effective_units": clean_float(self.effective_units),
            "truth": clean_float(self.truth),
            "lowest_weight": clean_float(self.lowest_weight),
            "note": self.note,
        }


@dataclass(frozen=True)
class AllocationPoint:
    """One kept weight version of one context: each arm's weight and P(best)."""

    version: int
    context: str
    units: int
    weights: Mapping[str, float]
    p_best: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "version": self.version,
            "context": self.context,
            "units": self.units,
            "weights": dict(self.weights),
            "p_best": dict(self.p_best),
        }


@dataclass(frozen=True)
class AllocationCheck:
    """Do the units per arm match the logged weights they were drawn from?"""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    df: int
    p_value: float
    mismatch: bool
    units_checked: int
    units_unchecked: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "observed": self.observed,
            "expected": {arm: clean_float(e) for arm, e in self.expected.items()},
            "chi2": clean_float(self.chi2),
            "df": self.df,
            "p_value": clean_float(self.p_value),
            "mismatch": self.mismatch,
            "units_checked": self.units_checked,
            "units_unchecked": self.units_unchecked,
        }


@dataclass(frozen=True)
class Regret:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "units": list(self.units),
            "bandit": list(self.bandit),
            "fixed": list(self.fixed),
            "total": self.total,
            "fixed_total": self.fixed_total,
            "total_units": self.total_units,
            "best_arm": dict(self.best_arm),
            "true_values": {c: dict(values) for c, values in self.true_values.items()},
            "definition": self.definition,
        }


@dataclass(frozen=True)
class BanditResult:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (no NaN/inf)."""
        return {
            "reward_metric": self.reward_metric,
            "reward": self.reward,
            "context": self.context,
            "sticky": self.sticky,
            "unit": self.unit,
            "update_every": self.update_every,
            "min_weight": self.min_weight,
            "alpha": self.alpha,
            "versions": self.versions,
            "excluded_units": self.excluded_units,
            "estimator": self.estimator,
            "arms": [arm.to_dict() for arm in self.arms],
            "allocation": [point.to_dict() for point in self.allocation],
            "allocation_check": self.allocation_check.to_dict(),
            "regret": None if self.regret is None else self.regret.to_dict(),
        }


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

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of an analysis (floats or null; never NaN or infinity)."""
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
        }
