"""Bandit state in SQL: posterior counts by increments, weight versions, sticky decisions.

Every write is safe with several processes at once: rewards are added with one upsert
statement per arm (``units = units + n``), a new weight version is allocated under a lock
(a PostgreSQL advisory lock, SQLite's write lock), and a sticky decision is inserted with
``ON CONFLICT DO NOTHING`` and read back, so the first writer wins.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Table,
    any_,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.expression import Executable

from abplatform.assignment.base import BatchDecision
from abplatform.assignment.engine import build_thompson_policy, reward_family
from abplatform.assignment.thompson import (
    BetaPosterior,
    ContextRewards,
    Posterior,
    RewardStats,
    ThompsonDecision,
    ThompsonPolicy,
)
from abplatform.config.loader import validate_config
from abplatform.config.models import (
    ExperimentConfig,
    MeanMetric,
    ProportionMetric,
    ThompsonAssignmentConfig,
)
from abplatform.domain import SCENES
from abplatform.errors import ConfigError
from abplatform.storage import models as m
from abplatform.storage.repository import utcnow

log = logging.getLogger(__name__)

NO_CONTEXT = ""
"""The stored context of an experiment without per-context bandits."""

# First key of PostgreSQL's two-int advisory locks: "bandit weights"; the second is the
# experiment id, so publishers of different experiments never wait for each other.
_ADVISORY_CLASS = 0x0BA4D17

STATE: Table = m.Base.metadata.tables["bandit_state"]
WEIGHTS: Table = m.Base.metadata.tables["bandit_weights"]
ASSIGNMENTS: Table = m.Base.metadata.tables["bandit_assignments"]
EXPOSURE_TRIALS: Table = m.Base.metadata.tables["bandit_exposures"]
EXPOSURES: Table = m.Base.metadata.tables["exposures"]
EXPERIMENTS: Table = m.Base.metadata.tables["experiments"]


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


def _insert(conn: Connection, table: Table) -> Any:
    """A dialect insert construct that supports ON CONFLICT (PostgreSQL or SQLite)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(
        f"bandit storage supports PostgreSQL and SQLite, not {conn.dialect.name}"
    )


