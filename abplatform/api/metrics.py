"""Request counts and latency histograms per route, and the slate cache, as Prometheus text."""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field

from abplatform.api.online import FeatureReader, SlateCache

BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Upper bounds (seconds) of the latency histogram buckets (+Inf is implied)."""


@dataclass
class RouteStats:
    """One (method, route, status class) series: counts per bucket, sum and count."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    count: int = 0


class Metrics:
    """This process' request counts and latencies by method, route template and status."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str, str], RouteStats] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (method, route, f"{status // 100}xx")
        stats = self._routes.get(key)
        if stats is None:
            stats = self._routes[key] = RouteStats()
        stats.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        stats.total += seconds
        stats.count += 1

    def render(self, slates: SlateCache | None, features: FeatureReader | None) -> str:
        """The Prometheus text exposition (format 0.0.4) of this process."""
        process = f'process="{os.getpid()}"'
        lines = [
            "# HELP abplatform_requests_total Requests answered, by method, route and status.",
            "# TYPE abplatform_requests_total counter",
        ]
        ordered = sorted(self._routes.items())
        for (method, route, status), stats in ordered:
            labels = f'{process},method="{method}",route="{_escape(route)}",status="{status}"'
            lines.append(f"abplatform_requests_total{{{labels}}} {stats.count}")
        lines += [
            "# HELP abplatform_request_seconds Time to answer a request, by method and route.",
            "# TYPE abplatform_request_seconds histogram",
        ]
        merged: dict[tuple[str, str], RouteStats] = {}
        for (method, route, _), stats in ordered:
            into = merged.setdefault((method, route), RouteStats())
            into.buckets = [a + b for a, b in zip(into.buckets, stats.buckets, strict=True)]
            into.total += stats.total
            into.count += stats.count
        for (method, route), stats in sorted(merged.items()):
            labels = f'{process},method="{method}",route="{_escape(route)}"'
            running = 0
            for bound, count in zip([*BUCKETS, float("inf")], stats.buckets, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'abplatform_request_seconds_bucket{{{labels},le="{le}"}} {running}')
            lines.append(f"abplatform_request_seconds_sum{{{labels}}} {stats.total!r}")
            lines.append(f"abplatform_request_seconds_count{{{labels}}} {stats.count}")
        if slates is not None:
            for name, kind, value, text in (
                ("slate_cache_hits_total", "counter", slates.hits, "Slates served from the cache."),
                ("slate_cache_misses_total", "counter", slates.misses, "Slates computed."),
                (
                    "slate_cache_evictions_total",
                    "counter",
                    slates.evictions,
                    "Slates dropped for the size bound.",
                ),
                ("slate_cache_size", "gauge", len(slates), "Slates cached now."),
                ("slate_cache_capacity", "gauge", slates.max_entries, "Slates kept at most."),
            ):
                lines += [
                    f"# HELP abplatform_{name} {text}",
                    f"# TYPE abplatform_{name} {kind}",
                    f"abplatform_{name}{{{process}}} {value}",
                ]
        if features is not None:
            for name, value, text in (
                ("feature_reads_total", features.reads, "Unit feature rows read."),
                (
                    "feature_checks_total",
                    features.checks,
                    "Unit feature look-ups answered without a read (SQLite slot file).",
                ),
                (
                    "feature_outage_answers_total",
                    features.outage_answers,
                    "Unit feature look-ups answered from memory while the database was away.",
                ),
            ):
                lines += [
                    f"# HELP abplatform_{name} {text}",
                    f"# TYPE abplatform_{name} counter",
                    f"abplatform_{name}{{{process}}} {value}",
                ]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
