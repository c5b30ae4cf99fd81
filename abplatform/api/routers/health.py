"""GET and HEAD /healthz (process up) and /readyz (database reachable, unservable experiments)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
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


class Readiness(BaseModel):
    """Readiness: the database answers; running experiments this process cannot serve."""

    status: str
    unservable: dict[str, str] = Field(
        default_factory=dict,
        description="{experiment key: reason} of running experiments that cannot be fitted "
        "or loaded (their assigns answer 409); every other experiment is served",
    )


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(services: ServicesDep) -> FastJSON:
    """The database answers (200 even with unservable experiments: the rest are served)."""
    unservable = services.experiments.unservable()
    try:
        await asyncio.wait_for(asyncio.to_thread(_ping, services.engine), timeout=5)
    except Exception:
        return FastJSON(
            {"status": "database unreachable", "unservable": unservable}, status_code=503
        )
    return FastJSON({"status": "ok", "unservable": unservable})


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
