"""GET /healthz (process up), /readyz (database reachable, what is still served), /metrics."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine, text

from abplatform.api.deps import Services, ServicesDep
from abplatform.api.responses import FastJSON
from abplatform.api.schemas import Health
from abplatform.errors import DatabaseUnavailable

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

    status: str = Field(description='"ok", or "database unreachable" (then 503)')
    process: int = Field(
        description="id of the server process that answered (one of `serve --workers N`)"
    )
    unservable: dict[str, str] = Field(
        default_factory=dict,
        description="{experiment key: reason} of running experiments that cannot be fitted "
        "or loaded (their assigns answer 409); every other experiment is served",
    )
    unreachable_since: str | None = Field(
        default=None,
        description="while unreachable: when this process first found the database away "
        "(ISO 8601, UTC)",
    )
    serving_from_cache: list[str] = Field(
        default_factory=list,
        description="while unreachable: running experiments still assigned from memory "
        "(while exposure ids are left)",
    )
    exposure_ids_left: int | None = Field(
        default=None,
        description="while unreachable: assignments this process can still accept",
    )
    accepted_not_written: int | None = Field(
        default=None,
        description="while unreachable: rows accepted (journaled) and not yet written",
    )


def _outage(services: Services) -> dict[str, object]:
    """What the 503 of /readyz says is still served."""
    health = services.experiments.health
    since = health.unreachable_since
    return {
        "status": "database unreachable",
        "process": os.getpid(),
        "unservable": services.experiments.unservable(),
        "unreachable_since": None
        if since is None
        else datetime.fromtimestamp(since, UTC).isoformat(timespec="milliseconds"),
        "serving_from_cache": services.experiments.cached(),
        "exposure_ids_left": services.writer.exposure_ids.available,
        "accepted_not_written": services.writer.pending_rows,
    }


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(services: ServicesDep) -> FastJSON:
    """The database answers `SELECT 1` (200 even with unservable experiments: the rest are
    served); 503 while it does not, saying since when and what is still served."""
    try:
        await services.experiments.health.call(lambda: _ping(services.engine))
    except DatabaseUnavailable:
        return FastJSON(_outage(services), status_code=503, headers={"Retry-After": "1"})
    ok = {"status": "ok", "process": os.getpid(), "unservable": services.experiments.unservable()}
    return FastJSON(ok)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(services: ServicesDep) -> PlainTextResponse:
    """This process' counters in the Prometheus text format: requests and latency
    histograms per route, slate cache hits, misses and size, feature rows read (each
    worker of `serve --workers N` answers for itself, labelled with its `process`)."""
    experiments = services.experiments
    text_out = services.metrics.render(experiments.slates, experiments.features)
    return PlainTextResponse(text_out, media_type="text/plain; version=0.0.4")


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
