"""Rules for input values shared by every entry point: storable text and Unix seconds."""

from __future__ import annotations

import math

NUL = "\x00"
NUL_PROBLEM = "must not contain NUL characters (PostgreSQL cannot store them)"
SURROGATE_PROBLEM = "must be valid Unicode text (no lone surrogates)"

# Plausible Unix seconds: outside 1970..2100 a value is almost surely milliseconds or garbage.
MIN_SECONDS = 0
MAX_SECONDS = 4_102_444_800
SECONDS_PROBLEM = "outside 1970-01-01..2100-01-01 UTC (Unix timestamps must be seconds, not ms)"


def text_problem(value: str) -> str | None:
    """What keeps `value` from being stored alike on SQLite and PostgreSQL, or None."""
    if NUL in value:
        return NUL_PROBLEM
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return SURROGATE_PROBLEM
    return None


def storable(value: str) -> str:
    """`value` unchanged, or ValueError naming what is wrong (a pydantic validator)."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def seconds_problem(seconds: float) -> str | None:
    """What is wrong with a Unix time in seconds (NaN, infinite, or outside 1970..2100)."""
    if MIN_SECONDS <= seconds < MAX_SECONDS:  # False for NaN too
        return None
    if not math.isfinite(seconds):
        return "not a finite number of Unix seconds"
    return SECONDS_PROBLEM
