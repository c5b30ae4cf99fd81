"""Write a block of simulated sessions (exposures, impressions, events) as real traffic would."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

from abplatform.domain import SCENES
from abplatform.storage.exposure_ids import reserve_exposure_ids
from abplatform.storage.rows import (
    EventColumns,
    ExposureColumns,
    insert_events,
    insert_exposures,
    insert_impressions,
)
from simulator.behaviour import slate_probabilities
from simulator.context import Contexts
from simulator.truth import Labels, SlateSource, SourcedSlates
from simulator.world import World

PURCHASE_DELAY_S = 600
"""Seconds after the exposure at which a purchase is logged (clicks: 1 s per position)."""


@dataclass(frozen=True)
class SessionBlock:
    """Sessions in arrival order with their arm, slate and sampled feedback."""

    users: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    contexts: Contexts
    arm: npt.NDArray[np.int64]
    propensity: npt.NDArray[np.float64]
    bucket: Sequence[float | None] | npt.NDArray[np.float64]
    items: npt.NDArray[np.int64]
    clicked: npt.NDArray[np.bool_]
    bought: npt.NDArray[np.bool_]
    weight_version: npt.NDArray[np.int64] | None = None
    # (sessions, k) retrieval source of each item; None: no strategy in the block has any.
    item_sources: Labels | None = None


def sample_sessions(
    world: World,
    sources: dict[str, SlateSource],
    keys: list[str],
    users: npt.NDArray[np.int64],
    contexts: Contexts,
    arm: npt.NDArray[np.int64],
    k: int,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int64], Labels | None, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Each session's slate from its arm's strategy (with its items' retrieval sources when
    a strategy has them, else None), then sampled clicks and purchases."""
    items = np.empty((users.size, k), dtype=np.int64)
    labels: Labels | None = None
    for a, key in enumerate(keys):
        rows = np.flatnonzero(arm == a)
        if rows.size:
            subset = Contexts(contexts.scene[rows], contexts.current[rows], contexts.cart[rows])
            source = sources[key]
            if isinstance(source, SourcedSlates):
                items[rows], found = source.with_sources(users[rows], subset)
                if found is not None:
                    if labels is None:
                        labels = np.full((users.size, k), None, dtype=object)
                    labels[rows] = found
            else:
                items[rows] = source(users[rows], subset)
    outcome = slate_probabilities(world, users, items)
    clicked = rng.random(items.shape) < outcome.click
    bought = clicked & (rng.random(items.shape) < outcome.purchase_given_click)
    return items, labels, clicked, bought


def write_sessions(
    conn: Connection,
    world: World,
    block: SessionBlock,
    keys: list[str],
    *,
    experiment_id: int,
    run_id: int,
    event_seq: int,
    model_ids: Sequence[int | None] = (),
) -> int:
    """Insert the block's exposures, impressions and click/purchase events; return the event seq.

    `model_ids` holds each arm's registered model id (in `keys` order, None: fitted in
    memory); without it every exposure's model id is NULL.
    """
    n, k = block.items.shape
    model_id = None
    if any(one is not None for one in model_ids):
        model_id = np.asarray(list(model_ids), dtype=object)[block.arm]
    exposure_ids = reserve_exposure_ids(conn, n)
    exposures = ExposureColumns(
        variant=np.asarray(keys)[block.arm],
        unit_id=world.user_ids[block.users],
        seconds=block.ts,
        propensity=block.propensity,
        scene=np.asarray(SCENES)[block.contexts.scene],
        slate_size=k,
        bucket=block.bucket,
        context=block.contexts.as_json(world),
        weight_version=block.weight_version,
        model_id=model_id,
    )
    insert_exposures(conn, exposure_ids, experiment_id, exposures)
    insert_impressions(
        conn,
        experiment_id,
        np.repeat(exposure_ids, k),
        np.tile(np.arange(k), n),
        world.item_ids[block.items.ravel()],
        np.repeat(exposures.variant, k),
        None if block.item_sources is None else block.item_sources.ravel(),
    )
    items, clicked, bought = block.items, block.clicked, block.bought
    crow, ccol = np.nonzero(clicked)
    brow, bcol = np.nonzero(bought)
    n_events = crow.size + brow.size
    event_rows = np.concatenate([crow, brow])
    event_items = np.concatenate([items[crow, ccol], items[brow, bcol]])
    offsets = np.concatenate([ccol + 1, bcol + PURCHASE_DELAY_S])
    values: list[float | None] = [None] * crow.size + world.item_price[items[brow, bcol]].tolist()
    events = EventColumns(
        event_id=[f"sim{run_id}-{event_seq + i}" for i in range(n_events)],
        unit_id=world.user_ids[block.users[event_rows]],
        type=["click"] * crow.size + ["purchase"] * brow.size,
        item_id=world.item_ids[event_items],
        value=values,
        seconds=block.ts[event_rows] + offsets,
        exposure_id=exposure_ids[event_rows],
        position=_first_positions(items, event_rows, np.concatenate([ccol, bcol])),
    )
    insert_events(conn, experiment_id, events)
    return event_seq + n_events


def _first_positions(
    items: npt.NDArray[np.int64], rows: npt.NDArray[np.int64], columns: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Each event's item's first position in its slate (`events.position`): its own column
    unless the slate shows the item earlier too."""
    chosen = items[rows, columns][:, None]
    first: npt.NDArray[np.int64] = np.argmax(items[rows] == chosen, axis=1).astype(np.int64)
    return first
