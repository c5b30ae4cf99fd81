"""Experiments: list, show, create (YAML or JSON), start, stop, results and the HTML report."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import AfterValidator
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from abplatform.api.deps import AdminScope, ReadScope, ServicesDep, SessionDep
from abplatform.api.errors import error_responses
from abplatform.api.responses import FastJSON
from abplatform.api.results import Served, results_cache
from abplatform.api.schemas import ExperimentList, ExperimentOut
from abplatform.config.loader import load_experiment_text, validate_config
from abplatform.config.models import ExperimentConfig
from abplatform.errors import ConfigError, ConfigProblem
from abplatform.storage.db import is_statement_timeout, transaction
from abplatform.storage.repository import (
    StoredExperiment,
    get_experiment,
    list_experiments,
    save_experiment,
    set_status,
)
from abplatform.values import storable
from strategies.served import check_servable

if TYPE_CHECKING:
    from reports.results import AnalysisResult

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

Key = Annotated[str, Path(description="The experiment's key"), AfterValidator(storable)]
"""A key in the path: text with a NUL (or a lone surrogate) is a 422 naming `path.key`."""

_CONFIG_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The experiment as YAML text, or its JSON form.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


def _out(stored: StoredExperiment) -> dict[str, Any]:
    config = stored.config
    return {
        "key": stored.key,
        "status": stored.status,
        "catalog": stored.catalog,
        "description": config.description,
        "variants": [
            {
                "key": v.key,
                "weight": v.weight,
                "strategy": v.strategy.kind if v.strategy else None,
            }
            for v in config.variants
        ],
        "config": config.model_dump(mode="json"),
    }


@router.get("", response_model=ExperimentList, dependencies=[ReadScope])
def list_all(session: SessionDep) -> dict[str, Any]:
    """Every stored experiment."""
    return {"experiments": [_out(s) for s in list_experiments(session)]}


@router.get(
    "/{key}", response_model=ExperimentOut, dependencies=[ReadScope], responses=error_responses(404)
)
def show(key: Key, session: SessionDep) -> dict[str, Any]:
    """One experiment with its status and config."""
    return _out(get_experiment(session, key))


def _parse(body: bytes, content_type: str) -> ExperimentConfig:
    if content_type.split(";")[0].strip() == "application/json":
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(
                [ConfigProblem("json", f"malformed JSON: {exc}", has_got=False)]
            ) from None
        return validate_config(data)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            [ConfigProblem("yaml", "the body is not UTF-8 text", has_got=False)]
        ) from None
    return load_experiment_text(text)


@router.post(
    "",
    response_model=ExperimentOut,
    status_code=201,
    dependencies=[AdminScope],
    openapi_extra=_CONFIG_BODY,
    responses=error_responses(409, 413, 422),
)
async def create(request: Request, services: ServicesDep) -> JSONResponse:
    """Create or replace an experiment (validated as `abplatform validate`: 422 lists problems).

    A new experiment starts as `draft`; replacing one keeps its status and its catalogue
    (unless the YAML names another `catalog:`) and refits its strategies on the next
    assignment. A change that would orphan stored exposures (another catalogue, or a
    variant with exposures removed) answers 409 with the reason.
    """
    config = _parse(await request.body(), request.headers.get("content-type", ""))

    def save() -> dict[str, Any]:
        with transaction(services.engine) as session:
            return _out(save_experiment(session, config, config.catalog))

    out = await run_in_threadpool(save)
    services.experiments.invalidate(config.key)
    _forget_results(request, config.key)
    return JSONResponse(out, status_code=201)


def _forget_results(request: Request, key: str) -> None:
    """Drop this process' cached analysis of ``key`` (its config or status changed)."""
    cache = getattr(request.app.state, "results_cache", None)
    if cache is not None:
        cache.invalidate(key)


