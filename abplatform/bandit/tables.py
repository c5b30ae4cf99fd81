"""The ``bandit_*`` tables: handles, contexts as stored, row encoders, whole-experiment reads,
writes and deletes (the analysis's reads, a simulated run's history, clearing an experiment)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite

from abplatform.storage import models as m
from abplatform.storage.bulk import Column, bulk_insert

NO_CONTEXT = ""
"""The stored context of an experiment without per-context bandits."""


STATE: Table = m.Base.metadata.tables["bandit_state"]
WEIGHTS: Table = m.Base.metadata.tables["bandit_weights"]
ASSIGNMENTS: Table = m.Base.metadata.tables["bandit_assignments"]
EXPOSURE_TRIALS: Table = m.Base.metadata.tables["bandit_exposures"]
BANDIT_TABLES: tuple[Table, ...] = (STATE, WEIGHTS, ASSIGNMENTS, EXPOSURE_TRIALS)
"""Every table of bandit state, all keyed by ``experiment_id``."""
EXPOSURES: Table = m.Base.metadata.tables["exposures"]
EXPERIMENTS: Table = m.Base.metadata.tables["experiments"]


def utcnow() -> datetime:
    """Current UTC time without tzinfo, as stored in the database."""
    return datetime.now(UTC).replace(tzinfo=None)


def stored_context(context: str | None) -> str:
    """The `context` column value of a policy context (None -> '')."""
    if context is None:
        return NO_CONTEXT
    if context == NO_CONTEXT:
        raise ValueError("a context value must be a non-empty string")
    return context


def policy_context(stored: str) -> str | None:
    """The policy context of a `context` column value ('' -> None)."""
    return None if stored == NO_CONTEXT else stored


@dataclass(frozen=True)
class ArmWeight:
    """One arm's row of a weight version: weight in force, P(best), units behind it."""

    version: int
    context: str | None
    arm: str
    weight: float
    p_best: float
    units: int
    computed_at: datetime


@dataclass(frozen=True)
class WeightVersion:
    """A published weight version: per context, per arm weight / P(best) / units."""

    version: int
    weights: dict[str | None, dict[str, float]]
    p_best: dict[str | None, dict[str, float]]
    units: dict[str | None, dict[str, int]]


def dialect_insert(conn: Connection, table: Table) -> Any:
    """A dialect insert construct that supports ON CONFLICT (PostgreSQL or SQLite)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(
        f"bandit storage supports PostgreSQL and SQLite, not {conn.dialect.name}"
    )


def state_row(
    experiment_id: int,
    context: str,
    arm: str,
    units: int,
    reward_sum: float = 0.0,
    reward_sq_sum: float = 0.0,
) -> dict[str, Any]:
    """A `bandit_state` increment row for `add_to_state` (``context`` as stored)."""
    return {
        "experiment_id": experiment_id,
        "context": context,
        "arm": arm,
        "units": units,
        "reward_sum": reward_sum,
        "reward_sq_sum": reward_sq_sum,
        "updated_at": utcnow(),
    }


def add_to_state(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Add increment rows to `bandit_state` (``units = units + n`` ...), one upsert per row.

    Rows go in (experiment, context, arm) order, so concurrent writers on PostgreSQL lock
    them in the same order and never deadlock.
    """
    if not rows:
        return
    rows = sorted(rows, key=lambda r: (r["experiment_id"], r["context"], r["arm"]))
    statement = dialect_insert(conn, STATE)
    upsert = statement.on_conflict_do_update(
        index_elements=["experiment_id", "context", "arm"],
        set_={
            "units": STATE.c.units + statement.excluded.units,
            "reward_sum": STATE.c.reward_sum + statement.excluded.reward_sum,
            "reward_sq_sum": STATE.c.reward_sq_sum + statement.excluded.reward_sq_sum,
            "updated_at": statement.excluded.updated_at,
        },
    )
    conn.execute(upsert, rows)


@contextmanager
def connection_for(engine: Engine, conn: Connection | None) -> Iterator[Connection]:
    """Use the given connection, or open one on the engine for the block."""
    if conn is not None:
        yield conn
        return
    with engine.connect() as owned:
        yield owned


def delete_bandit_rows(conn: Connection, experiment_id: int) -> None:
    """Delete an experiment's bandit state, weight history, sticky decisions and trials."""
    for table in BANDIT_TABLES:
        conn.execute(table.delete().where(table.c.experiment_id == experiment_id))


# --- reads of the analysis (`reports.bandit`) -----------------------------------------------


@dataclass(frozen=True)
class ArmTotals:
    """The stored posterior totals of one arm in one context, as written (not clamped)."""

    context: str | None
    arm: str
    units: int
    reward_sum: float
    reward_sq_sum: float


def arm_totals(conn: Connection, experiment_id: int) -> list[ArmTotals]:
    """Every ``bandit_state`` row of an experiment, by context and arm."""
    rows = conn.execute(
        select(
            STATE.c.context, STATE.c.arm, STATE.c.units, STATE.c.reward_sum, STATE.c.reward_sq_sum
        )
        .where(STATE.c.experiment_id == experiment_id)
        .order_by(STATE.c.context, STATE.c.arm)
    ).all()
    return [
        ArmTotals(policy_context(c), str(a), int(n), float(total), float(total_sq))
        for c, a, n, total, total_sq in rows
    ]


