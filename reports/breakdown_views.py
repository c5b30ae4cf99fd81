"""The breakdowns (`reports.breakdowns`) as compact console tables and the HTML report's view."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from abplatform.config.dimensions import MAX_SLICES
from reports import formatting as fmt
from reports.breakdown_results import Breakdown, Breakdowns
from reports.breakdowns import OTHER
from reports.results import ComparisonResult

__all__ = ["breakdowns_renderable", "breakdowns_view"]


def _cell(cmp: ComparisonResult) -> str:
    """``+3.2% (p 0.04*)``: the relative lift and the corrected p-value (* when significant)."""
    lift = fmt.format_lift(cmp.rel_lift) if cmp.rel_lift is not None else fmt.DASH
    p = fmt.format_p_value(cmp.p_value_adjusted)
    star = "*" if cmp.decision.startswith("significant") else ""
    return f"{lift} (p {p}{star})"


def _note(breakdowns: Breakdowns, breakdown: Breakdown) -> str:
    pooled = breakdown.values - MAX_SLICES
    values = (
        f"{breakdown.values} values: the {MAX_SLICES} with the most units, {pooled} pooled as "
        f"'{OTHER}'"
        if pooled > 0
        else f"{breakdown.values} value" + ("s" if breakdown.values != 1 else "")
    )
    return (
        f"{breakdown.definition}; {values}; p-values corrected ({breakdowns.correction}) "
        f"{breakdowns.family}, {breakdown.family_size} comparisons"
    )


def breakdowns_renderable(breakdowns: Breakdowns | None) -> list[RenderableType]:
    """One compact table per dimension: a row per (slice, variant), a column per metric."""
    if breakdowns is None:
        return []
    parts: list[RenderableType] = []
    for breakdown in breakdowns.dimensions:
        table = Table(
            title=f"Breakdown by {breakdown.dimension}",
            title_justify="left",
            caption=_note(breakdowns, breakdown),
            caption_justify="left",
        )
        table.add_column(breakdown.dimension)
        table.add_column("units", justify="right")
        table.add_column("SRM p", justify="right")
        table.add_column("variant")
        names = (
            [metric.metric for metric in breakdown.slices[0].metrics] if breakdown.slices else []
        )
        for name in names:
            table.add_column(Text(f"{name} lift"), justify="right")
        for piece in breakdown.slices:
            srm = fmt.format_p_value(piece.srm.p_value) + (" SRM!" if piece.srm.mismatch else "")
            variants = (
                [cmp.variant for cmp in piece.metrics[0].comparisons] if piece.metrics else []
            )
            for k, variant in enumerate(variants):
                table.add_row(
                    Text(piece.value) if k == 0 else "",
                    f"{sum(piece.units.values()):,}" if k == 0 else "",
                    srm if k == 0 else "",
                    Text(variant),
                    *(_cell(metric.comparisons[k]) for metric in piece.metrics),
                )
        parts.append(table)
    return parts


def breakdowns_view(breakdowns: Breakdowns | None) -> dict[str, Any] | None:
    """What the `_breakdowns.html` partial shows (None: no dimensions configured)."""
    if breakdowns is None:
        return None
    dimensions = []
    for breakdown in breakdowns.dimensions:
        metrics = [m.metric for m in breakdown.slices[0].metrics] if breakdown.slices else []
        rows = []
        for piece in breakdown.slices:
            variants = (
                [cmp.variant for cmp in piece.metrics[0].comparisons] if piece.metrics else []
            )
            for k, variant in enumerate(variants):
                rows.append(
                    {
                        "first": k == 0,
                        "span": len(variants),
                        "value": piece.value,
                        "pooled": piece.pooled_values if piece.pooled_values > 1 else None,
                        "units": ", ".join(f"{v} {n:,}" for v, n in piece.units.items()),
                        "srm": fmt.format_p_value(piece.srm.p_value),
                        "mismatch": piece.srm.mismatch,
                        "variant": variant,
                        "cells": [
                            {
                                "lift": fmt.format_lift(metric.comparisons[k].rel_lift),
                                "p": fmt.format_p_value(metric.comparisons[k].p_value_adjusted),
                                "tone": _tone(metric.comparisons[k]),
                            }
                            for metric in piece.metrics
                        ],
                    }
                )
        dimensions.append(
            {
                "name": breakdown.dimension,
                "note": _note(breakdowns, breakdown),
                "metrics": metrics,
                "rows": rows,
            }
        )
    return {"dimensions": dimensions}


def _tone(cmp: ComparisonResult) -> str:
    if cmp.decision == "significant win":
        return "win"
    return "loss" if cmp.decision == "significant loss" else "neutral"
