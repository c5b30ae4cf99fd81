"""POST /v1/events: feedback events, recorded once each by `event_id`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from abplatform.api.deps import AssignScope, Services, ServicesDep
from abplatform.api.errors import RETRY_AFTER_SECONDS, error_responses
from abplatform.api.responses import FastJSON
from abplatform.api.schemas import UNFEATURED_LISTED, EventBatch, EventsResponse
from abplatform.errors import NotFoundError
from abplatform.storage.repository import utcnow
from abplatform.storage.rows import EventRow
from abplatform.writer import CommitPending

router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[AssignScope])


@router.post("", response_model=EventsResponse, responses=error_responses(422, 503))
async def record_events(body: EventBatch, services: ServicesDep) -> FastJSON:
    """Record a batch of events; 2xx only after commit. Retries record nothing twice.

    503 + Retry-After when the batch could not be committed within
    ABPLATFORM_API_EVENTS_WAIT_SECONDS (see api/README.md, Writes).

    `new` counts events stored by this call, `duplicates` those already stored (by an
    earlier call or earlier in this batch). `featured` counts the new events applied to
    their unit's online features (the next `/v1/assign` of the unit, on any worker, uses
    them); `unfeatured_count` counts the new events that updated nothing and `unfeatured`
    lists the first 100 of them, with the reason: no experiment, no item, an item outside
    the experiment's catalogue, or a unit the experiment never assigned (nor a user of its
    catalogue). They are stored all the same (a 200, never an error).
    """
    return FastJSON(await record_batch(services, body))


async def record_batch(services: Services, body: EventBatch) -> dict[str, Any]:
    """POST /v1/events (served by the fast lane, see `abplatform.api.fastlane`)."""
    now = utcnow()
    ids: dict[str, int] = {}
    rows: list[EventRow] = []
    for index, event in enumerate(body.events):
        experiment_id = None
        if event.experiment is not None:
            experiment_id = ids.get(event.experiment)
            if experiment_id is None:
                try:
                    runtime = await services.experiments.get(event.experiment, fit=False)
                except NotFoundError as exc:
                    raise HTTPException(
                        422,
                        [
                            {
                                "loc": ["body", "events", index, "experiment"],
                                "msg": exc.message,
                                "type": "unknown_experiment",
                            }
                        ],
                    ) from None
                experiment_id = ids[event.experiment] = runtime.id
        rows.append(
            EventRow(
                event_id=event.event_id,
                experiment_id=experiment_id,
                exposure_id=event.exposure_id,
                unit_id=event.unit_id,
                type=event.type,
                item_id=event.item_id,
                value=event.value,
                ts=event.timestamp or now,
            )
        )
    try:
        result = await services.writer.commit((), rows)
    except CommitPending as exc:
        # Not `nothing was recorded`: the batch may still commit; a retry is safe.
        detail = (
            f"{exc.message}; the batch may still be stored: retry it, "
            "events already stored count as duplicates"
        )
        raise HTTPException(503, detail, headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
    return {
        "received": len(rows),
        "new": result.new_events,
        "duplicates": result.duplicate_events,
        "featured": result.featured_events,
        "unfeatured_count": len(result.unfeatured),
        "unfeatured": [
            {"index": u.index, "event_id": u.event_id, "reason": u.reason}
            for u in result.unfeatured[:UNFEATURED_LISTED]
        ],
    }
