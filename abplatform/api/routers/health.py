"""GET /healthz (process up) and GET /readyz (database reachable)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from sqlalchemy import Engine, text

from abplatform.api.deps import ServicesDep
from abplatform.api.responses import FastJSON
from abplatform.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> FastJSON:
    """The process is up."""
    return FastJSON({"status": "ok"})


def _ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(services: ServicesDep) -> FastJSON:
    """The database answers."""
    try:
        await asyncio.wait_for(asyncio.to_thread(_ping, services.engine), timeout=5)
    except Exception:
        return FastJSON({"status": "database unreachable"}, status_code=503)
    return FastJSON({"status": "ok"})
