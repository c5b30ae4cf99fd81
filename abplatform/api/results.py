"""Per-process results cache: the last analysis per experiment, refreshed in the background.

A request within ``api_results_ttl_seconds`` of the cached analysis gets it without a
statement; an older one gets it at once while one background task recomputes
(stale-while-revalidate); concurrent requests for an experiment without a cached result
share one computation. When every client waiting for such a computation has gone, its
running statement is cancelled (psycopg ``cancel_safe``, ``sqlite3.Connection.interrupt``).
The analysis runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event

from abplatform.errors import AbplatformError, DatabaseUnavailable
from abplatform.storage.db import is_unavailable, with_statement_timeout

if TYPE_CHECKING:
    from reports.results import AnalysisResult

log = logging.getLogger(__name__)

CANCEL_RETRY_SECONDS = 0.1
"""How often a cancelled computation's running statement is cancelled again until it stops."""


class AnalysisCancelled(AbplatformError):
    """The analysis was cancelled because no client waits for it any more."""


@dataclass(frozen=True)
class CachedResult:
    """An analysis and when it was computed (wall clock for headers, monotonic for ages)."""

    result: AnalysisResult
    computed_at: datetime
    computed_monotonic: float

    def age_seconds(self) -> float:
        """Seconds since the analysis finished."""
        return max(0.0, time.monotonic() - self.computed_monotonic)


@dataclass(frozen=True)
class Served:
    """What a request gets: the analysis, its age, and how it was obtained."""

    cached: CachedResult
    state: str  # "fresh" (within the TTL), "stale" (refresh under way), "computed", "offline"

    def headers(self) -> dict[str, str]:
        """``Age`` (whole seconds), ``Computed-At`` (ISO 8601 UTC) and ``Analysis-Cache``."""
        return {
            "Age": str(int(self.cached.age_seconds())),
            "Computed-At": self.cached.computed_at.isoformat(timespec="milliseconds"),
            "Analysis-Cache": self.state,
        }


class StatementCanceller:
    """Tracks the statement an analysis thread is running so another thread can cancel it."""

    def __init__(self) -> None:
        self.cancelled = False
        self._lock = threading.Lock()
        self._running: Any = None  # the DBAPI connection executing a statement, if any

    def bind(self, engine: Engine) -> Engine:
        """``engine`` (same pool) whose statements report to this canceller."""
        tracked = engine.execution_options()

        @event.listens_for(tracked, "before_cursor_execute")
        def _started(conn: Any, *_: Any) -> None:
            with self._lock:
                if self.cancelled:
                    raise AnalysisCancelled("the analysis was cancelled: no client waits for it")
                self._running = conn.connection.driver_connection

        def _finished(*_: Any) -> None:
            with self._lock:
                self._running = None

        event.listen(tracked, "after_cursor_execute", _finished)
        event.listen(tracked, "handle_error", _finished)
        return tracked

    def cancel(self) -> None:
        """Refuse further statements and cancel the running one (call again until it stops)."""
        with self._lock:
            self.cancelled = True
            running = self._running
        if running is None:
            return
        try:
            if hasattr(running, "cancel_safe"):  # psycopg 3
                running.cancel_safe(timeout=2.0)
            else:  # sqlite3
                running.interrupt()
        except Exception as exc:  # a cancel that fails is retried, then bounded by the timeout
            log.warning("cancelling an analysis statement failed: %s", exc)


@dataclass
class _Computation:
    """One analysis under way, the clients waiting for it, and how to stop it."""

    key: str
    generation: int
    task: asyncio.Task[CachedResult]
    canceller: StatementCanceller
    background: bool
    waiters: int = 0
    stopper: asyncio.Task[None] | None = field(default=None, repr=False)


Analyse = Callable[[Engine, str], "AnalysisResult"]
Disconnected = Callable[[], Awaitable[bool]]


