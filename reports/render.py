"""Render an `AnalysisResult` as one self-contained HTML page (Jinja2, inline CSS and SVG)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from reports.breakdown_views import breakdowns_view
from reports.charts import lift_chart, line_chart
from reports.formatting import (
    DASH,
    capping_text,
    format_diff,
    format_interval,
    format_lift,
    format_number,
    format_p_value,
    format_percent,
    format_value,
    p_text,
    ranking_cells,
    window_text,
)
from reports.quantiles import method_text, quantile_label
from reports.results import (
    AnalysisResult,
    BanditResult,
    ComparisonResult,
    MetricResult,
    VariantEstimate,
    clean_float,
    clean_pair,
)
from reports.scorecard import build_scorecard

__all__ = ["render_report"]


ARM_TONES = 8
"""Distinct arm colours in the stylesheet (arm0 ... arm7); more arms reuse them."""


def _bandit_view(bandit: BanditResult, confidence: str) -> dict[str, Any]:
    """The bandit section: per-context arm tables and allocation charts, and regret."""
    metric_type = "proportion" if bandit.reward == "binary" else "mean"

    def value(v: float | None) -> str:
        return format_value(metric_type, v)

    def interval(pair: tuple[float, float] | None) -> str:
        kept = clean_pair(pair)
        return "" if kept is None else format_interval((kept[0], kept[1]), value)

    arm_order = list(dict.fromkeys(row.arm for row in bandit.arms))
    tone = {arm: f"arm{i % ARM_TONES}" for i, arm in enumerate(arm_order)}
    contexts: dict[str, dict[str, Any]] = {}
    for row in bandit.arms:
        truth = clean_float(row.truth)
        view = contexts.setdefault(row.context, {"label": row.context or "all units", "rows": []})
        view["rows"].append(
            {
                "arm": row.arm,
                "tone": tone[row.arm],
                "units": f"{row.units:,}",
                "weight": format_percent(row.weight, 1),
                "p_best": format_percent(row.p_best, 1),
                "naive": value(row.naive_mean),
                "naive_ci": interval(row.naive_ci),
                "ipw": value(row.ipw_mean),
                "ipw_ci": interval(row.ipw_ci),
                "ht": value(row.ht_mean),
                "ht_ci": interval(row.ht_ci),
                "truth": None if truth is None else value(truth),
                "note": row.note,
            }
        )
    for context, view in contexts.items():
        points = [p for p in bandit.allocation if p.context == context]
        versions = [float(p.version) for p in points]
        series = [
            (arm, versions, [float(p.weights.get(arm, math.nan)) for p in points], tone[arm])
            for arm in arm_order
        ]
        where = "" if not context else f" ({context})"
        view["chart"] = line_chart(
            series,
            title=f"Allocation weight of each arm by weight version{where}",
            x_label="weight version (one per batched update)",
            y_format=lambda y: format_percent(y, 0),
            y_max=1.0,
        )
    regret_view = None
    regret = bandit.regret
    if regret is not None:
        # Both curves start at no units, no regret.
        units = [0.0] + [float(u) for u in regret.units]
        chart = line_chart(
            [
                ("Thompson sampling", units, [0.0, *regret.bandit], "regret-bandit"),
                ("fixed equal split", units, [0.0, *regret.fixed], "regret-fixed"),
            ],
            title="Cumulative regret against the best arm: Thompson sampling and a fixed "
            "equal split",
            x_label="bandit units",
            y_format=lambda y: format_number(y, 3),
        )
        fixed = regret.fixed_total
        saving = 1.0 - regret.total / fixed if fixed else None
        regret_view = {
            "chart": chart,
            "total": format_number(regret.total),
            "fixed_total": format_number(fixed),
            "saving": format_percent(saving, 0),
            "units": f"{regret.total_units:,}",
            "best": ", ".join(
                f"{arm}" if not context else f"{context}: {arm}"
                for context, arm in regret.best_arm.items()
            ),
        }
    check = bandit.allocation_check
    check_view = None
    if check.units_checked:
        check_view = {"mismatch": check.mismatch, "p_text": p_text(clean_float(check.p_value))}
    return {
        "check": check_view,
        "reward_metric": bandit.reward_metric,
        "unit": bandit.unit,
        "versions": bandit.versions,
        "update_every": f"{bandit.update_every:,}",
        "contexts": list(contexts.values()),
        "has_truth": any(clean_float(row.truth) is not None for row in bandit.arms),
        "regret": regret_view,
        "confidence": confidence,
    }


# ---------------------------------------------------------------------------
# View model
# ---------------------------------------------------------------------------


def _true_lift(truth: Mapping[str, float] | None, variant: str, baseline: str) -> float | None:
    """The simulator's relative lift of `variant` over `baseline`, when both are known."""
    if not truth or variant not in truth or baseline not in truth or truth[baseline] == 0:
        return None
    return truth[variant] / truth[baseline] - 1.0