def _status_route(verb: str, status: str, summary: str) -> None:
    """Register `POST /{key}/<verb>`, which sets the experiment's status."""

    async def change(key: Key, request: Request, services: ServicesDep) -> dict[str, Any]:
        def store() -> dict[str, Any]:
            with transaction(services.engine) as session:
                if status == "running":  # refused, and nothing changed, if it cannot serve
                    stored = get_experiment(session, key)
                    check_servable(session, stored.config, stored.catalog)
                return _out(set_status(session, key, status))

        # Committed before this process forgets its entry and answers: a request served in
        # between cannot cache the old status. Other processes hear of it at the commit
        # (abplatform/storage/changes.py).
        out = await run_in_threadpool(store)
        services.experiments.invalidate(key)
        _forget_results(request, key)
        return out

    change.__name__ = change.__qualname__ = verb
    change.__doc__ = summary
    router.post(
        f"/{{key}}/{verb}",
        response_model=ExperimentOut,
        dependencies=[AdminScope],
        responses=error_responses(404, 409),
    )(change)


_status_route(
    "start",
    "running",
    "Start assigning: each variant serves its registered model (`strategy.model`, or the "
    "latest serving one for TensorFlow strategies) or is fitted on the history. 409 naming "
    "the variant when a model is missing, retired, of another kind, catalogue or params, or "
    "its artifact is missing or changed (path and expected sha256); nothing changes then.",
)
_status_route("stop", "stopped", "Stop assigning: further assignments answer 409.")


_FRESH = Query(
    description="Recompute now instead of serving the cached analysis (as `Cache-Control: "
    "no-cache`); a cached one is still served, with its age, when the database is unavailable"
)
_CACHE_HEADERS = {
    "Age": {
        "description": "Seconds since the analysis was computed",
        "schema": {"type": "integer"},
    },
    "Computed-At": {
        "description": "When the analysis was computed (ISO 8601, UTC)",
        "schema": {"type": "string"},
    },
    "Analysis-Cache": {
        "description": "fresh (cached, within the TTL), stale (cached; a refresh is under way), "
        "computed (just now), offline (cached; the database is unavailable)",
        "schema": {"type": "string"},
    },
}


@router.get(
    "/{key}/results",
    dependencies=[ReadScope],
    responses={
        200: {
            "description": "The same JSON as `abplatform analyze --json`",
            "headers": _CACHE_HEADERS,
        },
        **error_responses(404, 409, 503),
    },
)
async def results(
    key: Key, request: Request, services: ServicesDep, fresh: Annotated[bool, _FRESH] = False
) -> JSONResponse:
    """Significance of every metric against the control, plus the SRM check (cached)."""
    served = await _cached_analysis(key, request, services, fresh)
    body = await run_in_threadpool(served.cached.result.to_dict)
    return JSONResponse(body, headers=served.headers())


@router.get(
    "/{key}/report",
    dependencies=[ReadScope],
    response_class=FastJSON,  # errors are JSON; the 200 is documented as text/html below
    responses={
        200: {
            "description": "The HTML report",
            "content": {"text/html": {"schema": {"type": "string"}}},
            "headers": _CACHE_HEADERS,
        },
        **error_responses(404, 409, 503),
    },
)
async def report(
    key: Key, request: Request, services: ServicesDep, fresh: Annotated[bool, _FRESH] = False
) -> HTMLResponse:
    """The self-contained HTML report (of the cached analysis, as `/results`)."""
    from reports.render import render_report

    served = await _cached_analysis(key, request, services, fresh)
    html = await run_in_threadpool(render_report, served.cached.result)
    return HTMLResponse(html, headers=served.headers())


def _analyse(engine: Engine, key: str) -> AnalysisResult:
    """`reports.analysis.analyze` (imported on first use: the API starts without it)."""
    from reports.analysis import analyze

    return analyze(engine, key)


async def _cached_analysis(
    key: str, request: Request, services: ServicesDep, fresh: bool
) -> Served:
    """The experiment's analysis from the results cache; 503 past the statement timeout."""
    cache = results_cache(request.app.state, _analyse, services.settings)
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    try:
        return await cache.get(
            services.engine, key, fresh=fresh or no_cache, disconnected=request.is_disconnected
        )
    except DBAPIError as exc:
        if not is_statement_timeout(exc):
            raise
        seconds = services.settings.api_analysis_timeout_seconds
        raise HTTPException(
            503,
            f"the analysis of {key!r} ran longer than api_analysis_timeout_seconds="
            f"{seconds:g} and was cancelled; retry later, or run: abplatform analyze {key}",
            headers={"Retry-After": str(max(1, math.ceil(seconds)))},
        ) from exc
