"""Metric windows: which of a unit's events count, relative to its first exposure, and when.

Definition
----------
A metric with ``window: {start, end, delay}`` counts, per unit, only the events (and, for
``impression``, the exposures' slates) whose time ``t`` satisfies
``start <= t - first_exposure < end``, times compared in whole seconds (each timestamp
truncated to its second, on both databases). A unit's window is *closed* once
``first_exposure + end + delay <= as_of`` (``as_of``: the time of the analysis); units
whose window is still open are left out of that metric (its ``n``, its sums, its CUPED
sums, its cap's percentile) and counted per variant (``open_units``), so a running
experiment never compares units that had three days to convert with units that had one
hour.

In SQL a windowed value is a value key whose event carries the window
(``window:<start>:<end>:<event>``), and the closed-window indicator is the value key
``(closed:<cutoff>, any)``: 1 for a unit whose first exposure is at or before
``as_of - end - delay``. `reports.units.unit_values` computes both.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import Float, Integer, cast
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from abplatform.config.models import MetricWindow

__all__ = [
    "CLOSED",
    "WINDOW",
    "closed_cutoff",
    "closed_event",
    "closed_key",
    "elapsed_seconds",
    "epoch_seconds",
    "parse_window",
    "windowed_event",
    "windowed_key",
]

A = TypeVar("A")

WINDOW = "window:"
"""Prefix of a value key's event that counts only the events inside a window."""
CLOSED = "closed:"
"""Prefix of the value key that is 1 for a unit whose window has closed."""


def windowed_event(event: str, window: MetricWindow | None) -> str:
    """The value key event of `event` in `window` (`event` itself without a window)."""
    if window is None:
        return event
    return f"{WINDOW}{window.start_seconds!r}:{window.end_seconds!r}:{event}"


def windowed_key(key: tuple[str, A], window: MetricWindow | None) -> tuple[str, A]:
    """A value key ``(event, aggregate)`` restricted to `window` (unchanged without one)."""
    return (windowed_event(key[0], window), key[1])


def closed_key(window: MetricWindow, as_of: datetime) -> tuple[str, Literal["any"]]:
    """The value key that is 1 for a unit whose `window` has closed by `as_of`, else 0."""
    return (closed_event(window, as_of), "any")


def parse_window(event: str) -> tuple[float, float, str] | None:
    """(start seconds, end seconds, event) of a windowed value key event; None otherwise."""
    if not event.startswith(WINDOW):
        return None
    start, end, name = event[len(WINDOW) :].split(":", 2)
    return float(start), float(end), name


def closed_event(window: MetricWindow, as_of: datetime) -> str:
    """The value key event of "this unit's window has closed by `as_of`"."""
    cutoff = as_of - timedelta(seconds=window.closes_after_seconds)
    return f"{CLOSED}{cutoff.isoformat()}"


def closed_cutoff(event: str) -> datetime | None:
    """The latest first exposure whose window is closed, from a closed-indicator event."""
    if not event.startswith(CLOSED):
        return None
    return datetime.fromisoformat(event[len(CLOSED) :])


class epoch_seconds(FunctionElement[int]):
    """Whole seconds since 1970-01-01 of a stored (naive UTC) timestamp, on both databases."""

    type = Integer()
    inherit_cache = True


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    (arg,) = element.clauses
    return f"CAST(strftime('%s', {compiler.process(arg, **kw)}) AS INTEGER)"


@compiles(epoch_seconds, "postgresql")
def _epoch_postgresql(element: epoch_seconds, compiler: Any, **kw: Any) -> str:
    (arg,) = element.clauses
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {compiler.process(arg, **kw)})) AS BIGINT)"


def elapsed_seconds(later: Any, earlier: Any) -> Any:
    """``later - earlier`` in whole seconds (each truncated to its second first), as a float."""
    return cast(epoch_seconds(later) - epoch_seconds(earlier), Float)
