"""Bandit experiments' state: the only reader and writer of the ``bandit_*`` tables.

`store` keeps one experiment's posterior counts, weight versions and sticky decisions;
`policy` serves decisions from memory over that state; `rewards` and `trials` turn events
into rewards exactly once; `tables` holds the whole-experiment reads, writes and deletes.
"""

from abplatform.bandit.policy import PersistentThompsonPolicy
from abplatform.bandit.rewards import EventFacts, ExposureFacts, FeedbackResult, RewardRule
from abplatform.bandit.store import BanditStore
from abplatform.bandit.tables import (
    NO_CONTEXT,
    ArmTotals,
    ArmWeight,
    StickyDecisions,
    WeightHistory,
    WeightVersion,
    arm_totals,
    delete_bandit_rows,
    latest_version,
    lowest_weights,
    policy_context,
    stored_context,
    weight_rows,
    write_simulated_run,
    write_sticky_decisions,
)
from abplatform.bandit.trials import BanditFeedback, apply_bandit_feedback

__all__ = [
    "NO_CONTEXT",
    "ArmTotals",
    "ArmWeight",
    "BanditFeedback",
    "BanditStore",
    "EventFacts",
    "ExposureFacts",
    "FeedbackResult",
    "PersistentThompsonPolicy",
    "RewardRule",
    "StickyDecisions",
    "WeightHistory",
    "WeightVersion",
    "apply_bandit_feedback",
    "arm_totals",
    "delete_bandit_rows",
    "latest_version",
    "lowest_weights",
    "policy_context",
    "stored_context",
    "weight_rows",
    "write_simulated_run",
    "write_sticky_decisions",
]
