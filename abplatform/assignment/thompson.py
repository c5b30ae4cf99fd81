"""The Thompson-sampling policy: decisions from allocation weights, updated from rewards.

Posteriors live in `abplatform.assignment.posteriors`, the weights' computation in
`abplatform.assignment.allocation`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from abplatform.assignment.allocation import (
    Method,
    allocate_many,
    check_at_least,
    check_floor,
)
from abplatform.assignment.base import BatchDecision, MissingContext
from abplatform.assignment.posteriors import (
    BetaPosterior,
    ContextPosteriors,
    ContextRewards,
    FloatArray,
    GaussianPosterior,
    Posterior,
    RewardStats,
)
from abplatform.config.models import ThompsonAssignmentConfig
from abplatform.domain import Decision


@dataclass(frozen=True)
class ThompsonDecision(Decision):
    """A Thompson decision: a `Decision` plus the version of the weights it was drawn from."""

    weight_version: int = 0


class AssignEach:
    """`assign_batch` as `assign` on each unit, for policies that decide one unit at a time."""

    variant_keys: tuple[str, ...]

    def assign(self, unit_id: str, context: Mapping[str, Any] | None = None) -> Decision:
        raise NotImplementedError

    def assign_batch(
        self,
        unit_ids: Sequence[str] | npt.NDArray[np.str_],
        context: Mapping[str, Any] | None = None,
    ) -> BatchDecision:
        """`assign` for many units sharing one context; ``bucket`` is NaN."""
        decisions = [self.assign(str(unit_id), context) for unit_id in unit_ids]
        position = {key: i for i, key in enumerate(self.variant_keys)}
        index = np.array([position[d.variant] for d in decisions], dtype=np.int64)
        propensity = np.array([d.propensity for d in decisions], dtype=np.float64)
        return BatchDecision(index, propensity, np.full(len(decisions), np.nan))


def as_thompson(decision: Decision) -> ThompsonDecision:
    """A decision a Thompson policy drew (TypeError for another policy's)."""
    if not isinstance(decision, ThompsonDecision):
        raise TypeError(f"a Thompson policy settles its own decisions, got {decision!r}")
    return decision


@dataclass
class _ContextState:
    posteriors: list[Posterior]
    weights: FloatArray
    p_best: FloatArray
    sticky: dict[str, ThompsonDecision] = field(default_factory=dict)


class ThompsonPolicy(AssignEach):
    """Assigns units by Thompson-sampling weights, updated from batched reward statistics.

    Parameters
    ----------
    variant_keys : sequence of str
        Arm keys, at least two, distinct.
    reward : {"binary", "gaussian"}
        Posterior family: Beta for binary rewards, Normal-Inverse-Gamma for continuous ones.
    draws, top_two, top_two_beta, min_weight
        Passed to `allocate_many`.
    method : {"auto", "monte_carlo", "quadrature"}
        How P(best) is computed; "auto" (default) uses quadrature for Beta arms without
        top-two (exact to ~1e-3 and ~20x faster than 10,000 draws) and Monte Carlo otherwise.
        ``method="monte_carlo", draws=1`` makes each update play one joint posterior draw's
        argmax: textbook per-step Thompson sampling.
    burn_in_units : int
        Weights stay equal until every arm (in a context) has at least this many units.
    sticky : bool
        A unit keeps its first decision (held in memory here; `PersistentThompsonPolicy` in
        `abplatform.bandit` keeps it in SQL).
    context_key : str or None
        Key of the `context` mapping whose value selects a separate set of posteriors
        (e.g. ``"scene"``); None pools every unit.
    seed : int
        Seeds both the Monte Carlo draws and the assignment draws.
    """

    def __init__(
        self,
        variant_keys: Sequence[str],
        *,
        reward: Literal["binary", "gaussian"] = "binary",
        draws: int = 10_000,
        top_two: bool = False,
        top_two_beta: float = 0.5,
        min_weight: float = 0.0,
        method: Method = "auto",
        burn_in_units: int = 0,
        sticky: bool = False,
        context_key: str | None = None,
        seed: int = 0,
    ) -> None:
        keys = tuple(variant_keys)
        if len(keys) < 2 or len(set(keys)) != len(keys):
            raise ValueError(f"ThompsonPolicy needs >= 2 distinct variant keys, got {keys}")
        if reward not in ("binary", "gaussian"):
            raise ValueError(f"reward must be 'binary' or 'gaussian', got {reward!r}")
        check_at_least("burn_in_units", burn_in_units, 0)
        if method not in ("auto", "monte_carlo", "quadrature"):
            raise ValueError(
                f"method must be 'auto', 'monte_carlo' or 'quadrature', got {method!r}"
            )
        check_at_least("draws", draws, 1)
        self.variant_keys = keys
        self.reward = reward
        self.draws = draws
        self.top_two = top_two
        self.top_two_beta = top_two_beta
        self.min_weight = min_weight
        self.method: Method = method
        self.burn_in_units = burn_in_units
        self.sticky = sticky
        self.context_key = context_key
        self.version = 0
        check_floor(min_weight, len(keys))
        mc_seed, assign_seed = np.random.SeedSequence(seed).spawn(2)
        self._mc_rng = np.random.default_rng(mc_seed)
        self._assign_rng = np.random.default_rng(assign_seed)
        self._index = {key: i for i, key in enumerate(keys)}
        self._contexts: dict[str | None, _ContextState] = {}

    @classmethod
    def from_config(
        cls,
        config: ThompsonAssignmentConfig,
        variant_keys: Sequence[str],
        reward: Literal["binary", "gaussian"] = "binary",
    ) -> ThompsonPolicy:
        """A policy from its config block and the experiment's variant keys."""
        return cls(
            variant_keys,
            reward=reward,
            draws=config.draws,
            top_two=config.top_two,
            top_two_beta=config.top_two_beta,
            min_weight=config.min_weight,
            burn_in_units=config.burn_in_units,
            sticky=config.sticky,
            context_key=config.context,
            seed=config.seed,
        )

    def prior(self) -> Posterior:
        """The prior of every arm: Beta(1, 1) for binary rewards, a flat NIG otherwise."""
        return BetaPosterior() if self.reward == "binary" else GaussianPosterior()

    def _state(self, context: str | None) -> _ContextState:
        if context not in self._contexts:
            arms = len(self.variant_keys)
            equal = np.full(arms, 1.0 / arms)
            self._contexts[context] = _ContextState([self.prior()] * arms, equal, equal.copy())
        return self._contexts[context]

    def context_value(self, context: Mapping[str, Any] | None) -> str | None:
        """The context a request belongs to (None when the policy has no context key)."""
        if self.context_key is None:
            return None
        if context is None or self.context_key not in context:
            raise MissingContext(self.context_key)
        return str(context[self.context_key])

    def contexts(self) -> tuple[str | None, ...]:
        """The contexts seen so far."""
        return tuple(self._contexts)

    def posteriors(self, context: str | None = None) -> tuple[Posterior, ...]:
        """The arms' posteriors in a context (None when the policy has no context key)."""
        return tuple(self._state(context).posteriors)

    def weights(self, context: str | None = None) -> FloatArray:
        """The weights in force in a context (a copy)."""
        return self._state(context).weights.copy()

    def weights_many(self, contexts: Sequence[str | None]) -> FloatArray:
        """The weights in force in several contexts, shape (C, K)."""
        return np.stack([self._state(c).weights for c in contexts])

    def p_best(self, context: str | None = None) -> FloatArray:
        """Each arm's posterior probability of being best in a context, at the last update."""
        return self._state(context).p_best.copy()

    def in_burn_in(self, context: str | None = None) -> bool:
        """Whether some arm of the context has fewer than `burn_in_units` units."""
        return min(p.n for p in self._state(context).posteriors) < self.burn_in_units

    def draw_arm(self, context: str | None, u: float | None = None) -> ThompsonDecision:
        """Draw an arm from a context's weights in force (no stickiness)."""
        state = self._state(context)
        if u is None:
            u = float(self._assign_rng.random())
        elif not 0.0 <= u < 1.0:
            raise ValueError(f"u must lie in [0, 1), got {u}")
        index = choose_arms(state.weights, np.array([u]))[0]
        return ThompsonDecision(
            self.variant_keys[index], float(state.weights[index]), None, self.version
        )

    def assign(
        self,
        unit_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        u: float | None = None,
    ) -> ThompsonDecision:
        """Draw an arm from the weights in force.

        Parameters
        ----------
        unit_id : str
            The unit; with ``sticky`` it gets its first decision again.
        context : mapping, optional
            Must hold ``context_key`` when the policy has one.
        u : float, optional
            A uniform number in [0, 1) to invert the weights' CDF with; drawn from the
            policy's seeded generator when omitted.

        Returns
        -------
        ThompsonDecision
            ``propensity`` is the weight of the chosen arm at the time of the first draw,
            ``bucket`` is None, ``weight_version`` the version of the weights used.
        """
        value = self.context_value(context)
        state = self._state(value)
        if self.sticky and unit_id in state.sticky:
            return state.sticky[unit_id]
        decision = self.draw_arm(value, u)
        if self.sticky:
            state.sticky[unit_id] = decision
        return decision

    def draw(self, unit_id: str, context: Mapping[str, Any] | None = None) -> ThompsonDecision:
        """An arm drawn from the weights in force in the request's context (memory).

        Raises `MissingContext` when the policy has a context key the request lacks.
        """
        return self.draw_arm(self.context_value(context))

    def known(
        self, unit_id: str, context: Mapping[str, Any] | None = None
    ) -> ThompsonDecision | None:
        """A sticky unit's first decision, if it has one."""
        return self._state(self.context_value(context)).sticky.get(unit_id)

    def settle(
        self, unit_id: str, context: Mapping[str, Any] | None, decision: Decision
    ) -> ThompsonDecision:
        """The decision in force: the drawn one, or a sticky unit's first one."""
        drawn = as_thompson(decision)
        if not self.sticky:
            return drawn
        return self._state(self.context_value(context)).sticky.setdefault(unit_id, drawn)

    def sync(self) -> Callable[[], None] | None:
        """State lives in this object only: nothing to fetch."""
        return None

    def update(self, feedback: Mapping[str, RewardStats], context: str | None = None) -> None:
        """Fold a batch of per-arm reward statistics in and recompute the weights.

        Parameters
        ----------
        feedback : mapping of arm key to RewardStats
            Arms missing from the batch are unchanged.
        context : str, optional
            The context value the batch belongs to (None without a context key).
        """
        self.update_many({context: feedback})

    def update_many(self, feedback: ContextRewards) -> None:
        """Fold batches of several contexts in; recompute them in one vectorised pass.

        All contexts of one call share the new weight version (one version per update).
        """
        for batch in feedback.values():
            unknown = sorted(set(batch) - set(self.variant_keys))
            if unknown:
                raise ValueError(f"unknown arms {unknown}; known: {list(self.variant_keys)}")
        for context, batch in feedback.items():
            state = self._state(context)
            for key, stats in batch.items():
                i = self._index[key]
                state.posteriors[i] = state.posteriors[i].updated(stats)
        self._recompute(list(feedback))
        self.version += 1

    def set_posteriors(
        self,
        posteriors: ContextPosteriors,
        version: int | None = None,
    ) -> None:
        """Replace contexts' posteriors (e.g. totals loaded from SQL) and recompute them.

        With ``version`` the policy takes that version number (the stored one) instead of
        incrementing its own.
        """
        for context, row in posteriors.items():
            if len(row) != len(self.variant_keys):
                raise ValueError(
                    f"context {context!r} has {len(row)} posteriors for "
                    f"{len(self.variant_keys)} arms"
                )
            self._state(context).posteriors = list(row)
        self._recompute(list(posteriors))
        self.version = self.version + 1 if version is None else version

    def set_weights(
        self,
        context: str | None,
        weights: Sequence[float],
        p_best: Sequence[float] | None = None,
    ) -> None:
        """Put weights in force in a context as they are (e.g. a stored weight version)."""
        values = np.asarray(weights, dtype=np.float64)
        if values.shape != (len(self.variant_keys),) or abs(values.sum() - 1.0) > 1e-6:
            raise ValueError(f"weights must be {len(self.variant_keys)} shares summing to 1")
        state = self._state(context)
        state.weights = values
        state.p_best = values.copy() if p_best is None else np.asarray(p_best, dtype=np.float64)

    def _recompute(self, contexts: Sequence[str | None]) -> None:
        if not contexts:
            return
        rows = [self._state(c).posteriors for c in contexts]
        allocation = allocate_many(
            rows,
            draws=self.draws,
            rng=self._mc_rng,
            top_two=self.top_two,
            top_two_beta=self.top_two_beta,
            min_weight=self.min_weight,
            method=self.method,
        )
        arms = len(self.variant_keys)
        for i, context in enumerate(contexts):
            state = self._state(context)
            state.p_best = allocation.p_best[i]
            if self.burn_in_units and self.in_burn_in(context):
                state.weights = np.full(arms, 1.0 / arms)
            else:
                state.weights = allocation.weights[i]


def choose_arms(weights: FloatArray, u: FloatArray) -> npt.NDArray[np.int64]:
    """Arm indices for uniforms ``u`` by inverting the weights' CDF (last axis)."""
    cdf = np.cumsum(weights, axis=-1)
    if cdf.ndim == 1:
        index = np.searchsorted(cdf / cdf[-1], u, side="right")
    else:  # one row of weights per uniform
        index = (u[..., None] >= cdf / cdf[..., -1:]).sum(axis=-1)
    chosen: npt.NDArray[np.int64] = np.minimum(index, weights.shape[-1] - 1).astype(np.int64)
    return chosen
