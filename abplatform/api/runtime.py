"""Per-process cache of running experiments: policy plus strategies fitted once on SQL history."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from sqlalchemy import Engine, select

from abplatform.assignment.engine import AssignmentPolicy, build_policy
from abplatform.config.models import ExperimentConfig
from abplatform.domain import RecRequest
from abplatform.errors import NotFoundError
from abplatform.registry import build_strategy
from abplatform.storage import models as m
from abplatform.storage.db import transaction
from abplatform.storage.history import load_history
from abplatform.storage.repository import get_experiment
from abplatform.strategy import Strategy

DEFAULT_K = 10


@dataclass
class ExperimentRuntime:
    """What serving one experiment needs in memory; `strategies` is filled when it runs."""

    id: int
    key: str
    status: str
    updated_at: datetime
    config: ExperimentConfig
    policy: AssignmentPolicy
    default_k: int
    strategies: dict[str, Strategy | None] | None = None
    n_items: int = 0
    checked_at: float = field(default_factory=time.monotonic)

    def slate(self, variant: str, request: RecRequest, k: int | None) -> list[tuple[str, float]]:
        """The variant's slate for a request: (item id, score) pairs, at most k."""
        strategy = (self.strategies or {}).get(variant)
        size = min(k or self.default_k, self.n_items)
        if strategy is None or size < 1:
            return []
        slate = strategy.recommend(request, size)
        return [
            (item, score if math.isfinite(score) else 0.0)
            for item, score in zip(slate.items, slate.scores, strict=True)
        ]


def _fit(engine: Engine, runtime: ExperimentRuntime) -> None:
    with engine.connect() as conn:
        stored_catalog = conn.execute(
            select(m.Experiment.catalog).where(m.Experiment.id == runtime.id)
        ).scalar_one()
        history = load_history(conn, stored_catalog)
    seed = runtime.config.simulation.seed if runtime.config.simulation else 0
    fitted: dict[str, Strategy | None] = {}
    for variant in runtime.config.variants:
        if variant.strategy is None:
            fitted[variant.key] = None
            continue
        strategy = build_strategy(variant.strategy.kind, variant.strategy.params, seed=seed)
        strategy.fit(history)
        fitted[variant.key] = strategy
    runtime.strategies = fitted
    runtime.n_items = len(history.catalog)


class ExperimentCache:
    """Experiments by key; the status is re-read at most every `ttl` seconds per experiment.

    A new `updated_at` (re-created, started, stopped) rebuilds the entry, so strategies are
    refitted on the next assignment; between checks a request only hashes and slates.
    """

    def __init__(self, engine: Engine, ttl: float = 1.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._entries: dict[str, ExperimentRuntime] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshing: set[str] = set()

    async def warm_up(self) -> list[str]:
        """Fit the strategies of every running experiment now, before serving traffic."""
        with self.engine.connect() as conn:
            keys = (
                conn.execute(select(m.Experiment.key).where(m.Experiment.status == "running"))
                .scalars()
                .all()
            )
        for key in keys:
            await self.get(key, fit=True)
        return list(keys)

    def invalidate(self, key: str) -> None:
        """Forget an experiment (after create/start/stop in this process)."""
        self._entries.pop(key, None)

    def _fresh(self, entry: ExperimentRuntime) -> bool:
        return time.monotonic() - entry.checked_at < self.ttl

    async def get(self, key: str, *, fit: bool) -> ExperimentRuntime:
        """The experiment's runtime; with `fit`, strategies are fitted if it is running.

        A usable but stale entry is served as is while one background task re-reads the
        status (stale-while-revalidate), so no request waits on that database read.
        """
        entry = self._entries.get(key)
        usable = entry is not None and (
            not fit or entry.strategies is not None or entry.status != "running"
        )
        if entry is not None and usable:
            if not self._fresh(entry) and key not in self._refreshing:
                self._refreshing.add(key)
                task = asyncio.get_running_loop().create_task(self._load(key, fit=False))
                task.add_done_callback(partial(self._refreshed, key))
            return entry
        return await self._load(key, fit=fit)

    def _refreshed(self, key: str, task: asyncio.Task[ExperimentRuntime]) -> None:
        self._refreshing.discard(key)
        if not task.cancelled() and task.exception() is not None:
            self._entries.pop(key, None)  # e.g. deleted: the next request sees the error

    async def _load(self, key: str, *, fit: bool) -> ExperimentRuntime:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = await asyncio.to_thread(self._refresh, key, self._entries.get(key), fit)
            self._entries[key] = entry
            return entry

    def _refresh(self, key: str, entry: ExperimentRuntime | None, fit: bool) -> ExperimentRuntime:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(m.Experiment.id, m.Experiment.status, m.Experiment.updated_at).where(
                    m.Experiment.key == key
                )
            ).one_or_none()
        if row is None:
            with transaction(self.engine) as session:
                get_experiment(session, key)  # raises NotFoundError listing known keys
            raise NotFoundError(f"no experiment {key!r}")
        if entry is None or (entry.id, entry.updated_at) != (row.id, row.updated_at):
            with transaction(self.engine) as session:
                stored = get_experiment(session, key)
            sim = stored.config.simulation
            entry = ExperimentRuntime(
                id=row.id,
                key=key,
                status=row.status,
                updated_at=row.updated_at,
                config=stored.config,
                policy=build_policy(stored.config),
                default_k=sim.slate_size if sim else DEFAULT_K,
            )
        entry.status = row.status
        entry.checked_at = time.monotonic()
        if fit and entry.status == "running" and entry.strategies is None:
            _fit(self.engine, entry)
        return entry
