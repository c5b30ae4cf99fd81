"""One metric's result: per-variant estimates, comparisons with the control, CUPED, Bayes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from abplatform.config.models import (
    ExperimentConfig,
    MeanMetric,
    ProportionMetric,
    RatioMetric,
)
from reports.bayes import LiftPrior, beta_binomial, normal_approximation
from reports.cuped import (
    CovariateSums,
    CupedResult,
    RatioCovariateSums,
    cuped_adjust,
    cuped_adjust_ratio,
)
from reports.power import mde_at
from reports.results import (
    BayesSummary,
    ComparisonResult,
    CupedInfo,
    MetricResult,
    SequentialSummary,
    VariantEstimate,
)
from reports.sequential import always_valid
from reports.stats import Comparison, compare, estimate
from reports.sufficient import MeanStats, RatioStats
from reports.terms import cuped_eligible

__all__ = ["Options", "ground_truth_of", "metric_result"]


def ground_truth_of(document: Any, metric: str) -> dict[str, float] | None:
    """``document["metrics"][metric]`` as {variant: float}, or None when absent."""
    if not isinstance(document, Mapping):
        return None
    metrics = document.get("metrics")
    if not isinstance(metrics, Mapping):
        return None
    values = metrics.get(metric)
    if not isinstance(values, Mapping):
        return None
    truth = {
        str(variant): float(value)
        for variant, value in values.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }
    return truth or None


@dataclass(frozen=True)
class Options:
    """The analysis settings in force (from the config's ``analysis:`` block)."""

    alpha: float
    cuped: bool
    sequential: bool
    sequential_tuning: int
    correction: str
    power: float
    guardrails: frozenset[str]


def _cuped_info(result: CupedResult) -> CupedInfo:
    return CupedInfo(
        result.applied,
        result.variance_reduction,
        result.theta,
        result.note,
        result.theta_denominator,
    )


def _comparison_variance_reduction(raw: Comparison, adjusted: Comparison) -> float:
    """``1 - Var(adjusted diff) / Var(raw diff)`` of one comparison (0 when undefined)."""
    if raw.se is None or adjusted.se is None or raw.se == 0.0:
        return 0.0
    return 1.0 - (adjusted.se / raw.se) ** 2


def _bayes(
    metric: ProportionMetric | MeanMetric | RatioMetric,
    treatment: MeanStats | RatioStats,
    baseline: MeanStats | RatioStats,
    cmp: Comparison,
    alpha: float,
) -> BayesSummary | None:
    prior = None if metric.prior is None else LiftPrior(metric.prior.mean, metric.prior.stddev)
    if prior is None and isinstance(metric, ProportionMetric) and isinstance(treatment, MeanStats):
        assert isinstance(baseline, MeanStats)
        if treatment.n == 0 or baseline.n == 0:
            return None
        # Per-unit 0/1 flags: the totals are the numbers of converted units.
        result = beta_binomial(
            round(treatment.total), treatment.n, round(baseline.total), baseline.n, alpha
        )
    else:
        if cmp.diff is None or cmp.se is None:
            return None
        result = normal_approximation(cmp.diff, cmp.se, cmp.rel_lift, cmp.rel_lift_se, alpha, prior)
    used = prior if result.method == "normal with prior" else None
    return BayesSummary(
        result.method,
        result.chance_to_beat_control,
        result.lift_mean,
        result.lift_interval,
        result.risk_treatment,
        result.risk_control,
        None if used is None else used.mean,
        None if used is None else used.stddev,
    )


def _adjusted(
    metric: ProportionMetric | MeanMetric | RatioMetric,
    per_variant: Mapping[str, MeanStats | RatioStats],
    covariates: Mapping[str, CovariateSums | RatioCovariateSums],
    keys: Sequence[str],
) -> CupedResult:
    """CUPED of a mean/proportion (`cuped_adjust`) or of a ratio (`cuped_adjust_ratio`)."""
    if isinstance(metric, RatioMetric):
        ratios = {k: v for k, v in per_variant.items() if isinstance(v, RatioStats)}
        sums = {k: v for k, v in covariates.items() if isinstance(v, RatioCovariateSums)}
        assert len(ratios) == len(per_variant) and set(keys) <= set(sums)
        return cuped_adjust_ratio({k: ratios[k] for k in keys}, {k: sums[k] for k in keys})
    means = {k: v for k, v in per_variant.items() if isinstance(v, MeanStats)}
    plain = {k: v for k, v in covariates.items() if isinstance(v, CovariateSums)}
    assert len(means) == len(per_variant)
    return cuped_adjust(
        {k: means[k] for k in keys}, {k: plain.get(k, CovariateSums(0.0, 0.0, 0.0)) for k in keys}
    )


def metric_result(
    metric: ProportionMetric | MeanMetric | RatioMetric,
    stats: Mapping[str, MeanStats | RatioStats],
    config: ExperimentConfig,
    options: Options,
    ground_truth: Any,
    covariates: Mapping[str, CovariateSums | RatioCovariateSums] | None = None,
) -> MetricResult:
    """Estimates per variant and comparisons with the control (CUPED-adjusted where it
    applies, with the Bayesian view, sequential bounds and MDE); not yet corrected for
    multiple comparisons (`reports.analysis`)."""
    alpha = options.alpha
    control = config.control_key
    keys = [variant.key for variant in config.variants]
    empty: MeanStats | RatioStats = (
        RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        if isinstance(metric, RatioMetric)
        else MeanStats(0, 0.0, 0.0)
    )
    per_variant = {key: stats.get(key, empty) for key in keys}
    variants = []
    for key in keys:
        est = estimate(per_variant[key], alpha)
        variants.append(VariantEstimate(key, est.n, est.value, est.ci, est.note))

    cuped: CupedResult | None = None
    if not options.cuped:
        metric_cuped = CupedInfo(False, 0.0, 0.0, "CUPED is off (analysis.cuped: false)")
    elif not cuped_eligible(metric):
        metric_cuped = CupedInfo(False, 0.0, 0.0, "not applied: impressions have no history")
    elif covariates is None:
        metric_cuped = CupedInfo(False, 0.0, 0.0, "not applied: no pre-period data")
    else:
        cuped = _adjusted(metric, per_variant, covariates, keys)
        metric_cuped = _cuped_info(cuped)
        if not cuped.applied:
            metric_cuped = CupedInfo(False, 0.0, 0.0, f"not applied: {cuped.note}")

    comparisons = []
    for key in keys:
        if key == control:
            continue
        raw = compare(per_variant[key], per_variant[control], alpha)
        cmp, info = raw, metric_cuped
        if cuped is not None and cuped.applied:
            cmp = compare(cuped.stats[key], cuped.stats[control], alpha)
            info = dataclasses.replace(
                metric_cuped, variance_reduction=_comparison_variance_reduction(raw, cmp)
            )
        significant = cmp.p_value is not None and cmp.p_value < alpha
        sequential: SequentialSummary | None = None
        if options.sequential and cmp.diff is not None and cmp.se is not None:
            units = (per_variant[key].n + per_variant[control].n) / 2.0
            seq = always_valid(cmp, units, alpha, options.sequential_tuning)
            sequential = SequentialSummary(
                p_value=seq.p_value,
                diff_ci=seq.diff_ci,
                rel_lift_ci=seq.rel_lift_ci,
                boundary_z=seq.boundary,
                z=None if cmp.se == 0 else cmp.diff / cmp.se,
                tuning_units=seq.tuning_units,
            )
        bayes = _bayes(metric, per_variant[key], per_variant[control], cmp, alpha)
        mde = mde_relative = None
        if cmp.se is not None:
            mde = mde_at(cmp.se, alpha, options.power)
            base = per_variant[control]
            base_value = base.mean if isinstance(base, MeanStats) else base.ratio
            if base_value:
                mde_relative = mde / abs(base_value)
        comparisons.append(
            ComparisonResult(
                variant=key,
                baseline=control,
                diff=cmp.diff,
                diff_ci=cmp.diff_ci,
                rel_lift=cmp.rel_lift,
                rel_lift_ci=cmp.rel_lift_ci,
                p_value=cmp.p_value,
                significant=significant,
                note=cmp.note,
                chance_to_beat_control=None if bayes is None else bayes.chance_to_beat_control,
                bayes=bayes,
                cuped=info,
                sequential=sequential,
                mde=mde,
                mde_relative=mde_relative,
                guardrail=metric.name in options.guardrails,
            )
        )
    return MetricResult(
        metric=metric.name,
        type=metric.type,
        variants=tuple(variants),
        comparisons=tuple(comparisons),
        ground_truth=ground_truth_of(ground_truth, metric.name),
        guardrail=metric.name in options.guardrails,
        cuped=metric_cuped,
    )
