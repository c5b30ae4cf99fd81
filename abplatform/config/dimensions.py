"""The `analysis.dimensions` of an experiment: what its units are broken down by."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["BUILTIN_DIMENSIONS", "MAX_SLICES", "Dimensions"]

BUILTIN_DIMENSIONS = ("scene", "new_vs_returning", "first_exposure_day")
"""Dimensions every experiment has; any other name is a column of the users profile table."""
MAX_SLICES = 20
"""Values kept per dimension (those with the most units); the rest are pooled as ``other``."""


def _unique(names: list[str]) -> list[str]:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"each dimension may appear once (got {', '.join(repeated)} twice)")
    return names


def _name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"a dimension is one of {', '.join(BUILTIN_DIMENSIONS)} or a users profile column "
            "(a letter or _, then up to 63 letters, digits, _ . -)"
        )
    return name


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
DimensionName = Annotated[str, AfterValidator(_name)]
"""A built-in dimension or a profile column name (checked against the data when analysed)."""
Dimensions = Annotated[list[DimensionName], AfterValidator(_unique)]
