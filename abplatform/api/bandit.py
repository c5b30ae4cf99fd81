"""Bandit experiments in the API: the server's Thompson policy, decisions, weight sync.

Serving never waits on SQL it does not need: a decision is drawn from the weights cached
in the process; a sticky unit's first decision is stored in SQL (first writer wins) in a
worker thread, and a unit this process has seen is answered from memory. Trials and
rewards are counted in the buffered writer's transactions (`BanditFeedback`); weight
versions are published and picked up in the background (`sync_weights`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from fastapi import HTTPException
from sqlalchemy import Engine

from abplatform.assignment.thompson import ThompsonDecision
from abplatform.config.models import ExperimentConfig
from abplatform.storage.bandit import (
    BanditFeedback,
    PersistentThompsonPolicy,
    RewardRule,
    WeightVersion,
)


def build_bandit_policy(
    engine: Engine, experiment_id: int, config: ExperimentConfig, feedback: BanditFeedback | None
) -> PersistentThompsonPolicy:
    """The server's policy of a bandit experiment; registers its reward rule with the writer.

    Weights are refreshed by `sync_weights` only (never on the request path); each sticky
    unit's first decision and each per-request exposure count as one trial.
    """
    policy = PersistentThompsonPolicy.from_config(
        engine, experiment_id, config, refresh_seconds=math.inf, count_trials=True
    )
    if feedback is not None:
        feedback.register(RewardRule.from_config(experiment_id, config))
    return policy


async def decide(
    policy: PersistentThompsonPolicy,
    key: str,
    unit_id: str,
    scene: str | None,
    loc: Sequence[str | int],
) -> ThompsonDecision:
    """A request's bandit decision (variant, propensity, weight version).

    Raises HTTPException 422 naming ``<loc>.scene`` when a per-scene bandit gets no scene.
    """
    try:
        context, drawn = policy.draw(None if scene is None else {"scene": scene})
    except ValueError:
        problem = {
            "type": "missing",
            "loc": [*loc, "scene"],
            "msg": f"experiment {key!r} is a per-scene bandit (context: scene): send a scene",
        }
        raise HTTPException(422, [problem]) from None
    if not policy.sticky:
        return drawn
    known = policy.known_decision(unit_id, context)
    if known is not None:
        return known
    return await asyncio.to_thread(policy.settle, unit_id, context, drawn)


def sync_weights(policy: PersistentThompsonPolicy) -> WeightVersion | None:
    """Background step (a worker thread): publish the weight version due, if any, and
    return the newest version when it differs from the one in force.

    Apply the result with `policy.apply_weights` on the event loop's thread, where
    decisions are drawn, so a decision never mixes two versions.
    """
    policy.publish_due()
    return policy.fetch_weights()