class ResultsCache:
    """The last analysis per experiment in this process, bounded to ``max_experiments``."""

    def __init__(
        self,
        analyse: Analyse,
        *,
        ttl_seconds: float,
        max_experiments: int,
        timeout_seconds: float,
        poll_seconds: float = 0.1,
    ) -> None:
        self._analyse = analyse
        self.ttl_seconds = ttl_seconds
        self.max_experiments = max_experiments
        self.timeout_seconds = timeout_seconds
        self.poll_seconds = poll_seconds
        self._entries: OrderedDict[str, CachedResult] = OrderedDict()
        self._running: dict[str, _Computation] = {}
        self._generations: dict[str, int] = {}
        self._lock = threading.Lock()  # invalidate() is called from worker threads too
        self._tasks: set[asyncio.Task[Any]] = set()

    def invalidate(self, key: str) -> None:
        """Forget the experiment's analysis (after create/start/stop); thread-safe."""
        with self._lock:
            self._entries.pop(key, None)
            self._generations[key] = self._generations.get(key, 0) + 1

    def cached(self, key: str) -> CachedResult | None:
        """The cached analysis of ``key``, if any."""
        with self._lock:
            return self._entries.get(key)

    async def get(
        self, engine: Engine, key: str, *, fresh: bool, disconnected: Disconnected
    ) -> Served:
        """The experiment's analysis: cached, stale while refreshing, or computed now.

        ``fresh`` skips the cache (the database is asked) unless the database is
        unavailable, when a cached analysis is served with its age. ``disconnected``
        says whether the client has gone; if every waiting client has, the
        computation is cancelled.
        """
        entry = self.cached(key)
        if entry is not None and not fresh:
            if entry.age_seconds() < self.ttl_seconds:
                return Served(entry, "fresh")
            self._computation(engine, key, background=True)
            return Served(entry, "stale")
        computation = self._computation(engine, key, background=False)
        try:
            return Served(await self._wait(computation, disconnected), "computed")
        except DatabaseUnavailable:
            entry = self.cached(key)
            if entry is None:
                raise
            return Served(entry, "offline")

    def _computation(self, engine: Engine, key: str, *, background: bool) -> _Computation:
        """The computation of ``key`` under way for the current generation, else a new one."""
        with self._lock:
            generation = self._generations.get(key, 0)
        running = self._running.get(key)
        if running is not None and running.generation == generation and not running.task.done():
            running.background = running.background or background
            return running
        canceller = StatementCanceller()
        task = asyncio.create_task(self._compute(engine, key, generation, canceller))
        computation = _Computation(key, generation, task, canceller, background)
        self._running[key] = computation
        task.add_done_callback(lambda done: self._finished(computation, done))
        return computation

    async def _compute(
        self, engine: Engine, key: str, generation: int, canceller: StatementCanceller
    ) -> CachedResult:
        bounded = canceller.bind(with_statement_timeout(engine, self.timeout_seconds))
        try:
            result = await asyncio.to_thread(self._analyse, bounded, key)
        except Exception as exc:
            if canceller.cancelled:
                raise AnalysisCancelled("the analysis was cancelled: no client waits") from exc
            if is_unavailable(exc):
                raise DatabaseUnavailable(
                    f"the database is unavailable for the analysis of {key!r}: {type(exc).__name__}"
                ) from exc
            raise
        now = datetime.now(UTC)  # to the millisecond, as the Computed-At header says it
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        cached = CachedResult(result, now, time.monotonic())
        with self._lock:
            if self._generations.get(key, 0) == generation:
                self._entries[key] = cached
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_experiments:
                    self._entries.popitem(last=False)
        return cached

    def _finished(self, computation: _Computation, task: asyncio.Task[CachedResult]) -> None:
        if self._running.get(computation.key) is computation:
            del self._running[computation.key]
        if task.cancelled():
            return
        exc = task.exception()  # retrieved: a background failure is logged, not raised
        if exc is not None and computation.background and computation.waiters == 0:
            log.warning("background refresh of the analysis of %r failed: %s", computation.key, exc)

    async def _wait(self, computation: _Computation, disconnected: Disconnected) -> CachedResult:
        """Await the computation while the client is connected; the last one gone cancels it."""
        computation.waiters += 1
        gone = True
        try:
            while True:
                done, _ = await asyncio.wait({computation.task}, timeout=self.poll_seconds)
                if done:
                    gone = False
                    return computation.task.result()
                if await disconnected():
                    raise AnalysisCancelled("the client disconnected")
        finally:
            computation.waiters -= 1
            if gone and computation.waiters == 0 and not computation.background:
                self._cancel(computation)

    def _cancel(self, computation: _Computation) -> None:
        """Stop the computation: no new statements, and cancel the running one until it ends."""
        if self._running.get(computation.key) is computation:
            del self._running[computation.key]  # a new request starts afresh
        if computation.stopper is not None:
            return

        async def stop() -> None:
            while not computation.task.done():
                await asyncio.to_thread(computation.canceller.cancel)
                await asyncio.wait({computation.task}, timeout=CANCEL_RETRY_SECONDS)

        computation.stopper = asyncio.create_task(stop())
        self._tasks.add(computation.stopper)
        computation.stopper.add_done_callback(self._tasks.discard)


def results_cache(state: Any, analyse: Analyse, settings: Any) -> ResultsCache:
    """The app's results cache (on ``app.state``), made on first use."""
    cache: ResultsCache | None = getattr(state, "results_cache", None)
    if cache is None:
        cache = ResultsCache(
            analyse,
            ttl_seconds=settings.api_results_ttl_seconds,
            max_experiments=settings.api_results_cache_experiments,
            timeout_seconds=settings.api_analysis_timeout_seconds,
        )
        state.results_cache = cache
    return cache
