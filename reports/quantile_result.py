"""One quantile metric's result: per-variant quantiles and comparisons with the control."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from abplatform.config.models import ExperimentConfig, MetricConfig
from abplatform.config.quantiles import QuantileMetric
from reports.bayes import LiftPrior, normal_approximation
from reports.metric_result import Options, ground_truth_of
from reports.power import mde_at
from reports.quantiles import QuantileStats, compare_quantiles
from reports.results import (
    BayesSummary,
    ComparisonResult,
    CupedInfo,
    MetricResult,
    SequentialSummary,
    VariantEstimate,
)
from reports.sequential import always_valid
from reports.stats import Comparison
from reports.terms import Metric

__all__ = ["NO_CUPED", "quantile_result", "standard_metrics"]

NO_CUPED = CupedInfo(False, 0.0, 0.0, "not applied: quantile metrics are not CUPED-adjusted")


def _bayes(metric: QuantileMetric, cmp: Comparison, alpha: float) -> BayesSummary | None:
    if cmp.diff is None or cmp.se is None:
        return None
    prior = None if metric.prior is None else LiftPrior(metric.prior.mean, metric.prior.stddev)
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


def _sequential(cmp: Comparison, units: float, options: Options) -> SequentialSummary | None:
    if not options.sequential or cmp.diff is None or cmp.se is None:
        return None
    seq = always_valid(cmp, units, options.alpha, options.sequential_tuning)
    return SequentialSummary(
        p_value=seq.p_value,
        diff_ci=seq.diff_ci,
        rel_lift_ci=seq.rel_lift_ci,
        boundary_z=seq.boundary,
        z=None if cmp.se == 0 else cmp.diff / cmp.se,
        tuning_units=seq.tuning_units,
    )


def quantile_result(
    metric: QuantileMetric,
    stats: Mapping[str, QuantileStats],
    config: ExperimentConfig,
    options: Options,
    ground_truth: Any,
) -> MetricResult:
    """Estimates per variant (``mean`` holds the quantile, ``ci`` its order-statistic
    interval) and comparisons with the control; not yet corrected for multiplicity."""
    alpha, control = options.alpha, config.control_key
    keys = [variant.key for variant in config.variants]
    variants = tuple(
        VariantEstimate(k, stats[k].n, stats[k].value, stats[k].ci, stats[k].note) for k in keys
    )
    guardrail = metric.name in options.guardrails
    comparisons = []
    for key in keys:
        if key == control:
            continue
        cmp = compare_quantiles(stats[key], stats[control], alpha)
        bayes = _bayes(metric, cmp, alpha)
        mde = None if cmp.se is None else mde_at(cmp.se, alpha, options.power)
        base = stats[control].value
        comparisons.append(
            ComparisonResult(
                variant=key,
                baseline=control,
                diff=cmp.diff,
                diff_ci=cmp.diff_ci,
                rel_lift=cmp.rel_lift,
                rel_lift_ci=cmp.rel_lift_ci,
                p_value=cmp.p_value,
                significant=cmp.p_value is not None and cmp.p_value < alpha,
                note=cmp.note,
                chance_to_beat_control=None if bayes is None else bayes.chance_to_beat_control,
                bayes=bayes,
                cuped=NO_CUPED,
                sequential=_sequential(cmp, (stats[key].n + stats[control].n) / 2.0, options),
                mde=mde,
                mde_relative=None if mde is None or not base else mde / abs(base),
                guardrail=guardrail,
            )
        )
    return MetricResult(
        metric=metric.name,
        type="quantile",
        variants=variants,
        comparisons=tuple(comparisons),
        ground_truth=ground_truth_of(ground_truth, metric.name),
        guardrail=guardrail,
        cuped=NO_CUPED,
        quantile=metric.q,
    )


def standard_metrics(metrics: Sequence[MetricConfig]) -> list[Metric]:
    """The metrics summed into sufficient statistics (`reports.aggregate`): all but the
    quantile metrics, which are computed from order statistics (`reports.quantile_sql`)."""
    return [metric for metric in metrics if not isinstance(metric, QuantileMetric)]
