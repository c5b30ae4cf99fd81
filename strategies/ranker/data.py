"""Training rows of the ranker from SQL: one per logged impression, labelled by its events.

Read-only SQL over `exposures`, `impressions` and `events` (their owner modules stay the
only writers). A row is (exposure, position, item) with the exposure's user, time and
scene, the impression's retrieval source, and whether the user clicked / bought that item
on that exposure.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine, case, func, select

from abplatform.storage import models as m

EXPOSURES = m.Base.metadata.tables["exposures"]
IMPRESSIONS = m.Base.metadata.tables["impressions"]
EVENTS = m.Base.metadata.tables["events"]
EXPERIMENTS = m.Base.metadata.tables["experiments"]
EPOCH = np.datetime64("1970-01-01T00:00:00", "us")


@dataclass(frozen=True)
class ImpressionLog:
    """Logged impressions as parallel columns, in time order (exposure ts, id, position)."""

    exposure_ids: npt.NDArray[np.int64]
    positions: npt.NDArray[np.int64]
    item_ids: npt.NDArray[np.str_]
    sources: npt.NDArray[np.str_]
    unit_ids: npt.NDArray[np.str_]
    timestamps: npt.NDArray[np.int64]
    scenes: npt.NDArray[np.str_]
    clicked: npt.NDArray[np.bool_]
    purchased: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.exposure_ids.shape[0])

    def holdout_mask(self, fraction: float) -> npt.NDArray[np.bool_]:
        """True for the rows of the last `fraction` of exposures by time (whole exposures)."""
        order = np.unique(self.exposure_ids, return_index=True)[1]
        first_rows = np.sort(order)  # rows are time ordered: first row of each exposure
        n_exposures = first_rows.size
        n_held = int(np.floor(n_exposures * fraction))
        mask = np.zeros(len(self), dtype=bool)
        if n_held == 0:
            return mask
        mask[first_rows[n_exposures - n_held] :] = True
        return mask


def read_impressions(
    conn: Connection | Engine,
    *,
    experiment: str | None = None,
    catalog: str | None = None,
    max_exposures: int = 200_000,
) -> ImpressionLog:
    """The newest `max_exposures` exposures' impressions of `experiment` (or of every
    experiment on `catalog`), labelled; memory is bounded by `max_exposures`."""
    if (experiment is None) == (catalog is None):
        raise ValueError("read_impressions needs exactly one of experiment or catalog")
    if isinstance(conn, Engine):
        with conn.connect() as connection:
            return read_impressions(
                connection, experiment=experiment, catalog=catalog, max_exposures=max_exposures
            )
    x, imp, ev = EXPOSURES, IMPRESSIONS, EVENTS
    experiments = select(EXPERIMENTS.c.id).where(
        EXPERIMENTS.c.key == experiment
        if experiment is not None
        else EXPERIMENTS.c.catalog == catalog
    )
    newest = (
        select(x.c.id)
        .where(x.c.experiment_id.in_(experiments))
        .order_by(x.c.ts.desc(), x.c.id.desc())
        .limit(max_exposures)
        .subquery()
    )
    rows = conn.execute(
        select(imp.c.exposure_id, imp.c.position, imp.c.item_id, imp.c.source)
        .add_columns(x.c.unit_id, x.c.ts, x.c.scene)
        .join(x, x.c.id == imp.c.exposure_id)
        .where(imp.c.exposure_id.in_(select(newest.c.id)))
        .order_by(x.c.ts, x.c.id, imp.c.position)
    ).all()
    labels = conn.execute(
        select(
            ev.c.exposure_id,
            ev.c.item_id,
            func.max(case((ev.c.type == "click", 1), else_=0)),
            func.max(case((ev.c.type == "purchase", 1), else_=0)),
        )
        .where(ev.c.exposure_id.in_(select(newest.c.id)), ev.c.type.in_(("click", "purchase")))
        .group_by(ev.c.exposure_id, ev.c.item_id)
    ).all()
    labelled = {(int(e), str(i)): (bool(c), bool(p)) for e, i, c, p in labels}
    n = len(rows)
    flags = [labelled.get((int(r[0]), str(r[2])), (False, False)) for r in rows]
    purchased = np.array([p for _, p in flags], dtype=bool).reshape(n)
    # A purchase counts as a click: the purchase head is p(purchase | click).
    clicked = np.array([c for c, _ in flags], dtype=bool).reshape(n) | purchased
    stamps = np.array([r[5] for r in rows], dtype="datetime64[us]").reshape(n)
    return ImpressionLog(
        exposure_ids=np.array([r[0] for r in rows], dtype=np.int64).reshape(n),
        positions=np.array([r[1] for r in rows], dtype=np.int64).reshape(n),
        item_ids=np.array([str(r[2]) for r in rows], dtype=str).reshape(n),
        sources=np.array([r[3] or "" for r in rows], dtype=str).reshape(n),
        unit_ids=np.array([str(r[4]) for r in rows], dtype=str).reshape(n),
        timestamps=((stamps - EPOCH) // np.timedelta64(1, "s")).astype(np.int64),
        scenes=np.array([r[6] or "" for r in rows], dtype=str).reshape(n),
        clicked=clicked,
        purchased=purchased,
    )


@dataclass(frozen=True)
class ImpressionSource:
    """Where a ranker being fitted reads its logged impressions: a database (an open
    connection reads inside the caller's transaction, as `abplatform simulate` does) and a
    scope."""

    engine: Engine | Connection
    experiment: str | None = None
    catalog: str | None = None


_SOURCE: contextvars.ContextVar[ImpressionSource | None] = contextvars.ContextVar(
    "ranker_impressions", default=None
)


@contextlib.contextmanager
def logged_impressions(source: ImpressionSource) -> Iterator[None]:
    """Rankers fitted inside this block train on `source`'s impressions (`abplatform train`,
    and `abplatform simulate` on its logging period)."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def current_source() -> ImpressionSource | None:
    """The impression source of the enclosing `logged_impressions` block, if any."""
    return _SOURCE.get()