def _optional_interval(pair: tuple[float, float] | None, fmt: Callable[[float | None], str]) -> str:
    return "" if pair is None else format_interval(pair, fmt)


def _verdict(cmp: ComparisonResult) -> str:
    if cmp.p_value is None:
        return "not testable"
    return "significant" if cmp.significant else "not significant"


def _variant_row(
    mr: MetricResult,
    estimate: VariantEstimate,
    cmp: ComparisonResult | None,
    control: str,
) -> dict[str, Any]:
    def value(v: float | None) -> str:
        return format_value(mr.type, v)

    def diff(v: float | None) -> str:
        return format_diff(mr.type, v)

    truth = None
    if mr.ground_truth is not None and estimate.variant in mr.ground_truth:
        truth = value(mr.ground_truth[estimate.variant])
    notes = [n for n in (estimate.note, cmp.note if cmp else None) if n]
    row: dict[str, Any] = {
        "variant": estimate.variant,
        "is_control": estimate.variant == control,
        "units": f"{estimate.units:,}",
        "mean": value(estimate.mean),
        "ci": format_interval(estimate.ci, value),
        "truth": truth,
        "notes": notes,
        "diff": DASH,
        "diff_ci": "",
        "lift": DASH,
        "lift_ci": "",
        "p_value": DASH,
        "verdict": "baseline" if estimate.variant == control else "",
        "tone": "neutral",
        "p_adjusted": DASH,
        "chance": DASH,
        "decision": "",
        "decision_tone": "neutral",
    }
    if cmp is not None:
        verdict = _verdict(cmp)
        tone = "neutral"
        if cmp.significant and cmp.diff is not None:
            tone = "up" if cmp.diff > 0 else "down"
        row.update(
            diff=diff(cmp.diff),
            diff_ci=_optional_interval(cmp.diff_ci, diff),
            lift=format_lift(cmp.rel_lift),
            lift_ci=_optional_interval(cmp.rel_lift_ci, format_lift),
            p_value=format_p_value(cmp.p_value),
            verdict=verdict,
            tone=tone,
            p_adjusted=format_p_value(cmp.p_value_adjusted),
            chance=format_percent(cmp.chance_to_beat_control, 1),
            decision=cmp.decision,
            decision_tone=_decision_tone(cmp.decision),
        )
    return row


def _decision_tone(decision: str) -> str:
    return {"significant win": "up", "significant loss": "down"}.get(decision, "neutral")


