"""The FastAPI application: routers, error handlers, body limit, writer lifecycle."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from abplatform.api.deps import Services
from abplatform.api.errors import install_error_handlers
from abplatform.api.middleware import BodySizeLimit
from abplatform.api.responses import FastJSON
from abplatform.api.routers import assign, events, experiments, health
from abplatform.api.runtime import ExperimentCache
from abplatform.api.settings import Settings
from abplatform.storage.db import open_database
from abplatform.writer import BufferedWriter


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database is opened and the writer started in its lifespan.

    On shutdown (SIGTERM: uvicorn stops accepting and waits for in-flight requests)
    the writer commits everything queued before the process exits.
    """
    chosen = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = open_database(chosen.database_url)
        writer = BufferedWriter(
            engine,
            max_rows=chosen.api_writer_max_rows,
            flush_rows=chosen.api_writer_flush_rows,
        )
        writer.start()
        cache = ExperimentCache(engine, chosen.api_status_ttl_seconds)
        app.state.services = Services(
            settings=chosen, engine=engine, writer=writer, experiments=cache
        )
        try:
            # Fitting is the slow part of a first assignment; do it before accepting traffic.
            await cache.warm_up()
            # Long-lived objects (modules, fitted strategies) leave the collector's scans:
            # full collections then take milliseconds instead of ~200 ms pauses.
            gc.freeze()
            yield
        finally:
            await writer.close()
            engine.dispose()

    app = FastAPI(
        title="abplatform assignment API",
        version="1",
        summary="Variants and slates for units, feedback events, experiment results.",
        default_response_class=FastJSON,
        lifespan=lifespan,
    )
    for module in (health, assign, events, experiments):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=chosen.api_max_body_bytes)
    return app
