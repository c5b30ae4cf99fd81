"""Optional wall-clock timing of the analysis' stages (for benchmarks; free when not recording)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_recorder: ContextVar[dict[str, float] | None] = ContextVar("analysis_stages", default=None)


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Record the seconds of every `stage` entered in this context: {stage: seconds}."""
    seconds: dict[str, float] = {}
    token = _recorder.set(seconds)
    try:
        yield seconds
    finally:
        _recorder.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage ``name`` when `recording`, else do nothing."""
    seconds = _recorder.get()
    if seconds is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
