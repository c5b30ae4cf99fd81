"""Offline evaluation of any strategy: a per-user time-ordered split and top-K ranking metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from abplatform.domain import InteractionLog, RecRequest
from abplatform.strategy import Strategy
from strategies.base import check_k

POSITIVE_EVENTS: tuple[str, ...] = ("click", "purchase")
"""Event types that count as a user wanting an item (targets of the offline evaluation)."""

EVAL_BATCH = 2048


@dataclass(frozen=True)
class HoldoutSet:
    """Held-out items per test user, as compressed rows (user i owns items[indptr[i]:indptr[i+1]]).

    Items are dense catalogue indices of the log the split was made from.
    """

    user_ids: npt.NDArray[np.str_]
    indptr: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def items_of(self, row: int) -> npt.NDArray[np.int64]:
        """The held-out item indices of test user number `row`."""
        return self.items[self.indptr[row] : self.indptr[row + 1]]

    def pairs(self) -> list[tuple[str, int]]:
        """Every (user id, item index) pair, users in order."""
        counts = np.diff(self.indptr)
        users = np.repeat(self.user_ids, counts)
        return list(zip(users.tolist(), self.items.tolist(), strict=True))


def subset_log(log: InteractionLog, keep: npt.NDArray[np.bool_]) -> InteractionLog:
    """The rows of `log` where `keep` is true (same catalogue and user features)."""
    return InteractionLog(
        catalog=log.catalog,
        user_ids=log.user_ids[keep],
        item_ids=log.item_ids[keep],
        event_types=log.event_types[keep],
        values=log.values[keep],
        timestamps=log.timestamps[keep],
        user_features=log.user_features,
    )


def item_indices(log: InteractionLog) -> npt.NDArray[np.int64]:
    """Each row's dense catalogue index, -1 for an item missing from the catalogue."""
    index = log.catalog.index()
    return np.fromiter(
        (index.get(item, -1) for item in log.item_ids.tolist()), dtype=np.int64, count=len(log)
    )


def time_split(
    log: InteractionLog,
    holdout_per_user: int = 1,
    *,
    user_fraction: float = 1.0,
    seed: int = 0,
) -> tuple[InteractionLog, HoldoutSet]:
    """Hold out each user's last new items; train on everything before them.

    Parameters
    ----------
    log
        The full history.
    holdout_per_user
        How many of a user's most recent *new* items (distinct items ordered by the user's
        first click or purchase of them) are held out.
    user_fraction
        Share of the eligible users to hold out for (chosen with `seed`); the others keep
        their whole history in the training log.
    seed
        Seed of the choice of users when `user_fraction` < 1.

    Returns
    -------
    train_log, test
        The training log (same catalogue) and the held-out items of each test user.

    Notes
    -----
    A user is eligible when at least one of their positive items (click or purchase, in the
    catalogue) was first met strictly before the held-out ones. Their cutoff is the first
    interaction time of the earliest held-out item; every row of theirs at or after it
    (any event type, including a purchase following the held-out click) leaves the training
    log, so nothing of the future leaks. Items tied with the cutoff are all held out, so a
    test user may have more than `holdout_per_user` items. Held-out items are never clicked
    or bought in the user's training rows (they are new to the user), which is what
    `exclude_seen` assumes.
    Other users' rows are not cut in time (this is leave-last-out per user, not a global
    temporal split).
    """
    keep, held_rows = new_item_rows(log, holdout_per_user, user_fraction=user_fraction, seed=seed)
    if held_rows.size == 0:
        empty = HoldoutSet(
            np.zeros(0, dtype=str), np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        )
        return log, empty
    users, codes = np.unique(log.user_ids[held_rows].astype(str), return_inverse=True)
    order = np.argsort(codes.reshape(-1), kind="stable")
    per_user = np.bincount(codes.reshape(-1), minlength=len(users))
    test = HoldoutSet(
        user_ids=users,
        indptr=np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64),
        items=item_indices(log)[held_rows[order]],
    )
    return subset_log(log, keep), test


