"""A writer process of the feature-store concurrency test (importable by spawned children)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from abplatform.storage.db import make_engine
from abplatform.storage.rows import EventRow
from abplatform.writer import BufferedWriter

T0 = datetime(2026, 12, 1, 12, 0, 0)


def batches_of(worker: int, batches: int, size: int, experiment_id: int) -> list[list[EventRow]]:
    """The worker's event batches: every event on the one contended unit `u0`."""
    types = ("view", "click", "add_to_cart", "purchase")
    return [
        [
            EventRow(
                event_id=f"w{worker}-b{b}-e{e}",
                experiment_id=experiment_id,
                exposure_id=None,
                unit_id="u0",
                type=types[(b + e) % len(types)],
                item_id=f"item{(worker * 7 + b * 3 + e) % 20}",
                value=None,
                ts=T0 + timedelta(seconds=worker * 1000 + b * 10 + e),
            )
            for e in range(size)
        ]
        for b in range(batches)
    ]


async def _write(url: str, plan: list[list[EventRow]], start: Any) -> int:
    writer = BufferedWriter(make_engine(url), lock_wait=30.0)
    writer.start()
    start.wait()
    featured = 0
    try:
        for batch in plan:
            result = await writer.commit((), batch)
            featured += result.featured_events
    finally:
        await writer.close()
        writer.engine.dispose()
    return featured


def child(queue: Any, url: str, worker: int, batches: int, size: int, exp: int, start: Any) -> None:
    """Write the worker's batches through a real `BufferedWriter`, report the featured count."""
    try:
        featured = asyncio.run(_write(url, batches_of(worker, batches, size, exp), start))
        queue.put((worker, featured, None))
    except BaseException as exc:  # report, don't hang the parent
        start.abort()
        queue.put((worker, 0, f"{type(exc).__name__}: {exc}"))
