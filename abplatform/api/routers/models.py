"""The model registry over HTTP: list, show, promote and retire registered models."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator

from abplatform.api.deps import AdminScope, ReadScope, Services, ServicesDep, SessionDep
from abplatform.api.errors import error_responses
from abplatform.api.schemas import ModelList, ModelOut
from abplatform.storage.db import transaction
from abplatform.storage.model_registry import ModelRecord, get_model, list_models
from abplatform.values import storable
from strategies.served import switch_model

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelId = Annotated[int, Path(description="The model's id", ge=1, le=2**63 - 1)]
ExperimentKey = Annotated[
    str | None,
    Query(description="Only this experiment's models", min_length=1, max_length=128),
    AfterValidator(lambda key: key if key is None else storable(key)),
]


@router.get("", response_model=ModelList, dependencies=[ReadScope])
def list_all(session: SessionDep, experiment: ExperimentKey = None) -> dict[str, Any]:
    """Registered models (of one experiment), by experiment, variant and version."""
    return {"models": [r.to_dict() for r in list_models(session, experiment)]}


@router.get(
    "/{model_id}", response_model=ModelOut, dependencies=[ReadScope], responses=error_responses(404)
)
def show(model_id: ModelId, session: SessionDep) -> dict[str, Any]:
    """One registered model: params, catalogue, cut-off, artifact and its sha256, metrics."""
    return get_model(session, model_id).to_dict()


async def _switch(services: Services, model_id: int, status: str) -> dict[str, Any]:
    """Promote or retire in its own transaction, committed before this process forgets the
    model's experiment and answers (other processes hear of it at the commit)."""

    def store() -> ModelRecord:
        with transaction(services.engine) as session:
            return switch_model(session, model_id, status)

    record = await run_in_threadpool(store)
    services.experiments.invalidate(record.experiment)
    return record.to_dict()


@router.post(
    "/{model_id}/promote",
    response_model=ModelOut,
    dependencies=[AdminScope],
    responses=error_responses(404, 409),
)
async def promote_model(model_id: ModelId, services: ServicesDep) -> dict[str, Any]:
    """Make a model `serving` (its artifact must match its sha256); a retired one is a 409."""
    return await _switch(services, model_id, "serving")


@router.post(
    "/{model_id}/retire",
    response_model=ModelOut,
    dependencies=[AdminScope],
    responses=error_responses(404, 409),
)
async def retire_model(model_id: ModelId, services: ServicesDep) -> dict[str, Any]:
    """Retire a model for good: never served or promoted again; 409 if a running
    experiment would be left with nothing to serve."""
    return await _switch(services, model_id, "retired")
