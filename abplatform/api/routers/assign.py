"""POST /v1/assign and /v1/assign/batch: a unit's variant and slate, exposure recorded."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from fastapi import APIRouter

from abplatform.api.bandit import missing_context, settle
from abplatform.api.deps import AssignScope, Services, ServicesDep
from abplatform.api.errors import NotRunning, error_responses
from abplatform.api.responses import FastJSON
from abplatform.api.runtime import ExperimentCache
from abplatform.api.schemas import (
    AssignBatchRequest,
    AssignBatchResponse,
    AssignRequest,
    AssignResponse,
)
from abplatform.assignment.base import MissingContext
from abplatform.domain import RecRequest
from abplatform.storage.repository import utcnow
from abplatform.storage.rows import ExposureRow
from abplatform.writer import BufferedWriter

router = APIRouter(prefix="/v1/assign", tags=["assign"], dependencies=[AssignScope])


async def _assign(
    cache: ExperimentCache, writer: BufferedWriter, requests: Sequence[AssignRequest]
) -> list[dict[str, Any]]:
    """Decide and slate every request, hand the exposures to the writer, answer.

    The exposures are accepted (ids reserved, journaled, queued), not awaited: the writer
    commits them within milliseconds (see abplatform/api/README.md).
    """
    now = utcnow()
    single = len(requests) == 1
    answers: list[dict[str, Any]] = []
    exposures: list[ExposureRow] = []
    slots: list[int] = []  # answer index of each exposure
    for index, request in enumerate(requests):
        runtime = await cache.get(request.experiment, fit=True)
        if runtime.status != "running":
            raise NotRunning(runtime.key, runtime.status)
        policy = runtime.policy
        scene = None if request.scene is None else {"scene": request.scene}
        try:
            decision = policy.draw(request.unit_id, scene)
        except MissingContext as missing:
            loc = ("body",) if single else ("body", "requests", index)
            raise missing_context(runtime.key, missing, loc) from None
        if decision is not None and policy.sticky:
            # A unit this process has seen is settled from memory (during an outage too); a
            # new one is stored, bounded by the database wait.
            known = policy.known(request.unit_id, scene)
            if known is not None:
                decision = known
            else:
                settled = settle(policy, request.unit_id, scene, decision)
                decision = await cache.health.wait(settled)
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
        # A single request may share a batch call with concurrent ones; a batch request
        # is served in order, each slate on its own.
        slate = await runtime.slate(
            decision.variant,
            rec,
            request.k,
            together=single,
            features=cache.features,
            slates=cache.slates,
        )
        slots.append(len(answers))
        answers.append(
            {
                "experiment": runtime.key,
                "variant": decision.variant,
                "propensity": decision.propensity,
                "exposure_id": None,
                "items": [
                    {"item_id": item, "position": position, "score": score}
                    if source is None
                    else {"item_id": item, "position": position, "score": score, "source": source}
                    for position, (item, score, source) in enumerate(slate)
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
                items=tuple(item for item, _, _ in slate),
                sources=_sources(slate),
                weight_version=decision.weight_version,
                model_id=runtime.model_id(decision.variant),
            )
        )
    if exposures:
        reserve = writer.exposure_ids
        if reserve.available < len(exposures) and not reserve.unreachable:
            # Reserve in a thread, bounded, rather than on the event loop inside `record`.
            more = max(reserve.block, len(exposures))
            await cache.health.call(partial(reserve.refill, more))
        for slot, exposure_id in zip(slots, writer.record(exposures), strict=True):
            answers[slot]["exposure_id"] = exposure_id
    return answers


def _sources(slate: list[tuple[str, float, str | None]]) -> tuple[str | None, ...] | None:
    """The slate's sources for its impressions; None when no item has one."""
    sources = tuple(source for _, _, source in slate)
    return sources if any(source is not None for source in sources) else None


async def assign_one(services: Services, body: AssignRequest) -> dict[str, Any]:
    """POST /v1/assign (served by the fast lane, see `abplatform.api.fastlane`)."""
    return (await _assign(services.experiments, services.writer, [body]))[0]


async def assign_many(services: Services, body: AssignBatchRequest) -> dict[str, Any]:
    """POST /v1/assign/batch (served by the fast lane)."""
    return {"results": await _assign(services.experiments, services.writer, body.requests)}


@router.post("", response_model=AssignResponse, responses=error_responses(404, 409, 503))
async def assign(body: AssignRequest, services: ServicesDep) -> FastJSON:
    """The unit's variant and slate; the exposure and its impressions are recorded.

    The answer comes once the exposure is accepted (journaled and queued); the writer
    commits it within milliseconds. A unit outside the experiment's coverage or namespace
    gets 200 with `variant`, `propensity` and `exposure_id` null, no items, and nothing is
    recorded.
    """
    return FastJSON(await assign_one(services, body))


@router.post("/batch", response_model=AssignBatchResponse, responses=error_responses(404, 409, 503))
async def assign_batch(body: AssignBatchRequest, services: ServicesDep) -> FastJSON:
    """Up to 1,000 assignments in one call, answered in order, recorded together."""
    return FastJSON(await assign_many(services, body))