def latest_version(conn: Connection, experiment_id: int) -> int | None:
    """The newest weight version of an experiment, None before any."""
    query = select(func.max(WEIGHTS.c.version)).where(WEIGHTS.c.experiment_id == experiment_id)
    value = conn.execute(query).scalar_one()
    return None if value is None else int(value)


def weight_rows(
    conn: Connection, experiment_id: int, max_points: int | None = None
) -> list[ArmWeight]:
    """The stored weight rows by version, context and arm; thinned in SQL with ``max_points``.

    With ``max_points`` only every step-th version and the last are kept, at most about
    ``max_points`` versions.
    """
    query = select(
        WEIGHTS.c.version,
        WEIGHTS.c.context,
        WEIGHTS.c.arm,
        WEIGHTS.c.weight,
        WEIGHTS.c.p_best,
        WEIGHTS.c.units,
        WEIGHTS.c.computed_at,
    ).where(WEIGHTS.c.experiment_id == experiment_id)
    if max_points is not None:
        last = latest_version(conn, experiment_id)
        if last is None:
            return []
        step = max(1, -(-(last + 1) // max_points))
        query = query.where((WEIGHTS.c.version % step == 0) | (WEIGHTS.c.version == last))
    rows = conn.execute(query.order_by(WEIGHTS.c.version, WEIGHTS.c.context, WEIGHTS.c.arm))
    return [
        ArmWeight(int(v), policy_context(c), str(a), float(w), float(p), int(u), t)
        for v, c, a, w, p, u, t in rows
    ]


def lowest_weights(conn: Connection, experiment_id: int) -> dict[tuple[str | None, str], float]:
    """The lowest weight each (context, arm) ever had."""
    rows = conn.execute(
        select(WEIGHTS.c.context, WEIGHTS.c.arm, func.min(WEIGHTS.c.weight))
        .where(WEIGHTS.c.experiment_id == experiment_id)
        .group_by(WEIGHTS.c.context, WEIGHTS.c.arm)
    ).all()
    return {(policy_context(c), str(a)): float(w) for c, a, w in rows}


# --- a simulated run, written set-based in the caller's transaction ------------------------


@dataclass(frozen=True)
class WeightHistory:
    """Weight versions as parallel columns, one row per (version, stored context, arm)."""

    version: list[int] = field(default_factory=list)
    context: list[str] = field(default_factory=list)
    arm: list[str] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    p_best: list[float] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    computed_at: list[str] = field(default_factory=list)

    def add(
        self,
        version: int,
        context: str | None,
        arms: Sequence[str],
        weights: Sequence[float],
        p_best: Sequence[float],
        units: Sequence[int],
        computed_at: str,
    ) -> None:
        """Append one context's rows of a version (weights in force, P(best), units)."""
        stored = stored_context(context)
        for arm, weight, p, n in zip(arms, weights, p_best, units, strict=True):
            self.version.append(version)
            self.context.append(stored)
            self.arm.append(arm)
            self.weight.append(float(weight))
            self.p_best.append(float(p))
            self.units.append(int(n))
            self.computed_at.append(computed_at)


@dataclass(frozen=True)
class StickyDecisions:
    """Sticky units' first decisions as parallel columns (stored contexts)."""

    context: Column
    unit_id: Column
    arm: Column
    propensity: Column
    weight_version: Column
    assigned_at: Column


def _columns(experiment_id: int, data: WeightHistory | StickyDecisions) -> dict[str, Column]:
    """The columns of a row batch, the experiment id first."""
    columns = {f.name: getattr(data, f.name) for f in fields(data)}
    rows = len(next(iter(columns.values())))
    return {"experiment_id": [experiment_id] * rows, **columns}


def write_simulated_run(
    conn: Connection,
    experiment_id: int,
    history: WeightHistory,
    totals: Sequence[ArmTotals],
    updated_at: str,
    sticky: StickyDecisions | None = None,
) -> None:
    """Write a whole run's weight history, final posterior totals and sticky decisions.

    Set-based (`bulk_insert`), inside the caller's transaction; the experiment's bandit
    rows must have been deleted first (`delete_bandit_rows`).
    """
    bulk_insert(conn, WEIGHTS.name, _columns(experiment_id, history))
    bulk_insert(
        conn,
        STATE.name,
        {
            "experiment_id": [experiment_id] * len(totals),
            "context": [stored_context(t.context) for t in totals],
            "arm": [t.arm for t in totals],
            "units": [t.units for t in totals],
            "reward_sum": [t.reward_sum for t in totals],
            "reward_sq_sum": [t.reward_sq_sum for t in totals],
            "updated_at": [updated_at] * len(totals),
        },
    )
    if sticky is not None:
        write_sticky_decisions(conn, experiment_id, sticky)


def write_sticky_decisions(conn: Connection, experiment_id: int, sticky: StickyDecisions) -> None:
    """Insert sticky units' first decisions set-based, in the caller's transaction."""
    bulk_insert(conn, ASSIGNMENTS.name, _columns(experiment_id, sticky))
