"""GET (and HEAD) /healthz (process up) and /readyz (database reachable)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
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


def _headers_only(answer: Response) -> Response:
    """The GET answer without its body, as HEAD asks (load balancers probe with it)."""
    return Response(
        status_code=answer.status_code,
        headers={"content-length": str(len(answer.body))},
        media_type=answer.media_type,
    )


@router.head("/healthz", include_in_schema=False)
async def healthz_head() -> Response:
    """HEAD /healthz: the status of GET, no body."""
    return _headers_only(await healthz())


@router.head("/readyz", include_in_schema=False)
async def readyz_head(services: ServicesDep) -> Response:
    """HEAD /readyz: the status of GET, no body."""
    return _headers_only(await readyz(services))
