"""Numbers, percentages, p-values and intervals formatted for people (report and console)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from reports.results import CapSummary, RankingQuality, WindowSummary

__all__ = [
    "DASH",
    "capping_text",
    "format_diff",
    "format_interval",
    "format_lift",
    "format_number",
    "format_p_value",
    "format_percent",
    "format_value",
    "p_text",
    "ranking_cells",
    "window_text",
]

DASH = "—"


def format_number(value: float | None, significant: int = 4) -> str:
    """A number with about `significant` significant digits and thousands separators.

    Examples: ``1.3333 -> "1.333"``, ``20 -> "20.00"``, ``0.0321 -> "0.03210"``,
    ``12345.6 -> "12,346"``; None or non-finite gives an em dash.
    """
    if value is None or not math.isfinite(value):
        return DASH
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = min(max(significant - 1 - magnitude, 0), 8)
    return f"{value:,.{decimals}f}"


def format_percent(value: float | None, decimals: int = 2, signed: bool = False) -> str:
    """A fraction as a percentage: ``0.0345 -> "3.45%"`` (``"+3.45%"`` when signed)."""
    if value is None or not math.isfinite(value):
        return DASH
    sign = "+" if signed else ""
    return f"{100.0 * value:{sign},.{decimals}f}%"


def format_lift(value: float | None) -> str:
    """A relative lift as a signed percentage, with more digits when it is tiny."""
    if value is None or not math.isfinite(value):
        return DASH
    decimals = 1 if abs(value) >= 0.001 or value == 0 else 3
    return format_percent(value, decimals, signed=True)


def format_p_value(value: float | None) -> str:
    """A p-value as people read it: ``"< 0.001"``, ``"0.004"``, ``"0.049"``, ``"0.23"``."""
    if value is None or not math.isfinite(value):
        return DASH
    if value < 0.001:
        return "< 0.001"
    # Three decimals near the usual thresholds, so 0.049 never shows as 0.05.
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def p_text(value: float | None) -> str:
    """``"p < 0.001"`` or ``"p = 0.23"``."""
    shown = format_p_value(value)
    return f"p {shown}" if shown.startswith("<") else f"p = {shown}"


def format_value(metric_type: str, value: float | None) -> str:
    """A metric value: a percentage for proportions, else a number."""
    return format_percent(value) if metric_type == "proportion" else format_number(value)


def format_diff(metric_type: str, value: float | None) -> str:
    """A signed difference: percentage points for proportions, else a number."""
    if value is None or not math.isfinite(value):
        return DASH
    if metric_type == "proportion":
        return f"{100.0 * value:+.2f} pp"
    text = format_number(value)
    return text if text.startswith("-") or text == "0" else f"+{text}"


def format_interval(pair: tuple[float, float] | None, fmt: Callable[[float | None], str]) -> str:
    """``"lo to hi"`` with each end formatted by `fmt`; an em dash when missing."""
    if pair is None:
        return DASH
    return f"{fmt(pair[0])} to {fmt(pair[1])}"


def ranking_cells(values: RankingQuality) -> dict[str, str]:
    """One variant's ranking quality, formatted: slates, hit rate, NDCG, coverage, ..."""
    return {
        "slates": f"{values.slates:,}",
        "hit_rate": format_percent(values.hit_rate, 1),
        "ndcg": format_number(values.ndcg),
        "coverage": format_percent(values.coverage, 1),
        "diversity": format_number(values.intra_list_diversity),
        "novelty": format_number(values.novelty),
    }


def capping_text(capping: Sequence[CapSummary]) -> str:
    """``capped: value at 812.5 (99th percentile, pooled): 41 units (a 20, b 21)``; "" if none."""
    parts = []
    for cap in capping:
        if cap.threshold is None:
            parts.append(f"{cap.role} not capped (no units to compute the percentile from)")
            continue
        rule = (
            f"{cap.value * 100:g}th percentile, pooled over variants"
            if cap.type == "percentile"
            else "absolute"
        )
        total = sum(cap.capped_units.values())
        per_variant = ", ".join(f"{v} {n:,}" for v, n in cap.capped_units.items())
        parts.append(
            f"{cap.role} capped at {cap.threshold:.6g} ({rule}): "
            f"{total:,} unit{'s' if total != 1 else ''} cut ({per_variant})"
        )
    return "; ".join(parts)


def window_text(window: WindowSummary | None) -> str:
    """``events 0h-72h after the first exposure; 120 units left out, window open (a 60, b 60)``."""
    if window is None:
        return ""
    text = f"events from {window.start} to {window.end} after each unit's first exposure"
    if window.delay not in ("0h", "0m", "0s", "0d"):
        text += f", closed {window.delay} after"
    total = sum(window.open_units.values())
    if total:
        per_variant = ", ".join(f"{v} {n:,}" for v, n in window.open_units.items())
        text += (
            f"; {total:,} unit{'s' if total != 1 else ''} left out, window still open "
            f"at {window.as_of} ({per_variant})"
        )
    return text