def _details(mr: MetricResult, cmp: ComparisonResult, confidence: str) -> list[str]:
    """Plain-language lines under a comparison: sequential CI, MDE, Bayes, CUPED."""

    def diff(v: float | None) -> str:
        return format_diff(mr.type, v)

    lines = []
    if cmp.sequential is not None:
        seq = cmp.sequential
        ci = seq.diff_ci
        lift_ci = seq.rel_lift_ci
        text = f"Always-valid {confidence} interval (safe to check at any time): "
        text += format_interval(ci, diff) if ci is not None else DASH
        if lift_ci is not None:
            text += f", relative lift {format_interval(lift_ci, format_lift)}"
        text += (
            f"; it excludes zero once |difference| / standard error exceeds "
            f"{format_number(seq.boundary_z, 3)}"
            f" (now {format_number(seq.z, 3)}), always-valid {p_text(seq.p_value)}"
        )
        lines.append(text)
    if cmp.mde is not None:
        text = f"Smallest effect detectable now: {diff(cmp.mde).lstrip('+')}"
        if cmp.mde_relative is not None:
            text += f" ({format_percent(cmp.mde_relative, 1)} of the control's value)"
        lines.append(text + ".")
    if cmp.bayes is not None and cmp.chance_to_beat_control is not None:
        interval = cmp.bayes.lift_interval
        text = f"Chance to beat control: {format_percent(cmp.chance_to_beat_control, 1)}"
        if interval is not None:
            text += f"; credible interval of the lift {format_interval(interval, format_lift)}"
        bayes = cmp.bayes
        if bayes.method == "beta-binomial":
            posterior = "Beta-Binomial posterior, uniform priors"
        elif bayes.prior_mean is not None and bayes.prior_stddev is not None:
            posterior = (
                f"normal posterior, prior on the lift N({format_lift(bayes.prior_mean)}, "
                f"{format_percent(bayes.prior_stddev, 1)}²)"
            )
        else:
            posterior = "normal posterior, flat prior"
        if bayes.risk_treatment is not None and bayes.risk_control is not None:
            text += (
                f"; risk (expected relative loss) of shipping {cmp.variant} "
                f"{format_percent(bayes.risk_treatment, 2)}, of keeping {cmp.baseline} "
                f"{format_percent(bayes.risk_control, 2)}"
            )
        lines.append(f"{text} ({posterior}).")
    if cmp.cuped is not None and cmp.cuped.applied:
        lines.append(
            "CUPED on: pre-experiment behaviour removed "
            f"{format_percent(cmp.cuped.variance_reduction, 1)} of the variance of the difference."
        )
    return lines


def _cuped_text(mr: MetricResult) -> str:
    info = mr.cuped
    if info is None:
        return "CUPED off."
    if info.applied and mr.type == "ratio":
        parts = "numerator and denominator" if info.theta_denominator is not None else "numerator"
        return (
            "CUPED on: the ratio's delta-method linearisation adjusted with each unit's "
            f"pre-experiment {parts} (variance reduced by "
            f"{format_percent(info.variance_reduction, 1)})."
        )
    if info.applied:
        return (
            "CUPED on: adjusted with each unit's pre-experiment value of this metric "
            f"(variance reduced by {format_percent(info.variance_reduction, 1)})."
        )
    return f"CUPED off ({info.note})." if info.note else "CUPED off."


def _chart(mr: MetricResult, cmp: ComparisonResult, confidence: str) -> dict[str, Any]:
    truth = _true_lift(mr.ground_truth, cmp.variant, cmp.baseline)
    title = f"{mr.metric}: relative lift of {cmp.variant} vs {cmp.baseline} "
    title += format_lift(cmp.rel_lift)
    if cmp.rel_lift_ci is not None:
        title += f" ({confidence} CI {format_interval(cmp.rel_lift_ci, format_lift)})"
    if truth is not None:
        title += f"; true lift {format_lift(truth)}"
    chart = lift_chart(cmp.rel_lift, cmp.rel_lift_ci, truth, cmp.significant, title)
    return {
        "variant": cmp.variant,
        "baseline": cmp.baseline,
        "chart": chart,
        "lift": format_lift(cmp.rel_lift),
        "lift_ci": _optional_interval(cmp.rel_lift_ci, format_lift),
        "truth": format_lift(truth) if truth is not None else None,
        "verdict": _verdict(cmp),
        "decision": cmp.decision,
        "decision_tone": _decision_tone(cmp.decision),
        "details": _details(mr, cmp, confidence),
    }


def _value_label(mr: MetricResult) -> str:
    if mr.quantile is not None:
        return quantile_label(mr.quantile)
    return {"proportion": "Rate", "mean": "Mean", "ratio": "Ratio"}[mr.type]


def _metric_view(mr: MetricResult, control: str, alpha: float, description: str) -> dict[str, Any]:
    by_variant = {cmp.variant: cmp for cmp in mr.comparisons}
    confidence = _confidence(alpha)
    return {
        "name": mr.metric,
        "description": description,
        "type": mr.type,
        "value_label": _value_label(mr),
        "diff_label": "Difference" + (" (pp)" if mr.type == "proportion" else ""),
        "has_truth": mr.ground_truth is not None,
        "rows": [
            _variant_row(mr, est, by_variant.get(est.variant), control) for est in mr.variants
        ],
        "charts": [_chart(mr, cmp, confidence) for cmp in mr.comparisons],
        "guardrail": mr.guardrail,
        "cuped": _cuped_text(mr),
        "capping": capping_text(mr.capping),
        "window": window_text(mr.window),
        "quantile": None if mr.quantile is None else method_text(mr.quantile),
    }


