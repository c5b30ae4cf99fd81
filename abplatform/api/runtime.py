"""Per-process cache of running experiments: policy plus the strategies each variant serves."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial

from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from abplatform.api.bandit import build_server_policy
from abplatform.api.errors import Unservable
from abplatform.api.online import FeatureReader, SlateCache
from abplatform.api.outage import DatabaseHealth, unavailable
from abplatform.assignment.base import AssignmentPolicy
from abplatform.bandit import BanditFeedback
from abplatform.config.models import ExperimentConfig
from abplatform.domain import OnlineFeatures, RecRequest, Slate, UnitFeatures
from abplatform.errors import DatabaseUnavailable, NotFoundError
from abplatform.features import OfflineFeatures, merge_features, online_features_of
from abplatform.storage import models as m
from abplatform.storage.catalog import item_count, load_history
from abplatform.storage.changes import ChangeFeed, NoFeed
from abplatform.storage.db import transaction
from abplatform.storage.model_registry import ModelRecord
from abplatform.storage.repository import get_experiment
from abplatform.strategy import Strategy
from strategies.served import serve_variants

DEFAULT_K = 10
# An experiment that could not be fitted or loaded is tried again after this many seconds
# (at once after a create/start/stop in this process); meanwhile its assigns answer 409.
UNSERVABLE_RETRY_SECONDS = 5.0
# Defaults of the outage bounds (see Settings: api_db_connect_timeout_seconds + 1 s, and
# api_outage_serve_seconds).
DATABASE_WAIT_SECONDS = 4.0
OUTAGE_SERVE_SECONDS = 300.0
MERGED_UNITS = 200_000
"""Units whose merged features an experiment keeps per process (then it starts afresh)."""

log = logging.getLogger(__name__)


class Coalescer:
    """Slates of requests that arrive in the same event-loop turn, from one batch call.

    A strategy whose `recommend_batch` is much cheaper per request than `recommend` (a
    matrix product and a top-k over the catalogue per call) serves concurrent requests
    together: the first request of a turn schedules the batch after every request of the
    turn has queued its own. `recommend_batch` equals `recommend` one by one (the strategy
    contract), so the answers do not depend on the company a request arrives in.
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._pending: dict[int, list[tuple[RecRequest, asyncio.Future[Slate]]]] = {}

    def recommend(self, request: RecRequest, k: int) -> asyncio.Future[Slate]:
        """A future of the request's slate, computed with the rest of this turn's."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Slate] = loop.create_future()
        queue = self._pending.get(k)
        if queue is None:
            queue = self._pending[k] = []
            loop.call_soon(self._serve, k)
        queue.append((request, future))
        return future

    def _serve(self, k: int) -> None:
        queue = self._pending.pop(k)
        try:
            slates = self.strategy.recommend_batch([request for request, _ in queue], k)
        except Exception as exc:
            for _, future in queue:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), slate in zip(queue, slates, strict=True):
            if not future.done():  # the client went away
                future.set_result(slate)


# Waiting for the batch costs a future and an event-loop turn (~10 us): coalesce only when
# batching saves clearly more than that per request.
MIN_BATCH_SAVING_SECONDS = 20e-6


def batching_pays(strategy: Strategy, k: int, probes: int = 16) -> bool:
    """Whether `recommend_batch` of `probes` requests saves at least
    `MIN_BATCH_SAVING_SECONDS` per request over `recommend` one by one (best of 3 timings,
    measured once, when the strategy is fitted)."""
    requests = [RecRequest(unit_id=f"probe-{i}") for i in range(probes)]
    single = batch = math.inf
    try:
        strategy.recommend_batch(requests[:2], k)  # warm caches (e.g. the serving index)
        for _ in range(3):
            start = time.perf_counter()
            for request in requests:
                strategy.recommend(request, k)
            middle = time.perf_counter()
            strategy.recommend_batch(requests, k)
            end = time.perf_counter()
            single, batch = min(single, middle - start), min(batch, end - middle)
    except Exception:  # e.g. a strategy that needs a scene: serve each request alone
        return False
    return (single - batch) / probes >= MIN_BATCH_SAVING_SECONDS


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
    models: dict[str, ModelRecord | None] = field(default_factory=dict)  # None: fit at start
    coalescers: dict[str, Coalescer] = field(default_factory=dict)
    n_items: int = 0
    checked_at: float = field(default_factory=time.monotonic)
    version: int = 0  # of the change feed, taken before the status was last read
    catalog: str = ""
    # Offline features (history at the model's cut-off) of each variant serving real-time
    # features; a variant absent here serves from what its strategy learned alone.
    online: dict[str, OfflineFeatures] = field(default_factory=dict)
    # (variant, unit): the online features last merged (the reader's object, kept while
    # unchanged) and the merged features (None: nothing since the cut-off).
    merged: dict[tuple[str, str], tuple[OnlineFeatures, UnitFeatures | None]] = field(
        default_factory=dict
    )

    async def slate(
        self,
        variant: str,
        request: RecRequest,
        k: int | None,
        *,
        together: bool = True,
        features: FeatureReader | None = None,
        slates: SlateCache | None = None,
    ) -> list[tuple[str, float, str | None]]:
        """The variant's slate for a request: (item id, score, source) triples, at most k
        (the source is None for strategies without sources).

        A variant serving real-time features gets the unit's current online features from
        `features`, merged with its offline ones (`merge_features`). A slate in `slates`
        computed for the same request at the unit's current feature version is served as
        it is. With `together`, a strategy that serves batches much faster is called once
        for all the requests of this event-loop turn (see `Coalescer`).
        """
        strategy = (self.strategies or {}).get(variant)
        size = min(k or self.default_k, self.n_items)
        if strategy is None or size < 1:
            return []
        feature_version = 0
        offline = self.online.get(variant)
        if offline is not None and features is not None:
            online, current = await features.get(self.catalog, request.unit_id)
            if online is not None:
                feature_version = online.version
                request = self._merge(variant, offline, online, request)
            if not current:  # the database is away: served, never cached
                slates = None
        key = None
        if slates is not None:
            key = (
                self.id,
                self.updated_at,
                variant,
                self.model_id(variant),
                request.unit_id,
                request.scene,
                request.current_item,
                request.cart_items,
                size,
            )
            cached: list[tuple[str, float, str | None]] | None = slates.get(key, feature_version)
            if cached is not None:
                return cached
        coalescer = self.coalescers.get(variant) if together else None
        if coalescer is not None:
            slate = await coalescer.recommend(request, size)
        else:
            slate = strategy.recommend(request, size)
        sources = slate.sources or (None,) * len(slate.items)
        answer = [
            (item, score if math.isfinite(score) else 0.0, source)
            for item, score, source in zip(slate.items, slate.scores, sources, strict=True)
        ]
        if slates is not None and key is not None:
            slates.put(key, feature_version, answer)
        return answer

    def _merge(
        self, variant: str, offline: OfflineFeatures, online: OnlineFeatures, request: RecRequest
    ) -> RecRequest:
        """`merge_features`, computed once per unit while the reader answers the same online
        features object (it does until the unit's row changes)."""
        key = (variant, request.unit_id)
        known = self.merged.get(key)
        if known is not None and known[0] is online:
            return request if known[1] is None else replace(request, features=known[1])
        merged = merge_features(offline, online, request)
        if len(self.merged) >= MERGED_UNITS:
            self.merged.clear()
        self.merged[key] = (online, None if merged is request else merged.features)
        return merged

    def model_id(self, variant: str) -> int | None:
        """The registered model serving `variant` (None: fitted at start, or no strategy)."""
        model = self.models.get(variant)
        return model.id if model is not None else None


def _load_strategies(engine: Engine, runtime: ExperimentRuntime, coalesce: bool) -> None:
    """Load each variant's registered model, or fit the cheap ones (`serve_variants`)."""
    with transaction(engine) as session:
        stored_catalog = session.execute(
            select(m.Experiment.catalog).where(m.Experiment.id == runtime.id)
        ).scalar_one()
        served = serve_variants(session, runtime.config, stored_catalog)
        n_items = item_count(session.connection(), stored_catalog)
        realtime = [
            v.key
            for v in runtime.config.variants
            if v.strategy is not None
            and v.strategy.realtime
            and online_features_of(served[v.key].strategy)
        ]
        online: dict[str, OfflineFeatures] = {}
        if realtime:
            history = load_history(session.connection(), stored_catalog)
            by_cutoff: dict[int, OfflineFeatures] = {}
            for key in realtime:
                model = served[key].model
                cutoff = (
                    _unix_seconds(model.history_cutoff)
                    if model is not None and model.history_cutoff is not None
                    else history.end_timestamp
                )
                if cutoff not in by_cutoff:
                    by_cutoff[cutoff] = OfflineFeatures.from_history(history, cutoff)
                online[key] = by_cutoff[cutoff]
    size = min(DEFAULT_K, n_items)
    for key, one in served.items():
        strategy = one.strategy
        if strategy is not None and coalesce and size and batching_pays(strategy, size):
            runtime.coalescers[key] = Coalescer(strategy)
    runtime.models = {key: one.model for key, one in served.items()}
    runtime.strategies = {key: one.strategy for key, one in served.items()}
    runtime.n_items = n_items
    runtime.catalog = stored_catalog
    runtime.online = online


def _unix_seconds(moment: datetime) -> int:
    """Unix seconds of a naive UTC time (as the registry stores cut-offs)."""
    return int((moment - datetime(1970, 1, 1)).total_seconds())


class ExperimentCache:
    """Experiments by key; re-read when the change feed signals a change, and every `ttl` s.

    Every request compares the feed's version of its experiment's latest change with the
    version its entry was read at (no database call): a signalled change (create, start,
    stop, model switch, in any process) is re-read before the request is answered. The
    re-read every `ttl` seconds is a safety net for a lost signal; it serves the entry as
    is while one background task re-reads it (stale-while-revalidate).

    A new `updated_at` (re-created, started, stopped) rebuilds the entry, so strategies are
    refitted on the next assignment; between checks a request only hashes and slates.

    While the database is unreachable (`health`), a cached entry keeps being served as it
    was last read, for at most `outage_serve` seconds after that read; a re-read that fails
    for want of the database keeps it. Anything not cached answers 503.
    """

    def __init__(
        self,
        engine: Engine,
        ttl: float = 1.0,
        *,
        coalesce: bool = True,
        bandit: BanditFeedback | None = None,
        health: DatabaseHealth | None = None,
        outage_serve: float = OUTAGE_SERVE_SECONDS,
        changes: ChangeFeed | None = None,
        features: FeatureReader | None = None,
        slates: SlateCache | None = None,
    ) -> None:
        self.engine = engine
        # The unit's current online features and the slate cache (None: neither).
        self.features = features
        self.slates = slates
        self.changes: ChangeFeed = changes or NoFeed()
        self.health = health or DatabaseHealth(DATABASE_WAIT_SECONDS)
        self.outage_serve = outage_serve
        self.bandit = bandit
        self.ttl = ttl
        self.coalesce = coalesce
        self._entries: dict[str, ExperimentRuntime] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._refreshing: set[str] = set()
        self._unservable: dict[str, tuple[str, float]] = {}  # key: (reason, monotonic time)

    async def warm_up(self) -> list[str]:
        """Fit the strategies of every running experiment now, before serving traffic.

        One that cannot be fitted or loaded is marked unservable (logged, listed by
        `unservable`) and the others are served; a database error still fails start-up.
        """
        with self.engine.connect() as conn:
            keys = (
                conn.execute(select(m.Experiment.key).where(m.Experiment.status == "running"))
                .scalars()
                .all()
            )
        for key in keys:
            try:
                await self.get(key, fit=True)
            except (Unservable, NotFoundError):
                continue
        return list(keys)

    def unservable(self) -> dict[str, str]:
        """{key: reason} of the experiments whose last fit or load failed."""
        return {key: reason for key, (reason, _) in sorted(self._unservable.items())}

    def cached(self) -> list[str]:
        """Keys of the running experiments this process can assign from memory."""
        return sorted(
            key
            for key, entry in self._entries.items()
            if entry.status == "running" and entry.strategies is not None
        )

    def invalidate(self, key: str) -> None:
        """Forget an experiment (after create/start/stop in this process)."""
        self._entries.pop(key, None)
        self._unservable.pop(key, None)

    def _fresh(self, entry: ExperimentRuntime) -> bool:
        return time.monotonic() - entry.checked_at < self.ttl

    async def get(self, key: str, *, fit: bool) -> ExperimentRuntime:
        """The experiment's runtime; with `fit`, strategies are fitted if it is running.

        An entry whose experiment changed since it was read (the change feed says so) is
        re-read first; one that could not be re-read for want of the database is served as
        the outage rules say. A usable entry older than the TTL is served as is while one
        background task re-reads the status (stale-while-revalidate).
        """
        failed = self._unservable.get(key) if fit else None
        if failed is not None and time.monotonic() - failed[1] < UNSERVABLE_RETRY_SECONDS:
            raise Unservable(key, failed[0])
        entry = self._entries.get(key)
        usable = entry is not None and _usable(entry, fit)
        if entry is not None and usable:
            if self.health.unreachable and self._too_old(entry):
                raise self.health.error()
            if self.changes.changed_at(key) > entry.version:
                return await self._reread(key, entry, fit)
            if not self._fresh(entry) and key not in self._refreshing:
                self._refreshing.add(key)
                task = asyncio.get_running_loop().create_task(self._load(key, fit=False))
                task.add_done_callback(partial(self._refreshed, key))
            return entry
        return await self._load(key, fit=fit)

    async def _reread(self, key: str, entry: ExperimentRuntime, fit: bool) -> ExperimentRuntime:
        """The entry re-read after a signalled change; as it was if the database is away."""
        try:
            return await self._load(key, fit=fit)
        except Exception as exc:
            if not unavailable(exc):
                if not isinstance(exc, Unservable):
                    self._entries.pop(key, None)  # e.g. deleted
                raise
            if self._too_old(entry):
                raise
            return entry  # as during an outage (see the class docstring)

    def _too_old(self, entry: ExperimentRuntime) -> bool:
        """Whether the entry was last read from the database over `outage_serve` s ago."""
        return time.monotonic() - entry.checked_at > self.outage_serve

    def _refreshed(self, key: str, task: asyncio.Task[ExperimentRuntime]) -> None:
        self._refreshing.discard(key)
        if task.cancelled():
            return
        failure = task.exception()
        if failure is not None and not unavailable(failure):
            self._entries.pop(key, None)  # e.g. deleted: the next request sees the error
        # The database is away: the entry is kept and served (see the class docstring).

    async def _load(self, key: str, *, fit: bool) -> ExperimentRuntime:
        self.health.check()  # the database failed a moment ago: 503 at once
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            current = self._entries.get(key)
            if (
                current is not None
                and _usable(current, fit)
                and self._fresh(current)
                and current.version >= self.changes.changed_at(key)
            ):
                return current  # read, since the last change, by the request this one waited for
            self.health.check()  # the request this one waited for found it away
            read = partial(self._refresh, key, self._entries.get(key), False)
            try:
                # The status read is bounded, so a request never waits long on a database
                # that stopped answering; loading or fitting strategies may take long.
                entry = await self.health.call(read, bounded=True)
                if fit and entry.status == "running" and entry.strategies is None:
                    entry = await self.health.call(partial(self._serve, key, entry), bounded=False)
            except Unservable as exc:
                self._mark(key, exc.reason)
                raise
            except (NotFoundError, DBAPIError, DatabaseUnavailable):  # deleted, or db trouble
                raise
            except Exception as exc:  # a stored config or policy that no longer loads
                reason = f"cannot be loaded: {type(exc).__name__}: {exc}"
                self._mark(key, reason)
                raise Unservable(key, reason) from exc
            servable = entry.strategies is not None or entry.status != "running"
            if servable and self._unservable.pop(key, None) is not None:
                log.warning("experiment %r is servable again", key)
            self._entries[key] = entry
            # Shared policy state that is due (e.g. a bandit's weight version) is published
            # and fetched in a thread, then put in force here, on the loop's thread, where
            # decisions are drawn.
            apply = await self.health.call(entry.policy.sync)
            if apply is not None:
                apply()
            return entry

    def _mark(self, key: str, reason: str) -> None:
        if key not in self._unservable:
            log.error("experiment %r is unservable (others are served): %s", key, reason)
        self._unservable[key] = (reason, time.monotonic())

    def _refresh(self, key: str, entry: ExperimentRuntime | None, fit: bool) -> ExperimentRuntime:
        version = self.changes.version()  # before the read: a change after it is seen anew
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
                policy=build_server_policy(self.engine, row.id, stored.config, self.bandit),
                default_k=sim.slate_size if sim else DEFAULT_K,
            )
        entry.status = row.status
        entry.checked_at = time.monotonic()
        entry.version = version
        if fit and entry.status == "running" and entry.strategies is None:
            self._serve(key, entry)
        return entry

    def _serve(self, key: str, entry: ExperimentRuntime) -> ExperimentRuntime:
        """`entry` with the strategies of its variants loaded or fitted; Unservable if not."""
        try:
            _load_strategies(self.engine, entry, self.coalesce)
        except (DBAPIError, PoolTimeout):  # the database, not the experiment
            raise
        except Exception as exc:  # e.g. an empty catalogue: this experiment only
            raise Unservable(key, f"cannot be fitted or loaded: {exc}") from exc
        return entry


def _usable(entry: ExperimentRuntime, fit: bool) -> bool:
    """Whether the entry can answer a request (with `fit`: fitted, unless not running)."""
    return not fit or entry.strategies is not None or entry.status != "running"
