"""Analysis of an experiment: per-variant statistics of the SQL aggregates, assembled.

Comparisons
    Every non-control variant against ``config.control_key`` (Welch t-test for
    proportion and mean metrics, delta-method z-test for ratios, see
    `reports.stats`); ``significant`` means ``p_value < alpha``.
Sample ratio mismatch (SRM)
    Chi-square goodness-of-fit of the units per variant against the configured
    weights, flagged at ``p < 0.001``. Variants with weight 0 are left out of
    the test; any unit in one of them is a mismatch by itself.
Ground truth
    ``simulation_runs.ground_truth["metrics"][metric][variant]`` of the
    experiment's latest simulation run, when there is one.

Units, per-unit aggregates and metrics are defined in `reports.aggregate`, which
keeps everything per unit in the database; the result types are in `reports.results`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from abplatform.config.models import (
    ExperimentConfig,
    MetricConfig,
)
from abplatform.config.quantiles import QuantileMetric
from abplatform.errors import AbplatformError
from abplatform.storage.db import refresh_planner_statistics, transaction, with_local_settings
from abplatform.storage.repository import get_experiment, latest_simulation
from reports.aggregate import ExperimentAggregates, aggregate_experiment
from reports.bandit import bandit_analysis
from reports.breakdowns import breakdowns
from reports.capping import Cap, cap_thresholds
from reports.metric_result import Options, metric_result
from reports.models import served_models
from reports.multiple import adjust_pvalues
from reports.quantile_result import quantile_result, standard_metrics
from reports.quantile_sql import quantile_variant_stats
from reports.quantiles import QuantileStats
from reports.results import (
    AnalysisResult,
    CapSummary,
    ComparisonResult,
    MetricResult,
    RankingQuality,
    RunInfo,
    SrmSummary,
    Verdict,
    WindowSummary,
)
from reports.stages import stage
from reports.stats import srm_test
from reports.units import PrePeriod

__all__ = ["POSTGRES_SETTINGS", "analyze"]

POSTGRES_SETTINGS = {
    # Parallel workers sum floats in an order that changes from run to run: one plan, one
    # result, byte for byte.
    "max_parallel_workers_per_gather": "0",
    # The ranking-quality joins hash 2.8M impressions per 40,000 users; at the default 4 MB
    # they spill to temporary files (6.8 s instead of 1.8 s for the click positions).
    "work_mem": "'64MB'",
    # The plans are a few hash aggregates over whole tables, run once: compiling them (JIT)
    # cost 0.5 s of the 0.9 s of the click positions' query at 40,000 users.
    "jit": "off",
}
"""``SET LOCAL`` settings of every statement of an analysis on PostgreSQL."""


def _srm(config: ExperimentConfig, units: Mapping[str, int]) -> tuple[SrmSummary, list[str]]:
    """SRM test over the variants with positive weight; units in a weight-0 variant are a mismatch.

    The p-value and chi-square are those of the variants with positive weight.
    With fewer than two of them there is nothing to test (p = 1) and a warning
    says so.
    """
    warnings: list[str] = []
    observed = {variant.key: units.get(variant.key, 0) for variant in config.variants}
    tested = [variant for variant in config.variants if variant.weight > 0]
    expected = dict.fromkeys(observed, 0.0)
    if len(tested) >= 2:
        result = srm_test(
            [observed[variant.key] for variant in tested], [variant.weight for variant in tested]
        )
        expected.update({v.key: e for v, e in zip(tested, result.expected, strict=True)})
        p_value, chi2, mismatch = result.p_value, result.chi2, result.mismatch
    else:
        p_value, chi2, mismatch = 1.0, 0.0, False
        if len(tested) == 1:
            expected[tested[0].key] = float(sum(observed.values()))
        warnings.append("the SRM check needs at least two variants with traffic; skipped")
    unplanned = {
        variant.key: observed[variant.key]
        for variant in config.variants
        if variant.weight == 0 and observed[variant.key] > 0
    }
    if unplanned:
        mismatch = True
        listed = ", ".join(f"{key} ({_units(n)})" for key, n in unplanned.items())
        warnings.append(f"sample ratio mismatch: units in variants with weight 0: {listed}")
    return SrmSummary(p_value, chi2, mismatch, observed, expected), warnings


def _units(n: int) -> str:
    return f"{n:,} unit" if n == 1 else f"{n:,} units"


def _decision_p(cmp: ComparisonResult) -> float | None:
    """The p-value a decision rests on: always-valid when sequential, else fixed-horizon."""
    if cmp.sequential is not None:
        return cmp.sequential.p_value
    return cmp.p_value


def _decide(p_adjusted: float | None, diff: float | None, options: Options) -> Verdict:
    """Verdict of a comparison; larger is taken to be better for every metric."""
    if p_adjusted is None or diff is None:
        return "keep running"  # not enough data for a test yet
    if p_adjusted < options.alpha and diff != 0.0:
        return "significant win" if diff > 0 else "significant loss"
    # A sequential test may be looked at again later; a fixed-horizon one is over.
    return "keep running" if options.sequential else "inconclusive"


def _apply_correction(
    metrics: Sequence[MetricResult], options: Options
) -> tuple[MetricResult, ...]:
    """Correct the p-values within two families: primary metrics, and guardrails.

    Each family is every (non-control variant, metric) comparison with a p-value.
    """
    adjusted: dict[tuple[int, int], float] = {}
    for guardrail in (False, True):
        members = [
            (i, j, p)
            for i, metric in enumerate(metrics)
            if metric.guardrail == guardrail
            for j, cmp in enumerate(metric.comparisons)
            if (p := _decision_p(cmp)) is not None
        ]
        if members:
            values = adjust_pvalues([p for _, _, p in members], options.correction)
            adjusted.update(
                {(i, j): float(v) for (i, j, _), v in zip(members, values, strict=True)}
            )
    out = []
    for i, metric in enumerate(metrics):
        comparisons = []
        for j, cmp in enumerate(metric.comparisons):
            p_adj = adjusted.get((i, j))
            comparisons.append(
                dataclasses.replace(
                    cmp, p_value_adjusted=p_adj, decision=_decide(p_adj, cmp.diff, options)
                )
            )
        out.append(dataclasses.replace(metric, comparisons=tuple(comparisons)))
    return tuple(out)


def _no_data_error(key: str) -> AbplatformError:
    return AbplatformError(
        f"experiment {key!r} has no exposures yet, so there is no data to analyse",
        hint=f"simulate traffic with `abplatform simulate FILE` (the YAML of {key!r}), "
        "or load real exposures and events with `abplatform ingest FILE`",
    )


def analyze(
    engine: Engine,
    key: str,
    alpha: float | None = None,
    *,
    ranking: bool = True,
    as_of: datetime | None = None,
) -> AnalysisResult:
    """Analyse an experiment: units, SRM check, and every metric against the control.

    Parameters
    ----------
    engine : Engine
        Database holding the experiment, its exposures and events.
    key : str
        The experiment's key.
    alpha : float, optional
        Two-sided significance level of the confidence intervals and tests;
        defaults to the config's ``analysis.alpha`` (0.05).
    ranking : bool
        Whether to compute the ranking-quality section.
    as_of : datetime, optional
        The analysis time that decides which metric windows have closed (naive UTC or
        aware); defaults to now.

    Returns
    -------
    AnalysisResult
        Call ``to_dict()`` for the JSON form.

    Raises
    ------
    NotFoundError
        If there is no experiment with this key.
    AbplatformError
        If the experiment has no exposures (nothing to analyse yet).
    ValueError
        If `alpha` is not strictly between 0 and 1.

    Notes
    -----
    See the module docstring for the definitions of units, per-unit aggregates,
    metrics, SRM and ground truth.
    """
    if alpha is not None and not (
        isinstance(alpha, int | float) and not isinstance(alpha, bool) and 0.0 < float(alpha) < 1.0
    ):
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
    as_of = datetime.now(UTC).replace(tzinfo=None) if as_of is None else _naive_utc(as_of)
    engine = with_local_settings(engine, POSTGRES_SETTINGS)
    with stage("planner statistics"):
        refresh_planner_statistics(engine)
    with transaction(engine) as session:
        stored = get_experiment(session, key)
        config = stored.config
        settings = config.analysis
        options = Options(
            alpha=float(alpha) if alpha is not None else settings.alpha,
            cuped=settings.cuped,
            sequential=settings.sequential,
            sequential_tuning=settings.sequential_tuning,
            correction=settings.correction,
            power=settings.power,
            guardrails=frozenset(settings.guardrails),
        )
        variant_keys = [variant.key for variant in config.variants]
        summed = standard_metrics(config.metrics)
        with stage("capping"):  # one statement per percentile cap
            caps = cap_thresholds(session, stored.id, variant_keys, summed, as_of)
        pre_period = PrePeriod(
            stored.catalog, settings.pre_period.naive_utc() if settings.pre_period else None
        )
        with stage("aggregate SQL"):  # units, metrics and CUPED sums: one query
            aggregates = aggregate_experiment(
                session,
                stored.id,
                variant_keys,
                summed,
                covariates=summed if options.cuped else (),
                pre_period=pre_period,
                caps=caps,
                as_of=as_of,
            )
        with stage("quantiles"):  # one statement per quantile metric
            quantiles = {
                m.name: quantile_variant_stats(
                    session, stored.id, variant_keys, m, options.alpha, as_of
                )
                for m in config.metrics
                if isinstance(m, QuantileMetric)
            }
        sliced = None
        if settings.dimensions and config.bandit is None:
            with stage("breakdowns"):  # one grouped statement per dimension
                sliced = breakdowns(
                    session,
                    stored.id,
                    config,
                    options,
                    pre_period,
                    lambda family: _apply_correction(family, options),
                    caps,
                    as_of,
                )
        with stage("ground truth"):
            run = latest_simulation(session, stored.id)
        run_info: RunInfo | None = None
        ground_truth: Any = None
        if run is not None:
            run_info = RunInfo(run.id, int(run.seed), run.status)
            ground_truth = run.ground_truth
        with stage("models"):
            models, model_warnings = served_models(
                session, stored.id, config, options.alpha, caps, as_of
            )
        bandit = None
        if config.bandit is not None:
            with stage("bandit"):
                bandit = bandit_analysis(
                    session.connection(),
                    stored.id,
                    config,
                    options.alpha,
                    run.summary if run is not None else None,
                    ground_truth,
                )
    if aggregates.total_exposed == 0:
        raise _no_data_error(key)

    warnings: list[str] = []
    units = dict(aggregates.units)
    if aggregates.unknown_units:
        listed = ", ".join(f"{k} ({_units(n)})" for k, n in aggregates.unknown_variants.items())
        warnings.append(
            f"left out of every metric: {_units(aggregates.unknown_units)} exposed only to "
            f"variants that are not in the config ({listed})"
        )
    if aggregates.multiple_variants:
        warnings.append(
            f"left out of every metric: {_units(aggregates.multiple_variants)} exposed to "
            "more than one variant"
        )
    empty = [k for k, n in units.items() if n == 0]
    if empty:
        warnings.append(f"no units in variant(s): {', '.join(empty)}")
    if run_info is not None and run_info.status != "completed":
        warnings.append(
            f"the latest simulation run (id {run_info.id}) has status "
            f"{run_info.status!r}, not 'completed': its data may be partial"
        )
    if bandit is None:
        srm, srm_warnings = _srm(config, units)
    else:
        srm, srm_warnings = _bandit_srm(units)
        if bandit.allocation_check.mismatch:
            srm_warnings.append(
                "allocation mismatch: the units per arm do not match the logged bandit weights "
                f"(p = {bandit.allocation_check.p_value:.2g}); see bandit.allocation_check"
            )
    warnings.extend(srm_warnings)
    warnings.extend(model_warnings)
    with stage("statistics"):  # metrics and CUPED adjustment, in Python
        metrics = _statistics(config, options, aggregates, ground_truth, caps, as_of, quantiles)
    with stage("ranking quality"):
        ranking_quality = _ranking(engine, stored.id, stored.catalog) if ranking else None
    return AnalysisResult(
        experiment=stored.key,
        description=config.description,
        control=config.control_key,
        alpha=options.alpha,
        units=units,
        excluded_units={"multiple_variants": aggregates.multiple_variants},
        srm=srm,
        metrics=metrics,
        run=run_info,
        warnings=tuple(warnings),
        correction=options.correction,
        sequential=options.sequential,
        cuped=options.cuped,
        power=options.power,
        guardrails=tuple(settings.guardrails),
        ranking=ranking_quality,
        bandit=bandit,
        models=models,
        descriptions={
            **{f"variant:{v.key}": v.description for v in config.variants if v.description},
            **{f"metric:{mt.name}": mt.description for mt in config.metrics if mt.description},
        },
        breakdowns=sliced,
    )


def _bandit_srm(units: Mapping[str, int]) -> tuple[SrmSummary, list[str]]:
    """No fixed split to test under adaptive allocation: the SRM check is skipped, and said so."""
    observed = dict(units)
    expected = {key: float(n) for key, n in observed.items()}
    return SrmSummary(1.0, 0.0, False, observed, expected), [
        "adaptive allocation (thompson): the SRM check against fixed weights does not apply, "
        "and the per-variant means and comparisons below ignore the propensities, so they can "
        "be biased; read the bandit section's inverse-propensity-weighted estimates"
    ]


def _ranking(engine: Engine, experiment_id: int, catalog: str) -> dict[str, RankingQuality]:
    """Online ranking quality per variant (see reports.ranking)."""
    from reports.ranking import ranking_quality

    return ranking_quality(engine, experiment_id, catalog)


def _statistics(
    config: ExperimentConfig,
    options: Options,
    aggregates: ExperimentAggregates,
    ground_truth: Any,
    caps: Sequence[Cap] = (),
    as_of: datetime | None = None,
    quantiles: Mapping[str, Mapping[str, QuantileStats]] | None = None,
) -> tuple[MetricResult, ...]:
    """Every metric's estimates and comparisons (CUPED-adjusted where it applies), corrected."""
    results = []
    for metric in config.metrics:
        if isinstance(metric, QuantileMetric):
            assert quantiles is not None
            result = quantile_result(metric, quantiles[metric.name], config, options, ground_truth)
            if metric.window is not None and as_of is not None:
                analysed = {v: s.n for v, s in quantiles[metric.name].items()}
                result = dataclasses.replace(
                    result, window=_window(metric, as_of, aggregates.units, analysed)
                )
            results.append(result)
            continue
        result = metric_result(
            metric,
            aggregates.stats[metric.name],
            config,
            options,
            ground_truth,
            aggregates.covariates.get(metric.name),
        )
        capping = tuple(
            CapSummary(
                role=cap.role,
                type=cap.config.type,
                value=cap.config.value,
                threshold=cap.threshold,
                capped_units=dict(
                    aggregates.capped_units.get(
                        (cap.metric, cap.role), dict.fromkeys(aggregates.units, 0)
                    )
                ),
            )
            for cap in caps
            if cap.metric == metric.name
        )
        if capping:
            result = dataclasses.replace(result, capping=capping)
        if metric.window is not None and as_of is not None:
            stats = aggregates.stats[metric.name]
            analysed = {v: stats[v].n for v in aggregates.units}
            window = _window(metric, as_of, aggregates.units, analysed)
            result = dataclasses.replace(result, window=window)
        results.append(result)
    return _apply_correction(results, options)


def _window(
    metric: MetricConfig,
    as_of: datetime,
    units: Mapping[str, int],
    analysed: Mapping[str, int],
) -> WindowSummary:
    """A windowed metric's window and its units per variant left out while it is open."""
    assert metric.window is not None
    return WindowSummary(
        start=metric.window.start,
        end=metric.window.end,
        delay=metric.window.delay,
        as_of=as_of.replace(tzinfo=UTC).isoformat(),
        open_units={v: n - analysed[v] for v, n in units.items()},
    )


def _naive_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)
