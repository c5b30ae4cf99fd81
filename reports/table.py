"""Terminal tables of an `AnalysisResult` with rich: SRM line, units, one table per metric."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from reports import formatting as fmt
from reports.breakdown_views import breakdowns_renderable
from reports.quantiles import method_text, quantile_label
from reports.results import (
    AnalysisResult,
    BanditResult,
    ComparisonResult,
    MetricResult,
    VariantModels,
    clean_float,
    clean_pair,
)

__all__ = [
    "bandit_renderable",
    "metric_table",
    "models_renderable",
    "print_table",
    "ranking_table",
    "report_renderable",
]

_VALUE_HEADER = {"proportion": "rate", "mean": "mean", "ratio": "ratio", "quantile": "quantile"}


def _with_ci(point: str, interval: tuple[str, str] | None) -> Text:
    # Text, not str: rich would read "[...]" in a plain string as markup.
    return Text(point if interval is None else f"{point} [{interval[0]}, {interval[1]}]")


def _verdict(cmp: ComparisonResult) -> Text:
    if cmp.p_value is None:
        return Text("not testable", style="dim")
    if not cmp.significant:
        return Text("not significant", style="dim")
    up = cmp.diff is not None and cmp.diff > 0
    return Text("significant", style="bold green" if up else "bold red")


def _decision(cmp: ComparisonResult) -> Text:
    style = {"significant win": "bold green", "significant loss": "bold red"}
    return Text(cmp.decision, style=style.get(cmp.decision, "dim"))


def metric_table(metric: MetricResult, result: AnalysisResult) -> Table:
    """One metric as a table: a row per variant, comparisons against the control.

    Parameters
    ----------
    metric : MetricResult
        The metric to show.
    result : AnalysisResult
        The whole analysis (for the control and the confidence level).

    Returns
    -------
    rich.table.Table
        Columns: variant, units, value with its CI, ground truth (when known),
        difference and relative lift vs the control with their CIs, p-value and
        a verdict in words. Notes on degenerate cases go in the caption.
    """
    kind = metric.type if metric.quantile is None else quantile_label(metric.quantile)
    title = f"{metric.metric} ({kind})" + (" [guardrail]" if metric.guardrail else "")
    table = Table(title=Text(title), title_justify="left")
    table.add_column("variant")
    table.add_column("units", justify="right")
    confidence = f"{100 * (1 - result.alpha):g}% CI"
    table.add_column(Text(f"{_VALUE_HEADER[metric.type]} [{confidence}]"), justify="right")
    truth = metric.ground_truth
    if truth is not None:
        table.add_column("truth", justify="right", style="magenta")
    table.add_column(Text(f"diff vs {result.control}"), justify="right")
    table.add_column("rel. lift", justify="right")
    table.add_column("p-value", justify="right")
    table.add_column("verdict")
    table.add_column("adj. p", justify="right")
    table.add_column(Text(f"P(beat {result.control})"), justify="right")
    table.add_column("decision")

    def value(v: float | None) -> str:
        return fmt.format_value(metric.type, v)

    def diff(v: float | None) -> str:
        return fmt.format_diff(metric.type, v)

    comparisons = {cmp.variant: cmp for cmp in metric.comparisons}
    for est in metric.variants:
        ci = None if est.ci is None else (value(est.ci[0]), value(est.ci[1]))
        cells: list[RenderableType] = [
            Text(est.variant),
            f"{est.units:,}",
            _with_ci(value(est.mean), ci),
        ]
        if truth is not None:
            cells.append(value(truth[est.variant]) if est.variant in truth else fmt.DASH)
        cmp = comparisons.get(est.variant)
        if cmp is None:
            cells += [*[fmt.DASH] * 3, Text("baseline", style="dim"), fmt.DASH, fmt.DASH, ""]
        else:
            diff_ci = None if cmp.diff_ci is None else (diff(cmp.diff_ci[0]), diff(cmp.diff_ci[1]))
            lift_ci = (
                None
                if cmp.rel_lift_ci is None
                else (fmt.format_lift(cmp.rel_lift_ci[0]), fmt.format_lift(cmp.rel_lift_ci[1]))
            )
            cells += [
                _with_ci(diff(cmp.diff), diff_ci),
                _with_ci(fmt.format_lift(cmp.rel_lift), lift_ci),
                fmt.format_p_value(cmp.p_value),
                _verdict(cmp),
                fmt.format_p_value(cmp.p_value_adjusted),
                fmt.format_percent(cmp.chance_to_beat_control, 1),
                _decision(cmp),
            ]
        table.add_row(*cells)
    notes = [f"{est.variant}: {est.note}" for est in metric.variants if est.note]
    notes += [
        f"{cmp.variant} vs {cmp.baseline}: {cmp.note}" for cmp in metric.comparisons if cmp.note
    ]
    if metric.cuped is not None and metric.cuped.applied:
        notes.append(f"CUPED: variance -{fmt.format_percent(metric.cuped.variance_reduction, 1)}")
    if metric.capping:
        notes.append(fmt.capping_text(metric.capping))
    if metric.window is not None:
        notes.append(fmt.window_text(metric.window))
    if metric.quantile is not None:
        notes.append(method_text(metric.quantile))
    for cmp in metric.comparisons:
        if cmp.sequential is not None:
            lo, hi = cmp.sequential.diff_ci
            notes.append(f"{cmp.variant}: always-valid CI [{diff(lo)}, {diff(hi)}]")
    if notes:
        table.caption = Text("; ".join(notes))
        table.caption_justify = "left"
    return table


def report_renderable(result: AnalysisResult) -> RenderableType:
    """The whole analysis as one rich renderable: header, SRM, units, metric tables, warnings."""
    parts: list[RenderableType] = [Text(f"Experiment {result.experiment}", style="bold")]
    if result.description:
        parts.append(Text(result.description))
    srm = fmt.p_text(result.srm.p_value)
    if result.srm.mismatch:
        parts.append(
            Text(
                f"SAMPLE RATIO MISMATCH ({srm}): units per variant do not match the "
                "configured weights, so the results may be biased.",
                style="bold white on red",
            )
        )
    else:
        parts.append(Text(f"Sample ratio OK ({srm})", style="green"))
    units = Table(title="units", title_justify="left")
    units.add_column("variant")
    units.add_column("units", justify="right")
    units.add_column("expected", justify="right")
    for variant, n in result.units.items():
        units.add_row(Text(variant), f"{n:,}", f"{result.srm.expected.get(variant, 0.0):,.1f}")
    parts.append(units)
    excluded = result.excluded_units.get("multiple_variants", 0)
    if excluded:
        parts.append(Text(f"{excluded:,} units saw several variants and are excluded", "yellow"))
    if result.models:
        parts.extend(models_renderable(result))
    mode = "sequential (always-valid)" if result.sequential else "fixed-horizon"
    parts.append(Text(f"{mode} tests; correction: {result.correction}", style="dim"))
    parts.extend(metric_table(metric, result) for metric in result.metrics)
    parts.extend(breakdowns_renderable(result.breakdowns))
    parts.extend(Text(f"warning: {w}", style="yellow") for w in result.warnings)
    return Group(*parts)


def models_renderable(result: AnalysisResult) -> list[RenderableType]:
    """The models that served each variant; an alert and a per-version table for a mix."""
    models: dict[str, VariantModels] = dict(result.models or {})
    table = Table(title="models served", title_justify="left")
    for column in ("variant", "model", "kind", "status"):
        table.add_column(column)
    table.add_column("exposures", justify="right")
    table.add_column("units", justify="right")
    for variant, served in models.items():
        for one in served.models:
            table.add_row(
                Text(variant),
                Text(one.label),
                Text(one.kind or fmt.DASH),
                Text(one.status or fmt.DASH),
                f"{one.exposures:,}",
                f"{one.units:,}",
            )
    parts: list[RenderableType] = [table]
    types = {metric.metric: metric.type for metric in result.metrics}
    for variant, served in models.items():
        if served.breakdown is None:
            continue
        parts.append(
            Text(
                f"SEVERAL MODEL VERSIONS served {variant} ({len(served.models)}): its metrics "
                "mix them; per version (units by the model of their first exposure):",
                style="bold black on yellow",
            )
        )
        versions = Table(title=f"{variant} per model version", title_justify="left")
        versions.add_column("model")
        versions.add_column("units", justify="right")
        for name in types:
            versions.add_column(Text(name), justify="right")
        for row in served.breakdown:
            versions.add_row(
                Text(row.label),
                f"{row.units:,}",
                *(fmt.format_value(types[name], row.means.get(name)) for name in types),
            )
        parts.append(versions)
    return parts


def print_table(result: AnalysisResult, console: Console) -> None:
    """Print the analysis to `console` as readable tables, one per metric.

    Parameters
    ----------
    result : AnalysisResult
        The output of `reports.analysis.analyze`.
    console : rich.console.Console
        Where to print (a terminal, or ``Console(file=...)`` for plain text).
    """
    console.print(report_renderable(result))
    if result.bandit is not None:
        console.print(bandit_renderable(result.bandit))
    if result.ranking:
        console.print(ranking_table(result))


def bandit_renderable(bandit: BanditResult) -> RenderableType:
    """The bandit section: per context and arm, allocation, P(best), naive and IPW means; regret."""
    metric_type = "proportion" if bandit.reward == "binary" else "mean"
    confidence = f"{100 * (1 - bandit.alpha):g}% CI"
    table = Table(
        title=Text(f"bandit: {bandit.reward_metric} per {bandit.unit}"),
        title_justify="left",
    )
    for column in ("context", "arm"):
        table.add_column(column)
    table.add_column("units", justify="right")
    table.add_column("weight", justify="right")
    table.add_column("P(best)", justify="right")
    table.add_column("naive mean", justify="right")
    table.add_column(Text(f"IPW mean [{confidence}]"), justify="right")
    has_truth = any(clean_float(row.truth) is not None for row in bandit.arms)
    if has_truth:
        table.add_column("truth", justify="right", style="magenta")

    def value(v: float | None) -> str:
        return fmt.format_value(metric_type, v)

    notes = []
    for row in bandit.arms:
        ci = clean_pair(row.ipw_ci)
        cells: list[RenderableType] = [
            Text(row.context or "-"),
            Text(row.arm),
            f"{row.units:,}",
            fmt.format_percent(row.weight, 1),
            fmt.format_percent(row.p_best, 1),
            value(row.naive_mean),
            _with_ci(value(row.ipw_mean), None if ci is None else (value(ci[0]), value(ci[1]))),
        ]
        if has_truth:
            cells.append(value(clean_float(row.truth)))
        table.add_row(*cells)
        if row.note:
            notes.append(f"{row.arm}: {row.note}")
    caption = [
        f"{bandit.versions:,} weight versions; IPW = Hajek (self-normalised) estimate "
        "from the logged propensities"
    ]
    check = bandit.allocation_check
    if check.units_checked:
        verdict = "MISMATCH" if check.mismatch else "OK"
        p = fmt.p_text(clean_float(check.p_value))
        caption.append(f"allocation vs logged weights: {verdict} ({p})")
    regret = bandit.regret
    if regret is not None:
        fixed = regret.fixed_total
        saving = fmt.format_percent(1 - regret.total / fixed, 0) if fixed else fmt.DASH
        caption.append(
            f"cumulative regret over {regret.total_units:,} units: "
            f"{fmt.format_number(regret.total)} (fixed equal split: {fmt.format_number(fixed)}, "
            f"{saving} less)"
        )
    table.caption = Text("; ".join(caption + notes))
    table.caption_justify = "left"
    return table


def ranking_table(result: AnalysisResult) -> Table:
    """Online ranking quality per variant."""
    table = Table(title="ranking quality", title_justify="left")
    table.add_column("variant")
    for column in ("slates", "hit rate", "NDCG", "coverage", "diversity", "novelty"):
        table.add_column(column, justify="right")
    for variant, values in (result.ranking or {}).items():
        table.add_row(variant, *fmt.ranking_cells(values).values())
    return table
