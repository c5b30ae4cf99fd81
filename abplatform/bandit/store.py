"""Bandit state of one experiment in SQL: posterior counts by increments, weight versions,
sticky decisions.

Every write is safe with several processes at once: rewards are added with one upsert
statement per arm (``units = units + n``), a new weight version is allocated under a lock
(a PostgreSQL advisory lock, SQLite's write lock), and a sticky decision is inserted with
``ON CONFLICT DO NOTHING`` and read back, so the first writer wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sqlalchemy import Connection, Engine, func, select, text, update

from abplatform.assignment.posteriors import BetaPosterior, ContextRewards, Posterior, RewardStats
from abplatform.assignment.thompson import ThompsonDecision, ThompsonPolicy
from abplatform.bandit.tables import (
    ASSIGNMENTS,
    EXPERIMENTS,
    STATE,
    WEIGHTS,
    ArmWeight,
    WeightVersion,
    add_to_state,
    connection_for,
    delete_bandit_rows,
    dialect_insert,
    latest_version,
    policy_context,
    state_row,
    stored_context,
    utcnow,
    weight_rows,
)

# First key of PostgreSQL's two-int advisory locks: "bandit weights"; the second is the
# experiment id, so publishers of different experiments never wait for each other.
_ADVISORY_CLASS = 0x0BA4D17


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
            conn.execute(dialect_insert(conn, STATE).on_conflict_do_nothing(), rows)
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
            add_to_state(conn, rows)

    def load_rewards(
        self, conn: Connection | None = None
    ) -> dict[str | None, dict[str, RewardStats]]:
        """Total reward statistics per context and arm (arms without rows are absent)."""
        query = select(
            STATE.c.context, STATE.c.arm, STATE.c.units, STATE.c.reward_sum, STATE.c.reward_sq_sum
        ).where(STATE.c.experiment_id == self.experiment_id)
        result: dict[str | None, dict[str, RewardStats]] = {}
        with connection_for(self.engine, conn) as c:
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
        with connection_for(self.engine, conn) as c:
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
        return latest_version(conn, self.experiment_id)

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
        with connection_for(self.engine, conn) as c:
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
            history = weight_rows(conn, self.experiment_id)
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
                dialect_insert(conn, ASSIGNMENTS)
                .on_conflict_do_nothing()
                .returning(ASSIGNMENTS.c.unit_id)
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
                row = state_row(self.experiment_id, stored_context(context), decision.variant, 1)
                add_to_state(conn, [row])
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
            delete_bandit_rows(conn, self.experiment_id)
