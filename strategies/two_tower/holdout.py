"""The two-tower's validation holdouts: a seeded random share of pairs, or the latest rows."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from abplatform.domain import InteractionLog
from strategies.evaluation import POSITIVE_EVENTS, HoldoutSet, item_indices, subset_log


def random_holdout(
    history: InteractionLog, fraction: float, seed: int
) -> tuple[InteractionLog, HoldoutSet]:
    """Hold out a seeded random `fraction` of the distinct positive (user, item) pairs.

    Every row of a held-out pair (any event type) leaves the training log, so a held-out
    item is new to its user in training; users keep their other rows.
    """
    items = item_indices(history)
    positive = np.isin(history.event_types, POSITIVE_EVENTS) & (items >= 0)
    users, user_codes = np.unique(history.user_ids.astype(str), return_inverse=True)
    width = max(len(history.catalog), 1)
    keys = user_codes.astype(np.int64).reshape(-1) * width + np.maximum(items, 0)
    pairs = np.unique(keys[positive])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(pairs)[: round(fraction * pairs.size)])
    held_rows = np.isin(keys, chosen) & (items >= 0)
    return subset_log(history, ~held_rows), pairs_holdout(chosen, users, width)


def time_holdout(history: InteractionLog, fraction: float) -> tuple[InteractionLog, HoldoutSet]:
    """Hold out the latest `fraction` of the rows by time (all rows at or after the cut).

    The held-out pairs are each user's positive items after the cut that the user has no
    positive row for before it; users first seen after the cut are held out whole.
    """
    if len(history) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return history, HoldoutSet(np.zeros(0, dtype=str), np.zeros(1, dtype=np.int64), empty)
    ordered = np.sort(history.timestamps)
    n_held = max(round(fraction * len(ordered)), 1)
    after = history.timestamps >= ordered[len(ordered) - n_held]
    items = item_indices(history)
    positive = np.isin(history.event_types, POSITIVE_EVENTS) & (items >= 0)
    users, user_codes = np.unique(history.user_ids.astype(str), return_inverse=True)
    width = max(len(history.catalog), 1)
    keys = user_codes.astype(np.int64).reshape(-1) * width + np.maximum(items, 0)
    before = np.unique(keys[positive & ~after])
    pairs = np.setdiff1d(np.unique(keys[positive & after]), before)
    return subset_log(history, ~after), pairs_holdout(pairs, users, width)


def pairs_holdout(
    pairs: npt.NDArray[np.int64], users: npt.NDArray[np.str_], width: int
) -> HoldoutSet:
    """Sorted (user code * width + item index) pair keys as the held-out items of `users`."""
    counts = np.bincount(pairs // width, minlength=users.size)
    has = counts > 0
    indptr = np.concatenate([[0], np.cumsum(counts[has])]).astype(np.int64)
    return HoldoutSet(users[has].astype(str), indptr, (pairs % width).astype(np.int64))


def held_users(held: HoldoutSet, keep: npt.NDArray[np.bool_]) -> HoldoutSet:
    """The held-out items of the users where `keep` is true."""
    counts = np.diff(held.indptr)
    rows = np.repeat(keep, counts)
    indptr = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
    return HoldoutSet(held.user_ids[keep], indptr, held.items[rows])
