"""The Thompson policy of a long-running server: state in SQL, decisions from memory."""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypedDict, Unpack

from sqlalchemy import Engine

from abplatform.assignment.allocation import check_at_least
from abplatform.assignment.engine import build_thompson_policy
from abplatform.assignment.posteriors import ContextRewards
from abplatform.assignment.thompson import AssignEach, ThompsonDecision, ThompsonPolicy, as_thompson
from abplatform.bandit.store import BanditStore
from abplatform.bandit.tables import WeightVersion
from abplatform.config.models import ExperimentConfig
from abplatform.domain import SCENES, Decision


class Options(TypedDict, total=False):
    """The optional settings of `PersistentThompsonPolicy` (see its constructor)."""

    refresh_seconds: float
    clock: Callable[[], float]
    count_trials: bool
    sticky_cache_size: int


class PersistentThompsonPolicy(AssignEach):
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
    SQL it does not need: `draw` and `known` (memory) and `settle` (the sticky look-up)
    per request; `sync` (SQL, any thread) and what it returns (memory, the serving thread)
    in the background.
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
        check_at_least("update_every", update_every, 1)
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
        cls,
        engine: Engine,
        experiment_id: int,
        config: ExperimentConfig,
        **options: Unpack[Options],
    ) -> PersistentThompsonPolicy:
        """The persistent policy of a stored bandit experiment (ValueError if not a bandit)."""
        spec = config.require_bandit()
        policy = build_thompson_policy(spec)
        store = BanditStore(engine, experiment_id, policy.variant_keys)
        return cls(store, policy, update_every=spec.assignment.update_every, **options)

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
        value = self.policy.context_value(context)
        return self._settle(unit_id, value, self.policy.draw_arm(value, u))

    @property
    def sticky(self) -> bool:
        """Whether a unit keeps its first arm (decisions stored in SQL)."""
        return self.policy.sticky

    def draw(self, unit_id: str, context: Mapping[str, Any] | None = None) -> ThompsonDecision:
        """An arm drawn from the weights in force in the request's context (memory).

        Raises `MissingContext` when the policy needs a context value the request lacks.
        """
        return self.policy.draw_arm(self.policy.context_value(context))

    def known(
        self, unit_id: str, context: Mapping[str, Any] | None = None
    ) -> ThompsonDecision | None:
        """A sticky unit's decision if this process has already seen it (memory)."""
        if not self.policy.sticky:
            return None
        return self._sticky.get((self.policy.context_value(context), unit_id))

    def settle(
        self, unit_id: str, context: Mapping[str, Any] | None, decision: Decision
    ) -> ThompsonDecision:
        """The decision in force for the unit: ``decision`` itself when not sticky, else the
        unit's stored first decision, storing ``decision`` if it is new (SQL; thread-safe)."""
        return self._settle(unit_id, self.policy.context_value(context), as_thompson(decision))

    def _settle(
        self, unit_id: str, context: str | None, decision: ThompsonDecision
    ) -> ThompsonDecision:
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

    def sync(self) -> Callable[[], None] | None:
        """Background step (a worker thread): publish the weight version due, if any, and
        fetch the newest one when it differs from the one in force.

        Returns what puts it in force (`apply_weights`), to call on the thread that draws
        decisions, so a decision never mixes two versions; None when nothing changed.
        """
        self.publish_due()
        fetched = self.fetch_weights()
        return None if fetched is None else partial(self.apply_weights, fetched)

    def publish_due(self, force: bool = False) -> int | None:
        """Publish a new weight version if `update_every` units arrived since the last one.

        Computed on a private copy of the policy from the SQL totals (any thread); the
        serving policy takes the version through `fetch_weights` + `apply_weights`.
        """
        return self.store.publish_if_due(self._publisher, self.update_every, force=force)

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
