"""Offline comparison of an experiment's strategies on held-out interactions (`evaluate`).

Usage without the command line::

    from strategies.offline import RandomSplit, evaluate_offline

    report = evaluate_offline(config, engine, split=RandomSplit(0.2, seed=42))
    report.to_dict()["variants"]["treatment"]["hit@100"]

`source` may also be an `InteractionLog` already in memory (no database needed), and the
split a `TimeSplit`, a `TestFile` (an interactions CSV, checked like `ingest`) or a
`HeldOutLog` (held-out interactions in memory).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine

from abplatform.config.models import ExperimentConfig
from abplatform.domain import InteractionLog
from abplatform.errors import AbplatformError
from abplatform.progress import Progress, no_progress
from abplatform.registry import build_strategy
from abplatform.storage.history import load_history
from abplatform.strategy import Strategy
from strategies.base import check_k
from strategies.evaluation import HoldoutSet, item_indices, rank_items, seen_items, subset_log
from strategies.training import strategy_plan

# Progress stages: "load", "<strategy>: fit", "<strategy>: rank".

DEFAULT_KS: tuple[int, ...] = (10, 50, 100)
USER_CHUNK = 4096  # test users ranked at a time: bounds memory at USER_CHUNK x max(K) indices


@dataclass(frozen=True)
class RandomSplit:
    """Hold out a random share of the distinct (user, item) pairs, each with all its rows.

    Splitting pairs rather than rows keeps a user's repeated interactions with one item on
    one side, so a held-out item is never also a training item of that user.
    """

    test_fraction: float = 0.2
    seed: int = 42
    kind: Literal["random"] = field(default="random", init=False)


@dataclass(frozen=True)
class TimeSplit:
    """Hold out the latest `test_fraction` of the interactions (one global cut-off time).

    Rows at the cut-off second are all held out, so the held-out share may exceed the
    fraction slightly. Users first seen after the cut-off are cold users.
    """

    test_fraction: float = 0.2
    kind: Literal["time"] = field(default="time", init=False)


@dataclass(frozen=True)
class TestFile:
    """Held-out interactions in a CSV of the `ingest --interactions` format; the whole
    stored history is the training data."""

    path: Path
    kind: Literal["file"] = field(default="file", init=False)


@dataclass(frozen=True)
class HeldOutLog:
    """Held-out interactions already in memory; the whole history is the training data."""

    log: InteractionLog
    name: str = "held-out log"
    kind: Literal["log"] = field(default="log", init=False)


Split = RandomSplit | TimeSplit | TestFile | HeldOutLog


@dataclass(frozen=True)
class StrategyScore:
    """One strategy's metrics on the held-out interactions, with its fit and serving time."""

    name: str
    role: Literal["variant", "baseline"]
    kind: str
    metrics: dict[str, float]
    train_seconds: float
    serve_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able metrics (NaN becomes None) plus kind, role and timings."""
        out: dict[str, Any] = {"kind": self.kind, "role": self.role}
        out.update({k: None if math.isnan(v) else v for k, v in self.metrics.items()})
        out["train_seconds"] = round(self.train_seconds, 3)
        out["serve_seconds"] = round(self.serve_seconds, 3)
        return out


@dataclass(frozen=True)
class OfflineReport:
    """Every strategy's offline metrics on one split, and what the split held out."""

    experiment: str
    catalog: str
    ks: tuple[int, ...]
    include_seen: bool
    split: dict[str, Any]
    results: list[StrategyScore]
    skipped: list[str] = field(default_factory=list)

    def result(self, name: str) -> StrategyScore:
        """The score of a variant key or baseline name."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def metric_names(self) -> list[str]:
        """hit@K, recall@K, ndcg@K, coverage@K for every K, in that order."""
        return [f"{m}@{k}" for k in self.ks for m in ("hit", "recall", "ndcg", "coverage")]

    def to_dict(self) -> dict[str, Any]:
        """``{"experiment", "catalog", "ks", "include_seen", "variants": {name: {...}},
        "split": {...}, "skipped"}``."""
        return {
            "experiment": self.experiment,
            "catalog": self.catalog,
            "ks": list(self.ks),
            "include_seen": self.include_seen,
            "variants": {r.name: r.to_dict() for r in self.results},
            "split": self.split,
            "skipped": self.skipped,
        }


def evaluate_offline(
    config: ExperimentConfig,
    source: Engine | Connection | InteractionLog,
    *,
    split: Split | None = None,
    catalog: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    include_seen: bool = False,
    baselines: bool = True,
    seed: int = 42,
    target_events: Sequence[str] | None = None,
    progress: Progress = no_progress,
) -> OfflineReport:
    """Fit every variant's strategy on the training part and score it on held-out interactions.

    Parameters
    ----------
    config
        The experiment: every variant with a strategy is evaluated (as `train` fits it).
    source
        The database holding the catalogue's history, or the history itself.
    split
        How to get held-out interactions: {`RandomSplit`, `TimeSplit`, `TestFile`,
        `HeldOutLog`}; default ``RandomSplit(0.2, seed)``.
    catalog
        The catalogue to read from the database (default: the config's `catalog_name`).
    ks
        Cut-offs of the metrics.
    include_seen
        Keep items the user interacted with in the training part in the top-K (the TFRS
        tutorial's protocol). By default they are removed from each top-K, and held-out
        pairs whose item the user already met in training are dropped (they could never be
        hit); the count is ``split["seen_pairs_dropped"]``.
    baselines
        Also evaluate `popularity` and `random` with default parameters
        (``baseline:popularity``, ``baseline:random``).
    seed
        Seed of every strategy (and of a default random split).
    target_events
        Interaction types whose held-out rows are targets (default: every type).
    progress
        Called as ``progress(stage, done, total)``.

    Returns
    -------
    OfflineReport
        Per strategy ``hit@K``, ``recall@K``, ``ndcg@K``, ``coverage@K``, ``cold_hit@K``
        (hit@K over cold users' pairs), ``users``, and fit and serving seconds.

    Notes
    -----
    With P the held-out (user, item) pairs, R_u user u's held-out items, top_u(K) the first K
    items of u's slate (after removing seen items unless `include_seen`), and n the number
    of catalogue items:

    - hit@K = |{(u, i) in P : i in top_u(K)}| / |P| (TFRS's factorized top-K accuracy)
    - recall@K = mean_u |R_u ∩ top_u(K)| / |R_u|
    - ndcg@K = mean_u DCG_u / IDCG_u, DCG_u = sum over hit ranks r (1-based) of
      1 / log2(r + 1), IDCG_u = sum_{r=1}^{min(K, |R_u|)} 1 / log2(r + 1)
    - coverage@K = |union_u top_u(K)| / n

    Cold users (no training interaction) are served by each strategy's unknown-user path
    and counted like everyone else.
    """
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    for k in ks:
        check_k(k)
    ks = tuple(sorted(set(int(k) for k in ks)))
    chosen = catalog or config.catalog_name
    split = split if split is not None else RandomSplit(seed=seed)
    progress("load", 0, 1)
    history = _history(source, chosen)
    progress("load", 1, 1)
    if len(history.catalog) == 0:
        raise AbplatformError(
            f"catalogue {chosen!r} has no items",
            hint="ingest --items (and --interactions) into it first, or name another --catalog",
        )
    train_log, test_log, details = split_history(history, split, chosen)
    targets = held_out_targets(train_log, test_log, include_seen, target_events)
    details.update(targets.details)
    if len(targets.test) == 0:
        raise AbplatformError(
            f"no held-out interaction to evaluate on ({details})",
            hint="use a larger --test-fraction, another split, or check --events",
        )
    plan, skipped = strategy_plan(config, baselines=baselines)
    results = []
    for name, role, kind, params in plan:
        strategy = build_strategy(kind, params, seed=seed)
        progress(f"{name}: fit", 0, 1)
        clock = time.perf_counter()
        strategy.fit(train_log)
        train_seconds = time.perf_counter() - clock
        progress(f"{name}: fit", 1, 1)
        metrics, serve_seconds = score_strategy(
            strategy,
            train_log,
            targets,
            ks,
            include_seen=include_seen,
            progress=_stage(progress, f"{name}: rank"),
        )
        results.append(StrategyScore(name, role, kind, metrics, train_seconds, serve_seconds))
    return OfflineReport(
        experiment=config.key,
        catalog=chosen,
        ks=ks,
        include_seen=include_seen,
        split=details,
        results=results,
        skipped=skipped,
    )


def _stage(progress: Progress, stage: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        progress(stage, done, total)

    return report


def _history(source: Engine | Connection | InteractionLog, catalog: str) -> InteractionLog:
    if isinstance(source, InteractionLog):
        return source
    if isinstance(source, Connection):
        return load_history(source, catalog)
    with source.connect() as conn:
        return load_history(conn, catalog)


# Splitting.


def split_history(
    history: InteractionLog, split: Split, catalog: str = "the catalogue"
) -> tuple[InteractionLog, InteractionLog, dict[str, Any]]:
    """(training log, held-out log, description of the split) of `history`."""
    if isinstance(split, TestFile | HeldOutLog):
        if len(history) == 0:
            raise AbplatformError(
                f"catalogue {catalog!r} has no interaction history to train on",
                hint="ingest --interactions first",
            )
        if isinstance(split, TestFile):
            test = _read_test_file(split.path, history, catalog)
            details: dict[str, Any] = {"kind": "file", "test_file": str(split.path)}
        else:
            test = split.log
            details = {"kind": "log", "test_log": split.name}
        details.update(train_interactions=len(history), test_interactions=len(test))
        return history, test, details
    if not 0.0 < split.test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1) (got {split.test_fraction!r})")
    if len(history) < 2:
        raise AbplatformError(
            f"catalogue {catalog!r} has {len(history)} interaction(s): too few to split",
            hint="ingest --interactions first, or pass --test FILE",
        )
    if isinstance(split, RandomSplit):
        held = _random_pairs(history, split.test_fraction, split.seed)
        details = {"kind": "random", "test_fraction": split.test_fraction, "seed": split.seed}
    else:
        held, cutoff = _after_cutoff(history, split.test_fraction)
        details = {
            "kind": "time",
            "test_fraction": split.test_fraction,
            "cutoff": str(np.datetime64(cutoff, "s")) + "Z",
        }
    if held.all() or not held.any():
        raise AbplatformError(
            f"the {details['kind']} split of {len(history)} interactions leaves "
            f"{'no training' if held.all() else 'no held-out'} data",
            hint="change --test-fraction (a time split needs more than one distinct timestamp)",
        )
    train, test = subset_log(history, ~held), subset_log(history, held)
    details.update(train_interactions=len(train), test_interactions=len(test))
    return train, test, details


def _random_pairs(history: InteractionLog, fraction: float, seed: int) -> npt.NDArray[np.bool_]:
    """Rows whose (user, item) pair is among a seeded random `fraction` of the distinct pairs."""
    _, user_codes = np.unique(history.user_ids, return_inverse=True)
    items, item_codes = np.unique(history.item_ids, return_inverse=True)
    keys = user_codes.astype(np.int64) * len(items) + item_codes
    pairs, pair_of_row = np.unique(keys, return_inverse=True)
    n_test = round(fraction * len(pairs))
    chosen = np.zeros(len(pairs), dtype=bool)
    chosen[np.random.default_rng(seed).permutation(len(pairs))[:n_test]] = True
    held: npt.NDArray[np.bool_] = chosen[pair_of_row.reshape(-1)]
    return held


def _after_cutoff(history: InteractionLog, fraction: float) -> tuple[npt.NDArray[np.bool_], int]:
    """Rows at or after the time that leaves `fraction` of the rows after it, and that time."""
    ordered = np.sort(history.timestamps)
    n_test = max(round(fraction * len(ordered)), 1)
    cutoff = int(ordered[len(ordered) - n_test])
    held: npt.NDArray[np.bool_] = history.timestamps >= cutoff
    return held, cutoff


def _read_test_file(path: Path, history: InteractionLog, catalog: str) -> InteractionLog:
    from abplatform.catalog_ingest import read_interactions

    rows = read_interactions(path, history.catalog.item_ids.tolist(), f"catalogue {catalog!r}")
    return InteractionLog(
        catalog=history.catalog,
        user_ids=rows.user_ids,
        item_ids=rows.item_ids,
        event_types=rows.types,
        values=rows.values,
        timestamps=rows.timestamps,
        user_features=history.user_features,
    )


# Targets and scoring.


@dataclass(frozen=True)
class Targets:
    """Held-out pairs per test user, which test users are cold, what was seen in training."""

    test: HoldoutSet
    cold: npt.NDArray[np.bool_]  # per test user: no interaction in the training log
    seen: list[npt.NDArray[np.int64]]  # per test user: catalogue indices met in training
    details: dict[str, Any]


def held_out_targets(
    train_log: InteractionLog,
    test_log: InteractionLog,
    include_seen: bool,
    target_events: Sequence[str] | None = None,
) -> Targets:
    """Distinct held-out (user, item) pairs per user, dropping seen pairs unless `include_seen`.

    Rows of items missing from the catalogue or of other types than `target_events` (None:
    all) are not targets.
    """
    n_items = len(train_log.catalog)
    items = item_indices(test_log)
    usable = items >= 0
    if target_events is not None:
        usable &= np.isin(test_log.event_types, list(target_events))
    users, user_codes = np.unique(test_log.user_ids[usable], return_inverse=True)
    keys = np.unique(user_codes.reshape(-1).astype(np.int64) * n_items + items[usable])
    owners, pair_items = keys // max(n_items, 1), keys % max(n_items, 1)
    seen_all = seen_items(train_log, users, events=None)
    dropped = 0
    if not include_seen and len(keys):
        bounds = np.searchsorted(owners, np.arange(len(users) + 1))
        keep = np.ones(len(keys), dtype=bool)
        for row in range(len(users)):
            lo, hi = bounds[row], bounds[row + 1]
            if len(seen_all[row]) and hi > lo:
                keep[lo:hi] = ~np.isin(pair_items[lo:hi], seen_all[row])
        dropped = int((~keep).sum())
        owners, pair_items = owners[keep], pair_items[keep]
    present, counts = np.unique(owners, return_counts=True)
    test = HoldoutSet(
        user_ids=users[present].astype(str),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=pair_items.astype(np.int64),
    )
    trained_users = np.unique(train_log.user_ids)
    cold = ~np.isin(test.user_ids, trained_users)
    details = {
        "target_events": list(target_events) if target_events is not None else "all",
        "test_pairs": len(test.items),
        "test_users": len(test),
        "cold_users": int(cold.sum()),
        "cold_pairs": int(np.diff(test.indptr)[cold].sum()),
        "seen_pairs_dropped": dropped,
        "catalog_items": n_items,
    }
    return Targets(test, cold, [seen_all[i] for i in present.tolist()], details)


def score_strategy(
    strategy: Strategy,
    train_log: InteractionLog,
    targets: Targets,
    ks: Sequence[int],
    *,
    include_seen: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], float]:
    """Metrics of a fitted strategy on the targets (see `evaluate_offline`) and serving seconds."""
    test, n_items = targets.test, len(train_log.catalog)
    width = min(max(ks), n_items)
    index = train_log.catalog.index()
    n_users = len(test)
    pair_hits = {k: 0 for k in ks}
    cold_hits = {k: 0 for k in ks}
    recall_sum = {k: 0.0 for k in ks}
    ndcg_sum = {k: 0.0 for k in ks}
    shown = {k: np.zeros(n_items, dtype=bool) for k in ks}
    discount = 1.0 / np.log2(np.arange(2, max(ks) + 2, dtype=np.float64))
    ideal = np.cumsum(discount)
    serve_seconds = 0.0
    users = test.user_ids.tolist()
    for lo in range(0, n_users, USER_CHUNK):
        hi = min(lo + USER_CHUNK, n_users)
        if progress is not None:
            progress(lo, n_users)
        clock = time.perf_counter()
        ranked = rank_items(
            strategy,
            users[lo:hi],
            width,
            seen=None if include_seen else targets.seen[lo:hi],
            index=index,
        )
        serve_seconds += time.perf_counter() - clock
        relevant = np.diff(test.indptr[lo : hi + 1])
        owner = np.repeat(np.arange(hi - lo, dtype=np.int64), relevant)
        test_keys = owner * n_items + test.items[test.indptr[lo] : test.indptr[hi]]
        ranked_keys = np.arange(hi - lo, dtype=np.int64)[:, None] * n_items + ranked
        hits = np.isin(ranked_keys, test_keys) & (ranked >= 0)
        cold = targets.cold[lo:hi]
        for k in ks:
            top = hits[:, :k]
            per_user = top.sum(axis=1)
            pair_hits[k] += int(per_user.sum())
            cold_hits[k] += int(per_user[cold].sum())
            recall_sum[k] += float((per_user / relevant).sum())
            dcg = (top * discount[: top.shape[1]]).sum(axis=1)
            ndcg_sum[k] += float((dcg / ideal[np.minimum(relevant, k) - 1]).sum())
            listed = ranked[:, :k]
            shown[k][listed[listed >= 0]] = True
    if progress is not None:
        progress(n_users, n_users)
    n_pairs = len(test.items)
    n_cold_pairs = int(np.diff(test.indptr)[targets.cold].sum())
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"hit@{k}"] = pair_hits[k] / n_pairs
        metrics[f"recall@{k}"] = recall_sum[k] / n_users
        metrics[f"ndcg@{k}"] = ndcg_sum[k] / n_users
        metrics[f"coverage@{k}"] = float(shown[k].sum()) / n_items
    for k in ks:
        metrics[f"cold_hit@{k}"] = cold_hits[k] / n_cold_pairs if n_cold_pairs else math.nan
    metrics["users"] = float(n_users)
    metrics["serve_ms_per_user"] = 1000.0 * serve_seconds / n_users
    return metrics, serve_seconds