def _confidence(alpha: float) -> str:
    level = 100.0 * (1.0 - alpha)
    return f"{level:.0f}%" if level == round(level) else f"{level:g}%"


def _ranking_view(result: AnalysisResult) -> list[dict[str, str]]:
    """Rows of the ranking-quality table (empty when there were no slates)."""
    return [
        {"variant": variant, **ranking_cells(values)}
        for variant, values in (result.ranking or {}).items()
    ]


def _view(result: AnalysisResult) -> dict[str, Any]:
    total = sum(result.units.values())
    srm = result.srm
    units = [
        {
            "variant": variant,
            "units": f"{n:,}",
            "share": format_percent(n / total if total else None, 1),
            "expected": f"{srm.expected.get(variant, 0.0):,.1f}",
            "description": result.descriptions.get(f"variant:{variant}", ""),
        }
        for variant, n in result.units.items()
    ]
    return {
        "experiment": result.experiment,
        "description": result.description,
        "control": result.control,
        "alpha": f"{result.alpha:g}",
        "confidence": _confidence(result.alpha),
        "units": units,
        "total_units": f"{total:,} unit" if total == 1 else f"{total:,} units",
        "excluded": result.excluded_units.get("multiple_variants", 0),
        "srm": {
            "mismatch": srm.mismatch,
            "p_text": p_text(srm.p_value),
            "chi2": format_number(srm.chi2),
        },
        "metrics": [
            _metric_view(
                mr, result.control, result.alpha, result.descriptions.get(f"metric:{mr.metric}", "")
            )
            for mr in result.metrics
        ],
        "scorecard": build_scorecard(result, _confidence(result.alpha)),
        "any_charts": any(mr.comparisons for mr in result.metrics),
        "any_truth": any(mr.ground_truth is not None for mr in result.metrics),
        "run": result.run,
        "warnings": list(result.warnings),
        "ranking": _ranking_view(result),
        "correction": _CORRECTION_TEXT.get(result.correction, result.correction),
        "sequential": result.sequential,
        "power": format_percent(result.power, 0),
        "family_size": sum(len(mr.comparisons) for mr in result.metrics if not mr.guardrail),
        "bandit": None
        if result.bandit is None
        else _bandit_view(result.bandit, _confidence(result.alpha)),
        "models": _models_view(result),
        "breakdowns": breakdowns_view(result.breakdowns),
    }


def _models_view(result: AnalysisResult) -> dict[str, Any] | None:
    """Rows of the models-served table and, per variant served by several, its breakdown."""
    if not result.models:
        return None
    types = {metric.metric: metric.type for metric in result.metrics}
    rows = [
        {
            "variant": variant,
            "label": one.label,
            "kind": one.kind or DASH,
            "status": one.status or DASH,
            "exposures": f"{one.exposures:,}",
            "units": f"{one.units:,}",
        }
        for variant, served in result.models.items()
        for one in served.models
    ]
    mixed = [
        {
            "variant": variant,
            "count": len(served.models),
            "rows": [
                {
                    "label": row.label,
                    "units": f"{row.units:,}",
                    "means": [format_value(types[name], row.means.get(name)) for name in types],
                }
                for row in served.breakdown
            ],
        }
        for variant, served in result.models.items()
        if served.breakdown is not None
    ]
    return {"rows": rows, "mixed": mixed, "metrics": list(types)}


_CORRECTION_TEXT = {
    "none": "no correction for multiple comparisons",
    "holm": "Holm-Bonferroni correction",
    "bh": "Benjamini-Hochberg (false discovery rate) correction",
}


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(result: AnalysisResult) -> str:
    """Render the analysis as one self-contained HTML page.

    Parameters
    ----------
    result : AnalysisResult
        The output of `reports.analysis.analyze`.

    Returns
    -------
    str
        An HTML5 document with inline CSS and inline SVG charts: no scripts,
        no external stylesheets, fonts or images. Every value coming from the
        experiment (key, description, variant and metric names) is escaped.
    """
    return _environment().get_template("report.html").render(**_view(result))
