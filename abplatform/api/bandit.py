"""Assignment in the API: the server's policy of an experiment, and a request's decision.

Serving never waits on SQL it does not need: a decision is drawn from memory (hash buckets,
or the bandit weights cached in the process); a sticky bandit unit's first decision is
stored in SQL (first writer wins) in a worker thread, and a unit this process has seen is
answered from memory. Bandit trials and rewards are counted in the buffered writer's
transactions (`BanditFeedback`); weight versions are published and picked up in the
background (`AssignmentPolicy.sync`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence

from fastapi import HTTPException
from sqlalchemy import Engine

from abplatform.assignment.base import AssignmentPolicy, MissingContext
from abplatform.assignment.engine import build_policy
from abplatform.bandit import BanditFeedback, PersistentThompsonPolicy, RewardRule
from abplatform.config.models import ExperimentConfig
from abplatform.domain import Decision


def build_server_policy(
    engine: Engine, experiment_id: int, config: ExperimentConfig, feedback: BanditFeedback | None
) -> AssignmentPolicy:
    """The server's policy of an experiment: hashing, or a bandit whose state is in SQL.

    A bandit's reward rule is registered with the writer (a hashed experiment's forgotten,
    e.g. a bandit re-created as a hashed test). Bandit weights are refreshed by `sync`
    only (never on the request path); each sticky unit's first decision and each
    per-request exposure count as one trial.
    """
    spec = config.bandit
    if spec is None:
        if feedback is not None:
            feedback.forget(experiment_id)
        return build_policy(config)
    policy = PersistentThompsonPolicy.from_config(
        engine, experiment_id, config, refresh_seconds=math.inf, count_trials=True
    )
    if feedback is not None:
        feedback.register(RewardRule.from_spec(experiment_id, spec))
    return policy


def missing_context(key: str, missing: MissingContext, loc: Sequence[str | int]) -> HTTPException:
    """The 422 naming ``<loc>.scene`` when a per-scene bandit gets no scene."""
    problem = {
        "type": "missing",
        "loc": [*loc, missing.key],
        "msg": f"experiment {key!r} is a per-{missing.key} bandit "
        f"(context: {missing.key}): send a {missing.key}",
    }
    return HTTPException(422, [problem])


async def settle(
    policy: AssignmentPolicy, unit_id: str, context: Mapping[str, str] | None, drawn: Decision
) -> Decision:
    """A sticky unit's decision in force: from memory if this process has seen the unit,
    else its stored first decision (SQL, in a worker thread; ``drawn`` stored if new)."""
    known = policy.known(unit_id, context)
    if known is not None:
        return known
    return await asyncio.to_thread(policy.settle, unit_id, context, drawn)
