"""The one merge of offline features (history at a cut-off) and online features (events since)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from abplatform.domain import (
    InteractionLog,
    OnlineFeatures,
    RecentInteraction,
    RecRequest,
    UnitFeatures,
)

POSITIVE_TYPES: tuple[str, ...] = ("click", "purchase")
"""Event types that are steps of a unit's positive sequence (as the two-tower trains on)."""
VIEW_TYPES: tuple[str, ...] = ("view", "click")
"""Event types that say the unit looked at an item (its last viewed item)."""
MAX_POSITIVE_ITEMS = 50
"""Positive items kept per unit, newest first (more than any model's history length)."""


@dataclass(frozen=True)
class OfflineFeatures:
    """Each user's features in a history up to `cutoff` (Unix seconds), and item attributes.

    Built once per served model (`from_history`); a pure value, so the API and the
    simulator merge with the same state. Users are sorted; per-user arrays are compressed
    rows (`indptr`).
    """

    cutoff: int
    item_ids: npt.NDArray[np.str_]
    item_categories: npt.NDArray[np.int64]  # category code of each catalogue item
    categories: tuple[str, ...]  # sorted names: code i is categories[i]
    users: dict[str, int]
    positive_indptr: npt.NDArray[np.int64]
    positive_items: npt.NDArray[np.int64]  # catalogue indices, newest first per user
    category_indptr: npt.NDArray[np.int64]
    category_codes: npt.NDArray[np.int64]
    category_counts: npt.NDArray[np.int64]
    last_viewed: npt.NDArray[np.int64]  # catalogue index, -1 for none
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_index: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_history(cls, log: InteractionLog, cutoff: int | None = None) -> OfflineFeatures:
        """The features of `log`'s interactions at or before `cutoff` (default: its end)."""
        end = log.end_timestamp if cutoff is None else int(cutoff)
        catalog = log.catalog
        index = catalog.index()
        categories, codes = np.unique(catalog.categories.astype(str), return_inverse=True)
        items = np.fromiter(
            (index.get(i, -1) for i in log.item_ids.tolist()), dtype=np.int64, count=len(log)
        )
        keep = np.flatnonzero((items >= 0) & (log.timestamps <= end))
        user_names, user_codes = np.unique(log.user_ids[keep].astype(str), return_inverse=True)
        # Time order per user, ties by position in the log (as positive_sequences sorts).
        order = np.lexsort((keep, log.timestamps[keep], user_codes))
        rows, owners = keep[order], user_codes[order].astype(np.int64)
        n_users = len(user_names)
        types = log.event_types[rows]
        positive_idx, positive_ptr = _positive_rows(items[rows], owners, types, n_users)
        item_codes = codes.astype(np.int64)[items[rows]]
        n_categories = max(len(categories), 1)
        pair = np.unique(owners * n_categories + item_codes, return_counts=True)
        pair_owner = pair[0] // n_categories
        viewed = np.isin(types, VIEW_TYPES)
        last_viewed = np.full(n_users, -1, dtype=np.int64)
        last_viewed[owners[viewed]] = items[rows][viewed]  # later rows overwrite earlier ones
        return cls(
            cutoff=end,
            item_ids=catalog.item_ids.astype(str),
            item_categories=codes.astype(np.int64),
            categories=tuple(str(c) for c in categories.tolist()),
            users={str(u): i for i, u in enumerate(user_names.tolist())},
            positive_indptr=positive_ptr,
            positive_items=positive_idx,
            category_indptr=np.searchsorted(pair_owner, np.arange(n_users + 1)).astype(np.int64),
            category_codes=(pair[0] % n_categories).astype(np.int64),
            category_counts=pair[1].astype(np.int64),
            last_viewed=last_viewed,
            profiles={str(k): dict(v) for k, v in log.user_features.items()},
            item_index=index,
        )

    def positives(self, unit_id: str) -> tuple[str, ...]:
        """The unit's positive items at the cut-off, newest first (at most the kept number)."""
        row = self.users.get(unit_id)
        if row is None:
            return ()
        picked = self.positive_items[self.positive_indptr[row] : self.positive_indptr[row + 1]]
        return tuple(self.item_ids[picked].tolist())

    def category_counts_of(self, unit_id: str) -> dict[int, int]:
        """{category code: interactions} of the unit at the cut-off."""
        row = self.users.get(unit_id)
        if row is None:
            return {}
        lo, hi = self.category_indptr[row], self.category_indptr[row + 1]
        return dict(
            zip(
                self.category_codes[lo:hi].tolist(),
                self.category_counts[lo:hi].tolist(),
                strict=True,
            )
        )

    def last_viewed_of(self, unit_id: str) -> str | None:
        """The unit's last viewed (or clicked) item at the cut-off."""
        row = self.users.get(unit_id)
        if row is None or self.last_viewed[row] < 0:
            return None
        return str(self.item_ids[self.last_viewed[row]])


