"""Typed results of the breakdowns (`reports.breakdowns`); each `to_dict` is the JSON contract."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reports.results import JsonResult, MetricResult, SrmSummary

__all__ = ["Breakdown", "BreakdownSlice", "Breakdowns"]


@dataclass(frozen=True)
class BreakdownSlice(JsonResult):
    """The units of one value of a dimension: units per variant, SRM and every metric."""

    value: str
    pooled_values: int
    """How many dimension values this slice pools (more than 1 only for ``other``)."""
    units: Mapping[str, int]
    srm: SrmSummary
    metrics: tuple[MetricResult, ...]


@dataclass(frozen=True)
class Breakdown(JsonResult):
    """One dimension of `analysis.dimensions` and its slices (at most 20 values + ``other``)."""

    dimension: str
    definition: str
    values: int
    """Distinct values seen before pooling."""
    family_size: int
    """Primary-metric comparisons with a p-value over this dimension's slices (corrected
    together; guardrails form their own family)."""
    slices: tuple[BreakdownSlice, ...]


@dataclass(frozen=True)
class Breakdowns(JsonResult):
    """Every dimension's breakdown and how its p-values were corrected."""

    correction: str
    family: str
    """What the multiple-testing correction of the breakdowns runs over."""
    dimensions: tuple[Breakdown, ...]
