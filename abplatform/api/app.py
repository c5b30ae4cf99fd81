"""The FastAPI application: routers, error handlers, body limit, writer lifecycle."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import inspect
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from abplatform.api.deps import Services
from abplatform.api.errors import install_error_handlers
from abplatform.api.fastlane import FastLane, HotRoute
from abplatform.api.middleware import BodySizeLimit
from abplatform.api.online import FeatureReader, SlateCache
from abplatform.api.outage import DatabaseHealth
from abplatform.api.responses import FastJSON
from abplatform.api.routers import assign, events, experiments, health, models
from abplatform.api.runtime import ExperimentCache
from abplatform.api.schemas import AssignBatchRequest, AssignRequest, EventBatch
from abplatform.api.settings import Settings
from abplatform.bandit import BanditFeedback
from abplatform.journal import Journal, replay
from abplatform.storage.changes import open_feed
from abplatform.storage.db import open_database
from abplatform.storage.feature_signals import signals_for
from abplatform.writer import BufferedWriter, replay_journal

SWITCH_INTERVAL_SECONDS = 0.0005


def _telemetry(wanted: bool) -> dict[str, Any]:
    """FastAPI's native OpenTelemetry check runs on every request (~30 us): opt-in only."""
    if wanted or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database is opened and the writer started in its lifespan.

    At start-up the journals of dead processes are replayed; on shutdown (SIGTERM: uvicorn
    stops accepting and waits for in-flight requests) the writer commits everything
    queued before the process exits.
    """
    chosen = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = open_database(
            chosen.database_url,
            connect_timeout=chosen.api_db_connect_timeout_seconds,
            pool_timeout=chosen.api_db_pool_timeout_seconds,
        )
        directory = journal_directory(engine, chosen.api_journal_dir)
        bandit = BanditFeedback()  # bandit trials and rewards, counted by the writer
        if directory is not None:
            # Rows a dead process accepted (its journal is unlocked) reach the database first.
            replay_into = partial(replay_journal, engine, bandit=bandit)
            await asyncio.to_thread(replay, directory, replay_into)
        writer = BufferedWriter(
            engine,
            max_rows=chosen.api_writer_max_rows,
            flush_rows=chosen.api_writer_flush_rows,
            flush_interval=chosen.api_writer_flush_seconds,
            journal=Journal(directory) if directory is not None else None,
            bandit=bandit,
            lock_wait=chosen.api_lock_wait_seconds,
            commit_wait=chosen.api_events_wait_seconds,
            recent_limit=chosen.api_feature_recent_items,
        )
        writer.start()
        # Creates, starts, stops in any process reach this one's cache at once (the SQLite
        # counter file, or a LISTEN thread on PostgreSQL): abplatform/storage/changes.py.
        changes = open_feed(engine, chosen.api_db_connect_timeout_seconds)
        # A database call waits a connect timeout, plus a second for the query.
        health = DatabaseHealth(chosen.api_db_connect_timeout_seconds + 1.0)
        # Each unit's online features, fresh on every worker (api/online.py), and slates.
        features = FeatureReader(engine, health, signals_for(engine))
        slates = SlateCache(chosen.api_slate_cache_size, chosen.api_slate_cache_ttl_seconds)
        cache = ExperimentCache(
            engine,
            chosen.api_status_ttl_seconds,
            coalesce=chosen.api_coalesce,
            bandit=bandit,
            health=health,
            outage_serve=chosen.api_outage_serve_seconds,
            changes=changes,
            features=features,
            slates=slates,
        )
        app.state.services = Services(
            settings=chosen, engine=engine, writer=writer, experiments=cache
        )
        try:
            # Fitting is the slow part of a first assignment; do it before accepting traffic.
            await cache.warm_up()
            # Long-lived objects (modules, fitted strategies) leave the collector's scans:
            # full collections then take milliseconds instead of ~200 ms pauses.
            gc.freeze()
            # The writer thread builds its inserts in Python; a thread waiting for the GIL
            # gets it after the switch interval, so 0.5 ms instead of 5 ms bounds how long
            # the event loop can wait on it (p90 at 4 connections: 18 ms -> 2-9 ms).
            sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
            yield
        finally:
            await writer.close()
            await asyncio.to_thread(changes.close)
            features.close()
            app.state.services.keys.close()
            engine.dispose()

    app = FastAPI(
        title="abplatform assignment API",
        version="1",
        summary="Variants and slates for units, feedback events, experiment results.",
        default_response_class=FastJSON,
        lifespan=lifespan,
        **_telemetry(chosen.api_telemetry),
    )
    for module in (health, assign, events, experiments, models):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=chosen.api_max_body_bytes)
    hot = {
        "/v1/assign": HotRoute("assign", AssignRequest, assign.assign_one),
        "/v1/assign/batch": HotRoute("assign", AssignBatchRequest, assign.assign_many),
        "/v1/events": HotRoute("assign", EventBatch, events.record_batch),
    }
    app.add_middleware(FastLane, routes=hot, max_bytes=chosen.api_max_body_bytes)  # outermost
    return app


def journal_directory(engine: Engine, configured: str | None) -> Path | None:
    """Where this server's journal lives (None when configured "off")."""
    if configured is not None:
        return None if configured == "off" else Path(configured)
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        path = Path(database).resolve()
        return path.with_name(path.name + ".journal")
    if engine.dialect.name == "sqlite":
        return None  # an in-memory database dies with the process anyway
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    url = engine.url.render_as_string(hide_password=True)
    return state / "abplatform" / "journal" / hashlib.sha256(url.encode()).hexdigest()[:16]