def new_item_rows(
    log: InteractionLog, holdout_per_user: int = 1, *, user_fraction: float = 1.0, seed: int = 0
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """The rows `time_split` keeps for training (a mask) and the first row of every
    held-out (user, item) pair (indices, grouped by user in time order)."""
    if not isinstance(holdout_per_user, int) or holdout_per_user < 1:
        raise ValueError(f"holdout_per_user must be a positive integer (got {holdout_per_user!r})")
    if not 0.0 < user_fraction <= 1.0:
        raise ValueError(f"user_fraction must be in (0, 1] (got {user_fraction!r})")
    n_items = len(log.catalog)
    nothing = (np.ones(len(log), dtype=bool), np.zeros(0, dtype=np.int64))
    items = item_indices(log)
    positive = np.isin(log.event_types, POSITIVE_EVENTS) & (items >= 0)
    if not positive.any():
        return nothing
    users, user_codes = np.unique(log.user_ids.astype(str), return_inverse=True)
    rows = np.flatnonzero(positive)
    # First positive interaction of every (user, item) pair, in time order (row order on ties).
    order = rows[np.lexsort((rows, log.timestamps[rows]))]
    keys = user_codes[order].astype(np.int64) * n_items + items[order]
    _, first = np.unique(keys, return_index=True)
    first_rows = order[first]
    pair_user = user_codes[first_rows]
    pair_ts = log.timestamps[first_rows]
    # Pairs grouped by user, then by first-interaction time.
    by_user = np.lexsort((first_rows, pair_ts, pair_user))
    pair_user, pair_ts, pair_rows = pair_user[by_user], pair_ts[by_user], first_rows[by_user]
    counts = np.bincount(pair_user, minlength=len(users))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has_enough = counts > holdout_per_user
    cutoff = np.full(len(users), np.iinfo(np.int64).max, dtype=np.int64)
    cutoff[has_enough] = pair_ts[(starts + counts - holdout_per_user)[has_enough]]
    earliest = np.full(len(users), np.iinfo(np.int64).max, dtype=np.int64)
    earliest[counts > 0] = pair_ts[starts[counts > 0]]
    eligible = has_enough & (earliest < cutoff)
    if user_fraction < 1.0:
        candidates = np.flatnonzero(eligible)
        chosen = np.random.default_rng(seed).permutation(candidates)
        chosen = chosen[: round(user_fraction * candidates.size)]
        eligible = np.zeros(len(users), dtype=bool)
        eligible[chosen] = True
    if not eligible.any():
        return nothing
    test_pairs = eligible[pair_user] & (pair_ts >= cutoff[pair_user])
    keep: npt.NDArray[np.bool_] = ~(eligible[user_codes] & (log.timestamps >= cutoff[user_codes]))
    return keep, pair_rows[test_pairs].astype(np.int64)


def seen_items(
    train_log: InteractionLog,
    user_ids: npt.NDArray[np.str_],
    events: Sequence[str] | None = POSITIVE_EVENTS,
) -> list[npt.NDArray[np.int64]]:
    """Catalogue indices each of `user_ids` met in the training log (sorted).

    Only rows of the `events` types count (default: clicks and purchases); None counts
    every interaction type.
    """
    items = item_indices(train_log)
    known = items >= 0
    if events is not None:
        known &= np.isin(train_log.event_types, list(events))
    row_of = {user: i for i, user in enumerate(user_ids.tolist())}
    user_rows = np.fromiter(
        (row_of.get(user, -1) for user in train_log.user_ids[known].tolist()),
        dtype=np.int64,
        count=int(known.sum()),
    )
    mine = user_rows >= 0
    keys = np.unique(user_rows[mine] * len(train_log.catalog) + items[known][mine])
    owners = keys // len(train_log.catalog)
    bounds = np.searchsorted(owners, np.arange(len(user_ids) + 1))
    seen_items = keys % len(train_log.catalog)
    return [seen_items[bounds[i] : bounds[i + 1]] for i in range(len(user_ids))]


def rank_items(
    strategy: Strategy,
    user_ids: Sequence[str],
    k: int,
    *,
    seen: Sequence[npt.NDArray[np.int64]] | None = None,
    scene: str | None = "home_page",
    index: dict[str, int] | None = None,
) -> npt.NDArray[np.int64]:
    """Each user's top-`k` catalogue indices from `strategy` (-1 pads short slates).

    With `seen`, those items are dropped from each user's slate and the strategy is asked
    for `k + len(seen)` items, so the remaining top `k` are the best unseen ones.
    """
    check_k(k)
    catalog_index = index if index is not None else _strategy_catalog(strategy).index()
    n_items = len(catalog_index)
    n_users = len(user_ids)
    ranked = np.full((n_users, k), -1, dtype=np.int64)
    extra = np.array([len(s) for s in seen] if seen is not None else [0] * n_users, dtype=np.int64)
    need = np.minimum(k + extra, n_items)
    # Ask in a few slate sizes (powers of two) rather than one per user.
    buckets = np.minimum(2 ** np.ceil(np.log2(np.maximum(need, 1))).astype(np.int64), n_items)
    for size in np.unique(buckets).tolist():
        members = np.flatnonzero(buckets == size)
        for lo in range(0, members.size, EVAL_BATCH):
            chunk = members[lo : lo + EVAL_BATCH]
            requests = [RecRequest(user_ids[i], scene=scene) for i in chunk.tolist()]
            slates = strategy.recommend_batch(requests, int(size))
            for row, slate in zip(chunk.tolist(), slates, strict=True):
                got = np.fromiter(
                    (catalog_index[item] for item in slate.items),
                    dtype=np.int64,
                    count=len(slate.items),
                )
                if seen is not None and len(seen[row]):
                    got = got[~np.isin(got, seen[row])]
                got = got[:k]
                ranked[row, : got.size] = got
    return ranked


def _strategy_catalog(strategy: Strategy) -> Any:
    catalog = getattr(strategy, "catalog", None)
    if catalog is None:
        raise TypeError(f"strategy {strategy.kind!r} does not expose its fitted catalogue")
    return catalog


class RankingTally:
    """Sums behind the top-K metrics, added one block of test users at a time.

    With P the held-out (user, item) pairs, R_u user u's held-out items and top_u(K) the
    first K entries of u's ranked list (-1 entries are empty positions):

    - hit@K = |{(u, i) in P : i in top_u(K)}| / |P|; cold_hit@K the same over cold users'
      pairs; user_hit@K = share of users with a held-out item in top_u(K)
    - recall@K = mean_u |R_u ∩ top_u(K)| / |R_u|
    - ndcg@K = mean_u DCG_u / IDCG_u, DCG_u = sum over hit ranks r (1-based) of
      1 / log2(r + 1), IDCG_u = sum_{r=1}^{min(K, |R_u|)} 1 / log2(r + 1)
    - coverage@K = |union_u top_u(K)| / n_items
    """

    def __init__(self, ks: Sequence[int], n_items: int) -> None:
        self.ks = tuple(ks)
        self.n_items = n_items
        self.users = self.pairs = self.cold_pairs = 0
        self.pair_hits = dict.fromkeys(self.ks, 0)
        self.cold_hits = dict.fromkeys(self.ks, 0)
        self.user_hits = dict.fromkeys(self.ks, 0)
        self.recall = dict.fromkeys(self.ks, 0.0)
        self.ndcg = dict.fromkeys(self.ks, 0.0)
        self.shown = {k: np.zeros(n_items, dtype=bool) for k in self.ks}
        self._discount = 1.0 / np.log2(np.arange(2, max(self.ks) + 2, dtype=np.float64))
        self._ideal = np.cumsum(self._discount)

    def add(
        self,
        ranked: npt.NDArray[np.int64],
        test: HoldoutSet,
        cold: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """Count the ranked lists of `test`'s users (row i is test user i; `cold` marks
        the users without training history)."""
        n_users = len(test)
        if ranked.shape[0] != n_users:
            raise ValueError(f"ranked has {ranked.shape[0]} rows for {n_users} test users")
        width = ranked.shape[1]
        relevant = np.diff(test.indptr)
        owner = np.repeat(np.arange(n_users, dtype=np.int64), relevant)
        test_keys = owner * self.n_items + test.items
        ranked_keys = np.arange(n_users, dtype=np.int64)[:, None] * self.n_items + ranked
        hits = np.isin(ranked_keys, test_keys) & (ranked >= 0)
        cold = np.zeros(n_users, dtype=bool) if cold is None else cold
        self.users += n_users
        self.pairs += int(relevant.sum())
        self.cold_pairs += int(relevant[cold].sum())
        for k in self.ks:
            if k > width:
                raise ValueError(f"cut-off {k} exceeds the ranked lists' length {width}")
            top = hits[:, :k]
            per_user = top.sum(axis=1)
            self.pair_hits[k] += int(per_user.sum())
            self.cold_hits[k] += int(per_user[cold].sum())
            self.user_hits[k] += int((per_user > 0).sum())
            self.recall[k] += float((per_user / relevant).sum())
            dcg = (top * self._discount[:k]).sum(axis=1)
            self.ndcg[k] += float((dcg / self._ideal[np.minimum(relevant, k) - 1]).sum())
            listed = ranked[:, :k]
            self.shown[k][listed[listed >= 0]] = True

    def metrics(self, names: Sequence[str]) -> dict[str, float]:
        """The metrics `names` (of hit, cold_hit, user_hit, recall, ndcg, coverage) at every
        K, grouped by K; cold_hit@K only when there are cold users' pairs."""
        sums: dict[str, tuple[Mapping[int, float], int]] = {
            "hit": (self.pair_hits, self.pairs),
            "cold_hit": (self.cold_hits, self.cold_pairs),
            "user_hit": (self.user_hits, self.users),
            "recall": (self.recall, self.users),
            "ndcg": (self.ndcg, self.users),
        }
        out: dict[str, float] = {}
        for k in self.ks:
            for name in names:
                if name == "coverage":
                    out[f"coverage@{k}"] = float(self.shown[k].sum()) / self.n_items
                elif sums[name][1]:
                    out[f"{name}@{k}"] = sums[name][0][k] / sums[name][1]
        return out


def ranking_metrics(
    ranked: npt.NDArray[np.int64],
    test: HoldoutSet,
    n_items: int,
    ks: Sequence[int] = (10, 50, 100),
) -> dict[str, float]:
    """Recall@K, NDCG@K and catalogue coverage@K of ranked lists against held-out items.

    Parameters
    ----------
    ranked
        (users, max K) catalogue indices in rank order, -1 for an empty position; row i
        belongs to test user i.
    test
        The held-out items of each test user.
    n_items
        Catalogue size (the denominator of coverage).
    ks
        Cut-offs; each must be at most ``ranked.shape[1]``.

    Returns
    -------
    dict
        ``recall@K``, ``ndcg@K``, ``coverage@K``, ``user_hit@K`` (share of users with a held-out
        item in their top K) for every K, and ``users`` (test users).

    Notes
    -----
    With R_u the held-out items of user u and hits_u(K) those in the top K:

    - recall@K = mean_u |hits_u(K)| / |R_u|
    - NDCG@K = mean_u DCG_u / IDCG_u, DCG_u = sum over hit ranks r (1-based) of
      1 / log2(r + 1), IDCG_u = sum_{r=1}^{min(K, |R_u|)} 1 / log2(r + 1)
    - coverage@K = |union_u top K of u| / n_items
    """
    n_users = len(test)
    if ranked.shape[0] != n_users:
        raise ValueError(f"ranked has {ranked.shape[0]} rows for {n_users} test users")
    out: dict[str, float] = {"users": float(n_users)}
    if n_users == 0:
        for k in ks:
            out[f"recall@{k}"] = out[f"ndcg@{k}"] = out[f"coverage@{k}"] = float("nan")
            out[f"user_hit@{k}"] = float("nan")
        return out
    tally = RankingTally(ks, n_items)
    tally.add(ranked, test)
    out.update(tally.metrics(("recall", "ndcg", "coverage", "user_hit")))
    return out


def evaluate(
    strategy: Strategy,
    train_log: InteractionLog,
    test: HoldoutSet,
    ks: Sequence[int] = (10, 50, 100),
    exclude_seen: bool = True,
    *,
    fit: bool = True,
    scene: str | None = "home_page",
) -> dict[str, float]:
    """Fit `strategy` on `train_log` and score its slates against the held-out items.

    Parameters
    ----------
    strategy
        Any registered strategy (it only needs `fit`, `recommend_batch` and its catalogue).
    train_log
        The training part of `time_split`.
    test
        The held-out part of `time_split` (indices into `train_log`'s catalogue).
    ks
        Cut-offs of the metrics.
    exclude_seen
        Drop items the user clicked or bought in `train_log` before cutting at K (held-out
        items are new to the user, so they are never dropped).
    fit
        False when `strategy` is already fitted on `train_log`.
    scene
        Scene of the evaluation requests.

    Returns
    -------
    dict
        See `ranking_metrics`.
    """
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    for k in ks:
        check_k(k)
    if fit:
        strategy.fit(train_log)
    n_items = len(train_log.catalog)
    seen = seen_items(train_log, test.user_ids) if exclude_seen else None
    ranked = rank_items(
        strategy,
        test.user_ids.tolist(),
        min(max(ks), n_items),
        seen=seen,
        scene=scene,
        index=train_log.catalog.index(),
    )
    if ranked.shape[1] < max(ks):
        pad = np.full((ranked.shape[0], max(ks) - ranked.shape[1]), -1, dtype=np.int64)
        ranked = np.concatenate([ranked, pad], axis=1)
    metrics = ranking_metrics(ranked, test, n_items, ks)
    metrics.update(slate_quality(ranked[:, : min(ks)], train_log, min(ks)))
    return metrics


DIVERSITY_SAMPLE = 2_000  # users whose top-K lists are used for intra-list diversity


class SlateQuality:
    """Intra-list diversity@K and novelty@K (as in `reports.ranking`), added in blocks.

    Diversity: mean pairwise (1 - cosine) of catalogue-feature vectors within a list, over
    the first `DIVERSITY_SAMPLE` lists. Novelty: mean -log2 of a listed item's add-one
    smoothed share of the training interactions.
    """

    def __init__(self, train_log: InteractionLog, k: int) -> None:
        from strategies.features import feature_vectors

        n_items = len(train_log.catalog)
        known = item_indices(train_log)
        counts = np.bincount(known[known >= 0], minlength=n_items)
        self.k = k
        self._surprise = -np.log2((counts + 1.0) / (counts.sum() + n_items))
        self._vectors = feature_vectors(train_log.catalog)
        self._novelty = 0.0
        self._listed = 0
        self._lists = 0
        self._diversity: list[float] = []

    def add(self, ranked: npt.NDArray[np.int64]) -> None:
        """Count ranked lists (their first `k` entries; -1 entries are empty positions)."""
        top = ranked[:, : self.k]
        shown = top[top >= 0]
        self._novelty += float(self._surprise[shown].sum())
        self._listed += int(shown.size)
        for row in top[: max(DIVERSITY_SAMPLE - self._lists, 0)]:
            items = row[row >= 0]
            if items.size < 2:
                continue
            v = self._vectors[items]
            similarity = v @ v.T
            n = items.size
            self._diversity.append(1.0 - (similarity.sum() - np.trace(similarity)) / (n * (n - 1)))
        self._lists += top.shape[0]

    def metrics(self) -> dict[str, float]:
        """``diversity@k`` and ``novelty@k`` (NaN without a list of two items / any item)."""
        diversity = float(np.mean(self._diversity)) if self._diversity else float("nan")
        novelty = self._novelty / self._listed if self._listed else float("nan")
        return {f"diversity@{self.k}": diversity, f"novelty@{self.k}": novelty}


def slate_quality(
    ranked: npt.NDArray[np.int64], train_log: InteractionLog, k: int
) -> dict[str, float]:
    """Intra-list diversity@K and novelty@K of the ranked lists (as in `reports.ranking`).

    See `SlateQuality`.
    """
    quality = SlateQuality(train_log, k)
    quality.add(ranked)
    return quality.metrics()