def _positive_rows(
    items: npt.NDArray[np.int64],
    owners: npt.NDArray[np.int64],
    types: npt.NDArray[np.str_],
    n_users: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each user's positive steps (runs on one item collapsed), newest first, the latest
    `MAX_POSITIVE_ITEMS` kept: (items, indptr) in user order."""
    positive = np.isin(types, POSITIVE_TYPES)
    step_items, step_owners = items[positive], owners[positive]
    repeat = np.zeros(step_items.size, dtype=bool)
    repeat[1:] = (step_owners[1:] == step_owners[:-1]) & (step_items[1:] == step_items[:-1])
    step_items, step_owners = step_items[~repeat], step_owners[~repeat]
    counts = np.bincount(step_owners, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)])
    kept = np.minimum(counts, MAX_POSITIVE_ITEMS)
    indptr = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    out = np.empty(int(indptr[-1]), dtype=np.int64)
    for user in np.flatnonzero(kept).tolist():
        lo, hi = int(starts[user]), int(starts[user + 1])
        out[indptr[user] : indptr[user + 1]] = step_items[lo:hi][::-1][: kept[user]]
    return out, indptr


def since_cutoff(online: OnlineFeatures, cutoff: int) -> tuple[RecentInteraction, ...]:
    """The online interactions after `cutoff`, newest first (earlier ones are in the history)."""
    return tuple(event for event in online.recent if event.ts > cutoff)


def merge_features(
    offline: OfflineFeatures, online: OnlineFeatures | None, request: RecRequest
) -> RecRequest:
    """The request a strategy sees: with the unit's merged features, or unchanged.

    Without online interactions after the cut-off the request is returned as it is, so the
    slate is exactly the one the model serves from what it learned. Otherwise:

    - positive items: the online clicks and purchases (newest first) before the offline
      sequence, a run of events on one item counted once, also across the two;
    - favourite category: the category with most interactions offline plus online (ties:
      the first name in sorted order, as `popularity` breaks them);
    - last viewed: the newest online view or click, else the offline one;
    - cart: the store's live cart; purchased: the online purchases.
    """
    if online is None:
        return request
    fresh = since_cutoff(online, offline.cutoff)
    if not fresh:
        return request
    unit = request.unit_id
    online_positives = _collapse([e.item_id for e in fresh if e.type in POSITIVE_TYPES])
    offline_positives = offline.positives(unit)
    if online_positives and offline_positives and offline_positives[0] == online_positives[-1]:
        offline_positives = offline_positives[1:]  # one run of events on one item: one step
    positives = [*online_positives, *offline_positives][:MAX_POSITIVE_ITEMS]
    counts = offline.category_counts_of(unit)
    for event in fresh:
        position = offline.item_index.get(event.item_id)
        if position is not None:
            code = int(offline.item_categories[position])
            counts[code] = counts.get(code, 0) + 1
    favourite = min(counts, key=lambda c: (-counts[c], c)) if counts else None
    viewed = next((e.item_id for e in fresh if e.type in VIEW_TYPES), None)
    purchased = tuple(dict.fromkeys(e.item_id for e in fresh if e.type == "purchase"))
    features = UnitFeatures(
        version=online.version,
        positive_items=tuple(positives),
        favourite_category=None if favourite is None else offline.categories[favourite],
        cart=online.cart,
        last_viewed=viewed if viewed is not None else offline.last_viewed_of(unit),
        purchased=purchased,
        online_positives=min(len(online_positives), MAX_POSITIVE_ITEMS),
        profile=offline.profiles.get(unit, {}),
    )
    return replace(request, features=features)


def _collapse(items: Sequence[str]) -> list[str]:
    """Consecutive repeats of one item counted once."""
    out: list[str] = []
    for item in items:
        if not out or out[-1] != item:
            out.append(item)
    return out


def online_features_of(strategy: object) -> frozenset[str]:
    """The online features a (fitted) strategy declares it uses; none if it declares none."""
    declared = getattr(strategy, "online_features", None)
    if declared is None:
        return frozenset()
    used = declared() if callable(declared) else declared
    return frozenset(used)
