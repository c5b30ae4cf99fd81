"""POST /v1/assign and /v1/assign/batch: a unit's variant and slate, exposure recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter

from abplatform.api.deps import AssignScope, ServicesDep
from abplatform.api.errors import NotRunning, error_responses
from abplatform.api.responses import FastJSON
from abplatform.api.runtime import ExperimentCache
from abplatform.api.schemas import (
    AssignBatchRequest,
    AssignBatchResponse,
    AssignRequest,
    AssignResponse,
)
from abplatform.domain import RecRequest
from abplatform.storage.repository import utcnow
from abplatform.writer import BufferedWriter, ExposureRow

router = APIRouter(prefix="/v1/assign", tags=["assign"], dependencies=[AssignScope])


async def _assign(
    cache: ExperimentCache, writer: BufferedWriter, requests: Sequence[AssignRequest]
) -> list[dict[str, Any]]:
    """Decide and slate every request, record the exposures (awaiting commit), answer."""
    now = utcnow()
    answers: list[dict[str, Any]] = []
    exposures: list[ExposureRow] = []
    slots: list[int] = []  # answer index of each exposure
    for request in requests:
        runtime = await cache.get(request.experiment, fit=True)
        if runtime.status != "running":
            raise NotRunning(runtime.key, runtime.status)
        decision = runtime.policy.assign(request.unit_id)
        if decision is None:
            answers.append(
                {
                    "experiment": runtime.key,
                    "variant": None,
                    "propensity": None,
                    "exposure_id": None,
                    "items": [],
                }
            )
            continue
        context = request.context
        rec = RecRequest(
            unit_id=request.unit_id,
            scene=request.scene,
            current_item=context.current_item if context else None,
            cart_items=tuple(context.cart_items) if context else (),
        )
        slate = runtime.slate(decision.variant, rec, request.k)
        slots.append(len(answers))
        answers.append(
            {
                "experiment": runtime.key,
                "variant": decision.variant,
                "propensity": decision.propensity,
                "exposure_id": None,
                "items": [
                    {"item_id": item, "position": position, "score": score}
                    for position, (item, score) in enumerate(slate)
                ],
            }
        )
        exposures.append(
            ExposureRow(
                experiment_id=runtime.id,
                variant=decision.variant,
                unit_id=request.unit_id,
                ts=now,
                propensity=decision.propensity,
                bucket=decision.bucket,
                scene=request.scene,
                context=context.model_dump(exclude_defaults=True) if context else None,
                items=tuple(item for item, _ in slate),
            )
        )
    if exposures:
        result = await writer.submit(exposures, ())
        for slot, exposure_id in zip(slots, result.exposure_ids, strict=True):
            answers[slot]["exposure_id"] = exposure_id
    return answers


@router.post("", response_model=AssignResponse, responses=error_responses(404, 409, 503))
async def assign(body: AssignRequest, services: ServicesDep) -> FastJSON:
    """The unit's variant and slate; the exposure and its impressions are committed first.

    A unit outside the experiment's coverage or namespace gets 200 with `variant`,
    `propensity` and `exposure_id` null, no items, and nothing is recorded.
    """
    answers = await _assign(services.experiments, services.writer, [body])
    return FastJSON(answers[0])


@router.post("/batch", response_model=AssignBatchResponse, responses=error_responses(404, 409, 503))
async def assign_batch(body: AssignBatchRequest, services: ServicesDep) -> FastJSON:
    """Up to 1,000 assignments in one call, answered in order, recorded in one commit."""
    answers = await _assign(services.experiments, services.writer, body.requests)
    return FastJSON({"results": answers})
