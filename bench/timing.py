"""Timing and memory helpers shared by the benchmark scripts."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest wall-clock time, in seconds, of `repeats` calls of `fn`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