class BanditStore:
    """SQL state of one bandit experiment: posterior counts, weight history, sticky decisions.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        A migrated database (see `abplatform.storage.db.open_database`).
    experiment_id : int
        The experiment's row id.
    arms : sequence of str
        Variant keys, in the experiment's order.
    """

    def __init__(self, engine: Engine, experiment_id: int, arms: Sequence[str]) -> None:
        if len(arms) < 2 or len(set(arms)) != len(arms):
            raise ValueError(f"a bandit needs >= 2 distinct arms, got {list(arms)}")
        self.engine = engine
        self.experiment_id = experiment_id
        self.arms = tuple(arms)

    # --- posterior counts ---------------------------------------------------------------

    def ensure_arms(self, contexts: Iterable[str | None] = (None,)) -> None:
        """Create zero-count rows for every arm of these contexts; publish version 0 if none.

        Version 0 holds equal weights for the contexts given; idempotent and safe to call
        from several processes at once.
        """
        stored = sorted({stored_context(c) for c in contexts})
        now = utcnow()
        rows = [
            {
                "experiment_id": self.experiment_id,
                "context": c,
                "arm": arm,
                "units": 0,
                "reward_sum": 0.0,
                "reward_sq_sum": 0.0,
                "updated_at": now,
            }
            for c in stored
            for arm in self.arms
        ]
        with self.engine.begin() as conn:
            conn.execute(_insert(conn, STATE).on_conflict_do_nothing(), rows)
        with self.engine.begin() as conn:
            self._lock_versions(conn)
            if self._latest_version(conn) is None:
                share = 1.0 / len(self.arms)
                equal = {policy_context(c): [share] * len(self.arms) for c in stored}
                zeros = {policy_context(c): [0] * len(self.arms) for c in stored}
                self._insert_version(conn, 0, equal, equal, zeros)

    def record_rewards(self, rewards: ContextRewards) -> None:
        """Add per-arm reward statistics of several contexts, atomically, by increments.

        One upsert statement per (context, arm): ``units = units + n`` etc., in a fixed
        order so concurrent writers on PostgreSQL never deadlock; all rows commit together.
        A server may count a unit when it is exposed (``RewardStats(1, 0.0, 0.0)``) and add
        its reward when it arrives (``RewardStats(0, 1.0, 1.0)`` for a conversion).
        """
        rows = []
        now = utcnow()
        for context, batch in rewards.items():
            unknown = sorted(set(batch) - set(self.arms))
            if unknown:
                raise ValueError(f"unknown arms {unknown}; known: {list(self.arms)}")
            for arm, stats in batch.items():
                if stats.n == 0 and stats.total == 0 and stats.total_sq == 0:
                    continue
                rows.append(
                    {
                        "experiment_id": self.experiment_id,
                        "context": stored_context(context),
                        "arm": arm,
                        "units": stats.n,
                        "reward_sum": stats.total,
                        "reward_sq_sum": stats.total_sq,
                        "updated_at": now,
                    }
                )
        if not rows:
            return
        with self.engine.begin() as conn:
            _add_to_state(conn, rows)

    def load_rewards(
        self, conn: Connection | None = None
    ) -> dict[str | None, dict[str, RewardStats]]:
        """Total reward statistics per context and arm (arms without rows are absent)."""
        query = select(
            STATE.c.context, STATE.c.arm, STATE.c.units, STATE.c.reward_sum, STATE.c.reward_sq_sum
        ).where(STATE.c.experiment_id == self.experiment_id)
        result: dict[str | None, dict[str, RewardStats]] = {}
        with _connection(self.engine, conn) as c:
            for context, arm, units, total, total_sq in c.execute(query):
                # Float sums can round below sum**2 / n by an ulp; clamp to keep them coherent.
                n = int(units)
                sq = max(float(total_sq), float(total) ** 2 / n) if n else float(total_sq)
                result.setdefault(policy_context(context), {})[arm] = RewardStats(
                    n, float(total), sq
                )
        return result

    def load_posteriors(
        self, prior: Posterior, conn: Connection | None = None
    ) -> dict[str | None, list[Posterior]]:
        """Each context's posteriors in arm order: ``prior`` updated with the stored totals."""
        totals = self.load_rewards(conn)
        if isinstance(prior, BetaPosterior):
            # A conversion can be stored before its unit is counted: keep 0 <= successes <= n.
            totals = {
                c: {
                    a: RewardStats.binary(s.n, int(min(max(s.total, 0), s.n))) for a, s in b.items()
                }
                for c, b in totals.items()
            }
        return {
            context: [prior.updated(batch.get(arm, RewardStats(0, 0.0, 0.0))) for arm in self.arms]
            for context, batch in totals.items()
        }

    def total_units(self, conn: Connection | None = None) -> int:
        """Units recorded over every context and arm."""
        query = select(func.coalesce(func.sum(STATE.c.units), 0)).where(
            STATE.c.experiment_id == self.experiment_id
        )
        with _connection(self.engine, conn) as c:
            return int(c.execute(query).scalar_one())

    # --- weight versions ----------------------------------------------------------------

    def _lock_versions(self, conn: Connection) -> None:
        """Serialise version allocation of this experiment until the transaction ends."""
        if conn.dialect.name == "postgresql":
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:cls, :exp)"),
                {"cls": _ADVISORY_CLASS, "exp": self.experiment_id},
            )
        else:
            # SQLite: a first write takes the database write lock, so no other writer can
            # read the same latest version before this transaction commits.
            conn.execute(
                update(EXPERIMENTS)
                .where(EXPERIMENTS.c.id == self.experiment_id)
                .values(id=EXPERIMENTS.c.id)
            )

    def _latest_version(self, conn: Connection) -> int | None:
        query = select(func.max(WEIGHTS.c.version)).where(
            WEIGHTS.c.experiment_id == self.experiment_id
        )
        value = conn.execute(query).scalar_one()
        return None if value is None else int(value)

    def _insert_version(
        self,
        conn: Connection,
        version: int,
        weights: Mapping[str | None, Sequence[float]],
        p_best: Mapping[str | None, Sequence[float]],
        units: Mapping[str | None, Sequence[int]],
    ) -> None:
        now = utcnow()
        rows = []
        for context, row in weights.items():
            if len(row) != len(self.arms) or abs(float(np.sum(row)) - 1.0) > 1e-6:
                raise ValueError(
                    f"weights of context {context!r} must be {len(self.arms)} shares summing "
                    f"to 1, got {list(row)}"
                )
            for i, arm in enumerate(self.arms):
                rows.append(
                    {
                        "experiment_id": self.experiment_id,
                        "version": version,
                        "context": stored_context(context),
                        "arm": arm,
                        "weight": float(row[i]),
                        "p_best": float(p_best[context][i]),
                        "units": int(units[context][i]),
                        "computed_at": now,
                    }
                )
        conn.execute(WEIGHTS.insert(), rows)

    def publish_weights(
        self,
        weights: Mapping[str | None, Sequence[float]],
        p_best: Mapping[str | None, Sequence[float]],
        units: Mapping[str | None, Sequence[int]],
    ) -> int:
        """Store a new weight version (the latest plus one) for these contexts; its number.

        Rows of one version commit together; concurrent publishers get consecutive versions.
        """
        with self.engine.begin() as conn:
            self._lock_versions(conn)
            latest = self._latest_version(conn)
            version = 0 if latest is None else latest + 1
            self._insert_version(conn, version, weights, p_best, units)
        return version

    def units_since_latest(self, conn: Connection | None = None) -> int:
        """Units recorded since the newest weight version was computed (all if none)."""
        with _connection(self.engine, conn) as c:
            latest = self._latest_version(c)
            units_then = 0
            if latest is not None:
                units_then = int(
                    c.execute(
                        select(func.coalesce(func.sum(WEIGHTS.c.units), 0)).where(
                            WEIGHTS.c.experiment_id == self.experiment_id,
                            WEIGHTS.c.version == latest,
                        )
                    ).scalar_one()
                )
            return self.total_units(c) - units_then

    def publish_if_due(
        self, policy: ThompsonPolicy, update_every: int, force: bool = False
    ) -> int | None:
        """Recompute and publish weights if `update_every` units arrived since the last version.

        A lock-free look first (most calls stop there); then the check, the posterior load
        and the insert run under the version lock, so with several processes exactly one of
        them publishes each due update. Returns the new version, or None when none was due.
        """
        if not force and self.units_since_latest() < update_every:
            return None
        with self.engine.begin() as conn:
            self._lock_versions(conn)
            if not force and self.units_since_latest(conn) < update_every:
                return None
            posteriors = self.load_posteriors(policy.prior(), conn)
            if not posteriors:
                return None
            latest = self._latest_version(conn)
            version = 0 if latest is None else latest + 1
            policy.set_posteriors(posteriors, version=version)
            contexts = list(posteriors)
            self._insert_version(
                conn,
                version,
                {c: list(policy.weights(c)) for c in contexts},
                {c: list(policy.p_best(c)) for c in contexts},
                {c: [p.n for p in posteriors[c]] for c in contexts},
            )
        return version

    def latest_version(self) -> int | None:
        """The newest published weight version, None before any."""
        with self.engine.connect() as conn:
            return self._latest_version(conn)

    def current_weights(self) -> WeightVersion | None:
        """The newest weight version with its rows, None before any."""
        with self.engine.connect() as conn:
            latest = self._latest_version(conn)
            if latest is None:
                return None
            rows = conn.execute(
                select(
                    WEIGHTS.c.context,
                    WEIGHTS.c.arm,
                    WEIGHTS.c.weight,
                    WEIGHTS.c.p_best,
                    WEIGHTS.c.units,
                ).where(WEIGHTS.c.experiment_id == self.experiment_id, WEIGHTS.c.version == latest)
            ).all()
        current = WeightVersion(latest, {}, {}, {})
        for context, arm, weight, p_best, units in rows:
            key = policy_context(context)
            current.weights.setdefault(key, {})[arm] = float(weight)
            current.p_best.setdefault(key, {})[arm] = float(p_best)
            current.units.setdefault(key, {})[arm] = int(units)
        return current

    def weight_history(self) -> list[ArmWeight]:
        """Every stored weight row, by version, context and arm order."""
        order = {arm: i for i, arm in enumerate(self.arms)}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    WEIGHTS.c.version,
                    WEIGHTS.c.context,
                    WEIGHTS.c.arm,
                    WEIGHTS.c.weight,
                    WEIGHTS.c.p_best,
                    WEIGHTS.c.units,
                    WEIGHTS.c.computed_at,
                )
                .where(WEIGHTS.c.experiment_id == self.experiment_id)
                .order_by(WEIGHTS.c.version, WEIGHTS.c.context)
            ).all()
        history = [
            ArmWeight(int(v), policy_context(c), a, float(w), float(p), int(u), t)
            for v, c, a, w, p, u, t in rows
        ]
        history.sort(key=lambda r: (r.version, r.context or "", order.get(r.arm, len(order))))
        return history

    # --- sticky decisions ---------------------------------------------------------------

    def get_or_assign(
        self,
        unit_id: str,
        context: str | None,
        decision: ThompsonDecision,
        *,
        count_trial: bool = False,
    ) -> ThompsonDecision:
        """The unit's stored decision in this context, storing ``decision`` if it has none.

        The first writer wins: concurrent callers for the same unit all get the same arm.
        """
        return self.assign_once(unit_id, context, decision, count_trial=count_trial)[0]

    def assign_once(
        self,
        unit_id: str,
        context: str | None,
        decision: ThompsonDecision,
        *,
        count_trial: bool = False,
    ) -> tuple[ThompsonDecision, bool]:
        """`get_or_assign`, also telling whether this call stored the decision (a new unit).

        A known unit costs one read; a new one one ``INSERT ... ON CONFLICT DO NOTHING
        RETURNING``, and a read of the winner's row if another writer got there first. With
        ``count_trial`` a stored decision also adds one unit to its arm's posterior counts,
        in the same transaction, so each sticky unit is counted exactly once (its reward
        arrives later through `apply_bandit_feedback`).
        """
        existing = self.get_assignment(unit_id, context)
        if existing is not None:
            return existing, False
        with self.engine.begin() as conn:
            statement = (
                _insert(conn, ASSIGNMENTS).on_conflict_do_nothing().returning(ASSIGNMENTS.c.unit_id)
            )
            stored = conn.execute(
                statement,
                {
                    "experiment_id": self.experiment_id,
                    "context": stored_context(context),
                    "unit_id": unit_id,
                    "arm": decision.variant,
                    "propensity": decision.propensity,
                    "weight_version": decision.weight_version,
                    "assigned_at": utcnow(),
                },
            ).one_or_none()
            if stored is not None and count_trial:
                row = _state_row(self.experiment_id, stored_context(context), decision.variant, 1)
                _add_to_state(conn, [row])
        if stored is not None:
            return decision, True
        winner = self.get_assignment(unit_id, context)
        if winner is None:  # the winner's row is committed before ON CONFLICT skips ours
            raise RuntimeError(f"sticky decision of unit {unit_id!r} vanished")
        return winner, False

    def get_assignment(self, unit_id: str, context: str | None) -> ThompsonDecision | None:
        """The unit's stored sticky decision in this context, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    ASSIGNMENTS.c.arm, ASSIGNMENTS.c.propensity, ASSIGNMENTS.c.weight_version
                ).where(
                    ASSIGNMENTS.c.experiment_id == self.experiment_id,
                    ASSIGNMENTS.c.context == stored_context(context),
                    ASSIGNMENTS.c.unit_id == unit_id,
                )
            ).one_or_none()
        if row is None:
            return None
        return ThompsonDecision(str(row[0]), float(row[1]), None, int(row[2]))

    def reset(self) -> None:
        """Delete the experiment's bandit state, weight history and sticky decisions."""
        with self.engine.begin() as conn:
            for table in (STATE, WEIGHTS, ASSIGNMENTS, EXPOSURE_TRIALS):
                conn.execute(table.delete().where(table.c.experiment_id == self.experiment_id))


def _state_row(
    experiment_id: int,
    context: str,
    arm: str,
    units: int,
    reward_sum: float = 0.0,
    reward_sq_sum: float = 0.0,
) -> dict[str, Any]:
    """A `bandit_state` increment row for `_add_to_state` (``context`` as stored)."""
    return {
        "experiment_id": experiment_id,
        "context": context,
        "arm": arm,
        "units": units,
        "reward_sum": reward_sum,
        "reward_sq_sum": reward_sq_sum,
        "updated_at": utcnow(),
    }


def _add_to_state(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Add increment rows to `bandit_state` (``units = units + n`` ...), one upsert per row.

    Rows go in (experiment, context, arm) order, so concurrent writers on PostgreSQL lock
    them in the same order and never deadlock.
    """
    if not rows:
        return
    rows = sorted(rows, key=lambda r: (r["experiment_id"], r["context"], r["arm"]))
    statement = _insert(conn, STATE)
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
def _connection(engine: Engine, conn: Connection | None) -> Iterator[Connection]:
    """Use the given connection, or open one on the engine for the block."""
    if conn is not None:
        yield conn
        return
    with engine.connect() as owned:
        yield owned


class PersistentThompsonPolicy:
    """A Thompson policy for long-running servers: state in SQL, shared by processes.

    Non-sticky assignment draws from cached weights (no SQL round trip); the cache follows
    the newest stored weight version, checked at most every ``refresh_seconds``. Sticky
    assignment stores the first decision per unit in SQL (first writer wins).
    `record_rewards` adds to the SQL counts and, once ``update_every`` new units have
    arrived since the last version, recomputes the weights from the SQL posteriors and
    publishes the next version (exactly one process does so per due update).

    A server counts trials instead (``count_trials=True``): a sticky unit's first decision
    adds its unit, a per-request exposure adds one when written, and rewards come from
    events (`apply_bandit_feedback`). It splits the work so that serving never waits on
    SQL it does not need: `draw` (memory) and `settle` (the sticky look-up) per request;
    `publish_due`, `fetch_weights` (SQL, any thread) and `apply_weights` (memory, the
    serving thread) in the background.
    """

    def __init__(
        self,
        store: BanditStore,
        policy: ThompsonPolicy,
        *,
        update_every: int,
        refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        count_trials: bool = False,
        sticky_cache_size: int = 100_000,
    ) -> None:
        if tuple(policy.variant_keys) != store.arms:
            raise ValueError(
                f"policy arms {policy.variant_keys} differ from store arms {store.arms}"
            )
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.store = store
        self.policy = policy
        # Weight updates are computed on a copy: the serving policy's weights only change
        # through `apply_weights`, on the thread that draws from them.
        self._publisher = copy.deepcopy(policy)
        self.count_trials = count_trials
        self.sticky_cache_size = sticky_cache_size
        # Sticky decisions never change once stored (first writer wins): known units are
        # answered from memory.
        self._sticky: OrderedDict[tuple[str | None, str], ThompsonDecision] = OrderedDict()
        self._sticky_lock = threading.Lock()
        self.variant_keys = policy.variant_keys
        self.update_every = update_every
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._checked_at = -float("inf")
        self._loaded_version: int | None = None
        # Version 0: equal weights for the pooled bandit, or for every scene.
        store.ensure_arms(SCENES if policy.context_key == "scene" else (None,))
        self.refresh(force=True)

    @classmethod
    def from_config(
        cls, engine: Engine, experiment_id: int, config: ExperimentConfig, **kwargs: Any
    ) -> PersistentThompsonPolicy:
        """The persistent policy of a stored bandit experiment."""
        if not isinstance(config.assignment, ThompsonAssignmentConfig):
            raise ValueError(
                f"not a bandit experiment (assignment type {config.assignment.type!r})"
            )
        policy = build_thompson_policy(config)
        store = BanditStore(engine, experiment_id, policy.variant_keys)
        return cls(store, policy, update_every=config.assignment.update_every, **kwargs)

    @property
    def version(self) -> int:
        """The weight version in force in this process."""
        return self.policy.version

    def refresh(self, force: bool = False) -> bool:
        """Load the newest stored weights if newer than the cached ones; whether it did."""
        now = self._clock()
        if not force and now - self._checked_at < self.refresh_seconds:
            return False
        self._checked_at = now
        current = self.fetch_weights()
        if current is None:
            return False
        self.apply_weights(current)
        return True

    def fetch_weights(self) -> WeightVersion | None:
        """The newest stored weight version if it differs from the one in force, else None.

        SQL only, no change to the policy: safe to call from a background thread.
        """
        latest = self.store.latest_version()
        if latest is None or latest == self._loaded_version:
            return None
        return self.store.current_weights()

    def apply_weights(self, current: WeightVersion) -> None:
        """Put a fetched weight version in force (memory only; call it on the serving thread)."""
        if current.version == self._loaded_version:
            return
        for context, by_arm in current.weights.items():
            self.policy.set_weights(
                context,
                [by_arm[a] for a in self.variant_keys],
                [current.p_best[context][a] for a in self.variant_keys],
            )
        self.policy.version = current.version
        self._loaded_version = current.version

    def assign(
        self, unit_id: str, context: Mapping[str, Any] | None = None, *, u: float | None = None
    ) -> ThompsonDecision:
        """Draw an arm from the cached weights; sticky units get their stored first arm."""
        self.refresh()
        value, decision = self.draw(context, u)
        return self.settle(unit_id, value, decision)

    @property
    def sticky(self) -> bool:
        """Whether a unit keeps its first arm (decisions stored in SQL)."""
        return self.policy.sticky

    def draw(
        self, context: Mapping[str, Any] | None = None, u: float | None = None
    ) -> tuple[str | None, ThompsonDecision]:
        """The request's policy context and an arm drawn from the weights in force (memory).

        Raises ValueError when the policy needs a context value the request lacks.
        """
        value = self.policy.context_value(context)
        return value, self.policy.draw(value, u)

    def known_decision(self, unit_id: str, context: str | None) -> ThompsonDecision | None:
        """A sticky unit's decision if this process has already seen it (memory)."""
        return self._sticky.get((context, unit_id))

    def settle(
        self, unit_id: str, context: str | None, decision: ThompsonDecision
    ) -> ThompsonDecision:
        """The decision in force for the unit: ``decision`` itself when not sticky, else the
        unit's stored first decision, storing ``decision`` if it is new (SQL; thread-safe)."""
        if not self.policy.sticky:
            return decision
        key = (context, unit_id)
        known = self._sticky.get(key)
        if known is not None:
            return known
        stored = self.store.get_or_assign(unit_id, context, decision, count_trial=self.count_trials)
        with self._sticky_lock:
            self._sticky[key] = stored
            while len(self._sticky) > self.sticky_cache_size:
                self._sticky.popitem(last=False)
        return stored

    def publish_due(self, force: bool = False) -> int | None:
        """Publish a new weight version if `update_every` units arrived since the last one.

        Computed on a private copy of the policy from the SQL totals (any thread); the
        serving policy takes the version through `fetch_weights` + `apply_weights`.
        """
        return self.store.publish_if_due(self._publisher, self.update_every, force=force)

    def assign_batch(
        self,
        unit_ids: Sequence[str] | npt.NDArray[np.str_],
        context: Mapping[str, Any] | None = None,
    ) -> BatchDecision:
        """`assign` for many units sharing one context; ``bucket`` is NaN."""
        decisions = [self.assign(str(unit_id), context) for unit_id in unit_ids]
        index = np.array([self.variant_keys.index(d.variant) for d in decisions], dtype=np.int64)
        propensity = np.array([d.propensity for d in decisions], dtype=np.float64)
        return BatchDecision(index, propensity, np.full(len(decisions), np.nan))

    def record_rewards(self, rewards: ContextRewards) -> int | None:
        """Add rewards to SQL; publish new weights when due. Returns the new version or None."""
        self.store.record_rewards(rewards)
        version = self.store.publish_if_due(self.policy, self.update_every)
        if version is not None:
            self._loaded_version = version
        return version

    def update(self, feedback: Any) -> None:
        """`record_rewards` with a mapping of context -> arm -> RewardStats."""
        self.record_rewards(feedback)


# --- rewards from events, exactly once ----------------------------------------------------


class ExposureFacts(Protocol):
    """What the bandit needs of a written exposure (e.g. `abplatform.writer.ExposureRow`)."""

    @property
    def experiment_id(self) -> int: ...
    @property
    def variant(self) -> str: ...
    @property
    def scene(self) -> str | None: ...
    @property
    def weight_version(self) -> int | None: ...


class EventFacts(Protocol):
    """What the bandit needs of a stored event (e.g. `abplatform.writer.EventRow`)."""

    @property
    def experiment_id(self) -> int | None: ...
    @property
    def exposure_id(self) -> int | None: ...
    @property
    def unit_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def value(self) -> float | None: ...


@dataclass(frozen=True)
class RewardRule:
    """How the events of one bandit experiment become rewards of its trials.

    A trial is a sticky unit (the user, or the user in one scene with ``context: scene``)
    or, without ``sticky``, one exposure. Its reward follows the reward metric: 1 once it
    has an event of the metric's type (proportion), else the count of such events or the
    sum of their values (mean).
    """

    experiment_id: int
    arms: tuple[str, ...]
    event: str
    binary: bool
    use_value: bool
    sticky: bool
    by_scene: bool

    @classmethod
    def from_config(cls, experiment_id: int, config: ExperimentConfig) -> RewardRule:
        """The rule of a bandit experiment; ValueError for a hashed one or a bad metric."""
        assignment = config.assignment
        if not isinstance(assignment, ThompsonAssignmentConfig):
            raise ValueError(f"not a bandit experiment (assignment type {assignment.type!r})")
        family = reward_family(config)  # raises on an unknown or ratio reward metric
        metric = next(x for x in config.metrics if x.name == assignment.reward_metric)
        assert isinstance(metric, ProportionMetric | MeanMetric)  # checked by reward_family
        return cls(
            experiment_id=experiment_id,
            arms=tuple(v.key for v in config.variants),
            event=metric.event,
            binary=family == "binary",
            use_value=isinstance(metric, MeanMetric) and metric.value == "sum",
            sticky=assignment.sticky,
            by_scene=assignment.context == "scene",
        )

    def amount(self, value: float | None) -> float:
        """One event's addition to a trial's reward: 1, or its value for a sum metric."""
        if not self.use_value:
            return 1.0
        return 0.0 if value is None else float(value)

    def context_of(self, scene: str | None) -> str | None:
        """The stored context of a trial in this scene; None if it has no place."""
        if not self.by_scene:
            return NO_CONTEXT
        return scene or None


@dataclass(frozen=True)
class FeedbackResult:
    """What `apply_bandit_feedback` changed: trials counted, trials rewarded, experiments."""

    trials: int = 0
    rewards: int = 0
    experiments: frozenset[int] = frozenset()


_Increments = dict[tuple[int, str, str], list[float]]
"""(experiment, stored context, arm) -> [units, reward sum, reward sum of squares]."""
_CHUNK = 500
"""Keys per IN list (SQLite allows 32,766 bound parameters per statement)."""


def apply_bandit_feedback(
    conn: Connection,
    rules: Mapping[int, RewardRule],
    exposure_ids: Sequence[int],
    exposures: Sequence[ExposureFacts],
    new_events: Sequence[EventFacts],
) -> FeedbackResult:
    """Count new per-request trials and add new events' rewards, inside the caller's
    transaction (the one that wrote these exposures and events).

    Call it with the events that this transaction actually inserted (not duplicates): with
    the event insert and this update in one transaction, every event counts exactly once.

    - Exposures of non-sticky bandits with a ``weight_version`` become trials (a row of
      ``bandit_exposures``, inserted once by exposure id) and add a unit to their arm.
      Sticky units are counted when first assigned (`BanditStore.assign_once`).
    - An event of the reward metric's type adds to its trial's reward: the unit's row of
      ``bandit_assignments`` (sticky; with ``context: scene`` the scene of the event's
      ``exposure_id``), or the ``bandit_exposures`` row of its ``exposure_id`` (per
      request). Events that match no trial (no experiment, no such unit or exposure yet,
      a scene bandit's event without ``exposure_id``) are not rewards.
    - A binary trial succeeds once (reward 0 -> 1); a continuous one adds the amount and
      ``new**2 - old**2`` to the sum of squares.

    Trial rows are locked in key order (``SELECT ... ORDER BY ... FOR UPDATE`` on
    PostgreSQL; SQLite has one writer) and read before they change, so concurrent writers
    serialise on them and no update is lost; `bandit_state` takes one upsert per arm at
    the end, in key order, so writers never deadlock.
    """
    increments: _Increments = {}
    trials = _count_exposure_trials(conn, rules, exposure_ids, exposures, increments)
    rewards = _reward_trials(conn, rules, new_events, increments)
    rows = [
        _state_row(exp, context, arm, int(units), total, total_sq)
        for (exp, context, arm), (units, total, total_sq) in increments.items()
    ]
    _add_to_state(conn, rows)
    return FeedbackResult(trials, rewards, frozenset(exp for exp, _, _ in increments))


def _bump(increments: _Increments, key: tuple[int, str, str], *values: float) -> None:
    cell = increments.setdefault(key, [0.0, 0.0, 0.0])
    for i, value in enumerate(values):
        cell[i] += value


def _count_exposure_trials(
    conn: Connection,
    rules: Mapping[int, RewardRule],
    exposure_ids: Sequence[int],
    exposures: Sequence[ExposureFacts],
    increments: _Increments,
) -> int:
    """Insert the per-request trials of these exposures once; add a unit per new one."""
    rows = []
    for exposure_id, exposure in zip(exposure_ids, exposures, strict=True):
        rule = rules.get(exposure.experiment_id)
        if exposure.weight_version is None or rule is None or rule.sticky:
            continue
        context = rule.context_of(exposure.scene)
        if context is None or exposure.variant not in rule.arms:
            continue
        rows.append(
            {
                "exposure_id": exposure_id,
                "experiment_id": exposure.experiment_id,
                "context": context,
                "arm": exposure.variant,
                "reward": 0.0,
            }
        )
    if not rows:
        return 0
    statement = (
        _insert(conn, EXPOSURE_TRIALS)
        .on_conflict_do_nothing(index_elements=["exposure_id"])
        .returning(
            EXPOSURE_TRIALS.c.experiment_id, EXPOSURE_TRIALS.c.context, EXPOSURE_TRIALS.c.arm
        )
    )
    new = conn.execute(statement, rows).all()  # a replayed exposure returns nothing
    for exp, context, arm in new:
        _bump(increments, (int(exp), str(context), str(arm)), 1.0)
    return len(new)


def _reward_trials(
    conn: Connection,
    rules: Mapping[int, RewardRule],
    events: Sequence[EventFacts],
    increments: _Increments,
) -> int:
    """Add the events' rewards to their trials' rows and collect the state increments."""
    by_unit: dict[tuple[int, str, str], float] = {}  # (experiment, context, unit) -> amount
    by_exposure: dict[int, tuple[int, float]] = {}  # exposure id -> (experiment, amount)
    scene_of: list[tuple[EventFacts, float]] = []  # sticky scene bandits: need the exposure
    for event in events:
        rule = None if event.experiment_id is None else rules.get(event.experiment_id)
        if rule is None or event.type != rule.event:
            continue
        amount = rule.amount(event.value)
        if rule.sticky and not rule.by_scene:
            key = (rule.experiment_id, NO_CONTEXT, event.unit_id)
            by_unit[key] = by_unit.get(key, 0.0) + amount
        elif event.exposure_id is None:
            continue  # per-request and per-scene trials are found through the exposure
        elif rule.sticky:
            scene_of.append((event, amount))
        else:
            _, before = by_exposure.get(event.exposure_id, (rule.experiment_id, 0.0))
            by_exposure[event.exposure_id] = (rule.experiment_id, before + amount)
    if scene_of:
        scenes = _exposure_scenes(conn, [e.exposure_id for e, _ in scene_of if e.exposure_id])
        for event, amount in scene_of:
            found = scenes.get(event.exposure_id or 0)
            if found is None or found[:2] != (event.experiment_id, event.unit_id) or not found[2]:
                continue
            key = (found[0], found[2], event.unit_id)
            by_unit[key] = by_unit.get(key, 0.0) + amount
    if not by_unit and not by_exposure:
        return 0
    if conn.dialect.name == "sqlite":
        # Take SQLite's write lock before reading rewards, so none changes in between.
        first = min([k[0] for k in by_unit] + [v[0] for v in by_exposure.values()])
        conn.execute(update(EXPERIMENTS).where(EXPERIMENTS.c.id == first).values(id=first))
    binary = {exp: rule.binary for exp, rule in rules.items()}
    rewarded = _update_unit_rewards(conn, by_unit, binary, increments)
    rewarded += _update_exposure_rewards(conn, by_exposure, binary, increments)
    return rewarded


def _exposure_scenes(conn: Connection, ids: Sequence[int]) -> dict[int, tuple[int, str, str]]:
    """Exposure id -> (experiment id, unit id, scene or '') of the stored exposures."""
    found: dict[int, tuple[int, str, str]] = {}
    unique = sorted(set(ids))
    for start in range(0, len(unique), _CHUNK):
        query = select(
            EXPOSURES.c.id, EXPOSURES.c.experiment_id, EXPOSURES.c.unit_id, EXPOSURES.c.scene
        ).where(EXPOSURES.c.id.in_(unique[start : start + _CHUNK]))
        for exposure_id, exp, unit, scene in conn.execute(query):
            found[int(exposure_id)] = (int(exp), str(unit), scene or "")
    return found


def _new_reward(old: float, amount: float, binary: bool) -> float | None:
    """A trial's reward after adding ``amount``; None when it does not change."""
    if binary:
        return None if old != 0.0 else 1.0
    return None if amount == 0.0 else old + amount


def _update_unit_rewards(
    conn: Connection,
    amounts: Mapping[tuple[int, str, str], float],
    binary: Mapping[int, bool],
    increments: _Increments,
) -> int:
    """Lock, read and update sticky units' rewards in key order; returns rows changed.

    Units are looked up per (experiment, context), joined on the primary key (a row-value
    IN list would be a filter over every row of the context), and locked in code-point
    order: Python's sort, and PostgreSQL's under ``COLLATE "C"``.
    """
    t = ASSIGNMENTS
    postgres = conn.dialect.name == "postgresql"
    groups: dict[tuple[int, str], list[str]] = {}
    for exp, context, unit in sorted(amounts):
        groups.setdefault((exp, context), []).append(unit)
    chunks = [
        (exp, context, units[start : start + _CHUNK])
        for (exp, context), units in groups.items()
        for start in range(0, len(units), _CHUNK)
    ]
    changed = 0
    for exp_id, context_id, units in chunks:
        query: Executable
        if postgres:
            # A join with the array, not `unit_id = ANY(:units)`: once the driver prepares
            # the statement, the generic plan of ANY scans the context's rows with a linear
            # search of the array for each (measured 8x slower at 800 units).
            query = text(
                f"SELECT t.unit_id, t.arm, t.reward FROM {t.name} AS t "
                "JOIN unnest(CAST(:units AS text[])) AS v(unit_id) ON t.unit_id = v.unit_id "
                "WHERE t.experiment_id = :experiment_id AND t.context = :context "
                'ORDER BY t.unit_id COLLATE "C" FOR UPDATE OF t'
            ).bindparams(units=units, experiment_id=exp_id, context=context_id)
        else:
            query = (
                select(t.c.unit_id, t.c.arm, t.c.reward)
                .where(
                    t.c.experiment_id == exp_id,
                    t.c.context == context_id,
                    t.c.unit_id.in_(units),
                )
                .order_by(t.c.unit_id)
            )
        new_units: list[str] = []
        new_rewards: list[float] = []
        for unit, arm, old in conn.execute(query):
            new = _new_reward(float(old), amounts[(exp_id, context_id, unit)], binary[exp_id])
            if new is None:
                continue
            new_units.append(str(unit))
            new_rewards.append(new)
            _bump(
                increments,
                (exp_id, context_id, str(arm)),
                0.0,
                new - float(old),
                new * new - float(old) ** 2,
            )
        where = {"experiment_id": exp_id, "context": context_id}
        _set_rewards(conn, t, "unit_id", where, new_units, new_rewards)
        changed += len(new_units)
    return changed


_UNNEST_TYPES = {"unit_id": "text[]", "exposure_id": "bigint[]"}


def _set_rewards(
    conn: Connection,
    table: Table,
    key: str,
    where: Mapping[str, Any],
    keys: Sequence[Any],
    rewards: Sequence[float],
) -> None:
    """Set ``reward`` of the rows whose ``key`` column is in ``keys`` (and match ``where``).

    PostgreSQL: one ``UPDATE ... FROM unnest(keys, rewards)`` with two array parameters;
    SQLite: one prepared statement run for every row (in process, about as fast).
    """
    if not keys:
        return
    if conn.dialect.name == "postgresql":
        matches = " AND ".join([f"t.{name} = :{name}" for name in where] + [f"t.{key} = v.k"])
        statement = text(
            f"UPDATE {table.name} AS t SET reward = v.reward "
            f"FROM unnest(CAST(:keys AS {_UNNEST_TYPES[key]}), "
            f"CAST(:rewards AS double precision[])) AS v(k, reward) WHERE {matches}"
        )
        conn.execute(statement, {**where, "keys": list(keys), "rewards": list(rewards)})
        return
    conditions = [table.c[name] == bindparam(f"b_{name}") for name in [*where, key]]
    by_row = update(table).where(*conditions).values(reward=bindparam("b_reward"))
    rows = [
        {**{f"b_{name}": value for name, value in where.items()}, f"b_{key}": k, "b_reward": r}
        for k, r in zip(keys, rewards, strict=True)
    ]
    conn.execute(by_row, rows)


def _update_exposure_rewards(
    conn: Connection,
    amounts: Mapping[int, tuple[int, float]],
    binary: Mapping[int, bool],
    increments: _Increments,
) -> int:
    """Lock, read and update per-request trials' rewards by exposure id; rows changed."""
    t = EXPOSURE_TRIALS
    postgres = conn.dialect.name == "postgresql"
    keys = sorted(amounts)
    ids: list[int] = []
    rewards: list[float] = []
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        query = (
            select(t.c.exposure_id, t.c.experiment_id, t.c.context, t.c.arm, t.c.reward)
            .where(
                t.c.exposure_id == any_(bindparam("ids", chunk, ARRAY(BigInteger)))
                if postgres
                else t.c.exposure_id.in_(chunk)
            )
            .order_by(t.c.exposure_id)
        )
        if postgres:
            query = query.with_for_update()
        for exposure_id, exp, context, arm, old in conn.execute(query):
            wanted, amount = amounts[int(exposure_id)]
            if int(exp) != wanted:
                continue  # the event names another experiment than its exposure's
            new = _new_reward(float(old), amount, binary[wanted])
            if new is None:
                continue
            ids.append(int(exposure_id))
            rewards.append(new)
            _bump(
                increments,
                (wanted, str(context), str(arm)),
                0.0,
                new - float(old),
                new * new - float(old) ** 2,
            )
    _set_rewards(conn, t, "exposure_id", {}, ids, rewards)
    return len(ids)


class BanditFeedback:
    """The reward rules of bandit experiments, for a writer to apply in its transactions.

    Servers register the rule of each bandit experiment they load; experiments this
    object has not seen are looked up once (their config in SQL) when their exposures or
    events are written, so a journal replay or a process that only records events still
    counts. Reads and writes of the rule table are single dict operations (thread-safe).
    """

    def __init__(self) -> None:
        self._rules: dict[int, RewardRule | None] = {}

    def register(self, rule: RewardRule) -> None:
        """Use this rule for its experiment from now on."""
        self._rules[rule.experiment_id] = rule

    def forget(self, experiment_id: int) -> None:
        """Drop an experiment's rule; it is looked up again when next needed."""
        self._rules.pop(experiment_id, None)

    def wants(self, events: Sequence[EventFacts]) -> bool:
        """Whether some event may be a reward (then the writer must tell which are new)."""
        for event in events:
            exp = event.experiment_id
            if exp is None:
                continue
            rule = self._rules.get(exp)
            if rule is None:
                if exp not in self._rules:
                    return True  # not looked up yet
            elif rule.event == event.type:
                return True
        return False

    def rules(self, conn: Connection, experiment_ids: Iterable[int]) -> dict[int, RewardRule]:
        """The rules of these experiments that are bandits (unknown ones read from SQL)."""
        wanted = set(experiment_ids)
        unknown = sorted(i for i in wanted if i not in self._rules)
        for start in range(0, len(unknown), _CHUNK):
            query = select(EXPERIMENTS.c.id, EXPERIMENTS.c.key, EXPERIMENTS.c.config).where(
                EXPERIMENTS.c.id.in_(unknown[start : start + _CHUNK])
            )
            for exp, key, document in conn.execute(query):
                self._rules[int(exp)] = _stored_rule(int(exp), str(key), document)
        return {i: rule for i in wanted if (rule := self._rules.get(i)) is not None}

    def apply(
        self,
        conn: Connection,
        exposure_ids: Sequence[int],
        exposures: Sequence[ExposureFacts],
        new_events: Sequence[EventFacts],
    ) -> FeedbackResult:
        """`apply_bandit_feedback` with the rules of the experiments involved."""
        involved = {x.experiment_id for x in exposures if x.weight_version is not None}
        involved |= {e.experiment_id for e in new_events if e.experiment_id is not None}
        if not involved:
            return FeedbackResult()
        rules = self.rules(conn, involved)
        if not rules:
            return FeedbackResult()
        return apply_bandit_feedback(conn, rules, exposure_ids, exposures, new_events)


def _stored_rule(experiment_id: int, key: str, document: Any) -> RewardRule | None:
    """The rule of a stored experiment config, None if it is not a (valid) bandit."""
    try:
        config = validate_config(document, key)
        return RewardRule.from_config(experiment_id, config) if config.is_bandit else None
    except (ValueError, ConfigError):
        log.exception("experiment %r: no bandit reward rule", key)
        return None


# --- read-only views for the analysis (reports.bandit) ----------------------------------


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


def weight_rows(
    conn: Connection, experiment_id: int, max_points: int | None = None
) -> list[ArmWeight]:
    """The stored weight rows by version, context and arm; thinned in SQL with ``max_points``.

    With ``max_points`` only every step-th version and the last are kept, at most about
    ``max_points`` versions.
    """
    from dataclasses import fields  # here: this block moves into the bandit package at merge

    # The columns of an ArmWeight, in its field order.
    columns = [WEIGHTS.c[f.name] for f in fields(ArmWeight)]
    query = select(*columns).where(WEIGHTS.c.experiment_id == experiment_id)
    if max_points is not None:
        last = conn.execute(
            select(func.max(WEIGHTS.c.version)).where(WEIGHTS.c.experiment_id == experiment_id)
        ).scalar_one()
        if last is None:
            return []
        step = max(1, -(-(int(last) + 1) // max_points))
        query = query.where((WEIGHTS.c.version % step == 0) | (WEIGHTS.c.version == int(last)))
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
