"""Offline comparison of an experiment's strategies on held-out interactions (`evaluate`, `train`).

Usage without the command line::

    from strategies.offline import evaluate_offline
    from strategies.splits import RandomSplit

    report = evaluate_offline(config, engine, split=RandomSplit(0.2, seed=42))
    report.result("treatment").metrics["hit@100"]

`source` may also be an `InteractionLog` already in memory (no database needed), and the
split any of `strategies.splits`: `RandomSplit`, `TimeSplit`, `NewItemsSplit` (what `train`
holds out), `TestFile` (an interactions CSV, checked like `ingest`) or `HeldOutLog`.
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

from abplatform.config.models import ExperimentConfig
from abplatform.domain import InteractionLog
from abplatform.errors import AbplatformError
from abplatform.progress import Progress, no_progress
from abplatform.strategy import Strategy
from strategies.base import check_k
from strategies.evaluation import (
    HoldoutSet,
    RankingTally,
    SlateQuality,
    item_indices,
    rank_items,
    seen_items,
)
from strategies.fitting import (
    FittedStrategy,
    HistorySource,
    fit_each,
    read_history,
    strategy_plan,
)
from strategies.ranker.report import RankerQuality
from strategies.splits import RandomSplit, Split, SplitParts

DEFAULT_KS: tuple[int, ...] = (10, 50, 100)
USER_CHUNK = 4096  # test users ranked at a time: bounds memory at USER_CHUNK x max(K) indices

Exporter = Callable[[FittedStrategy, dict[str, float], InteractionLog], Path | None]
"""export(fitted, metrics, whole history): called after each strategy is scored; returns the
artifact it wrote, if any (how `train` exports)."""


@dataclass(frozen=True)
class HistorySummary:
    """The history a report was made from."""

    interactions: int
    users: int
    items: int
    start: int | None  # Unix seconds of the first and last interaction
    end: int | None

    @classmethod
    def of(cls, history: InteractionLog) -> HistorySummary:
        """Counts and time range of `history`."""
        empty = len(history) == 0
        return cls(
            interactions=len(history),
            users=int(np.unique(history.user_ids).size),
            items=len(history.catalog),
            start=None if empty else int(history.timestamps.min()),
            end=None if empty else int(history.timestamps.max()),
        )

    def to_dict(self) -> dict[str, Any]:
        """Counts, and the time range as ISO 8601 UTC."""
        return {
            "interactions": self.interactions,
            "users": self.users,
            "items": self.items,
            "start": _iso(self.start),
            "end": _iso(self.end),
        }


def _iso(seconds: int | None) -> str | None:
    return None if seconds is None else str(np.datetime64(seconds, "s")) + "Z"


@dataclass(frozen=True)
class Targets:
    """Held-out pairs per test user, which test users are cold, what was seen in training."""

    test: HoldoutSet
    cold: npt.NDArray[np.bool_]  # per test user: no interaction in the training log
    seen: list[npt.NDArray[np.int64]]  # per test user: catalogue indices met in training
    target_events: tuple[str, ...] | None
    seen_pairs_dropped: int


@dataclass(frozen=True)
class HeldOut:
    """How a report's history was split, and the held-out pairs it scores."""

    parameters: dict[str, Any]
    """The split's kind and settings, as `SplitParts.parameters`."""
    description: str
    """The same for people (`SplitParts.description`)."""
    catalog_items: int
    train_interactions: int
    test_interactions: int
    target_events: tuple[str, ...] | None
    """Interaction types whose held-out rows are targets (None: every type)."""
    test_pairs: int
    test_users: int
    cold_users: int
    """Test users without a training interaction (served by the unknown-user path)."""
    cold_pairs: int
    seen_pairs_dropped: int
    """Held-out pairs dropped because the user met the item in training."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind", <the split's settings>, "train_interactions", "test_interactions",
        "target_events", "test_pairs", "test_users", "cold_users", "cold_pairs",
        "seen_pairs_dropped", "catalog_items"}``."""
        return {
            **self.parameters,
            "train_interactions": self.train_interactions,
            "test_interactions": self.test_interactions,
            "target_events": "all" if self.target_events is None else list(self.target_events),
            "test_pairs": self.test_pairs,
            "test_users": self.test_users,
            "cold_users": self.cold_users,
            "cold_pairs": self.cold_pairs,
            "seen_pairs_dropped": self.seen_pairs_dropped,
            "catalog_items": self.catalog_items,
        }


def held_out(parts: SplitParts, targets: Targets) -> HeldOut:
    """The summary of a split and of the targets it gives."""
    test = targets.test
    return HeldOut(
        parameters=parts.parameters,
        description=parts.description,
        train_interactions=len(parts.train),
        test_interactions=len(parts.test),
        target_events=targets.target_events,
        test_pairs=len(test.items),
        test_users=len(test),
        cold_users=int(targets.cold.sum()),
        cold_pairs=int(np.diff(test.indptr)[targets.cold].sum()),
        seen_pairs_dropped=targets.seen_pairs_dropped,
        catalog_items=len(parts.train.catalog),
    )


@dataclass(frozen=True)
class StrategyScore:
    """One strategy's metrics on the held-out pairs, with its fit and serving time."""

    name: str
    role: Literal["variant", "baseline"]
    kind: str
    params: dict[str, Any]
    metrics: dict[str, float]
    fit_seconds: float
    serve_seconds: float
    artifact: Path | None = None
    model_id: int | None = None
    """The id `train` registered the exported fit under (None: not registered)."""
    version: int | None = None
    """Its version among the variant's registered models."""

    @property
    def serve_ms_per_user(self) -> float:
        """Serving time per held-out user, in milliseconds."""
        users = self.metrics.get("users", 0.0)
        return 1000.0 * self.serve_seconds / users if users else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Kind, role and params, the metrics flat (NaN becomes None), timings, artifact."""
        out: dict[str, Any] = {"kind": self.kind, "role": self.role, "params": self.params}
        out.update({k: None if math.isnan(v) else v for k, v in self.metrics.items()})
        out["fit_seconds"] = round(self.fit_seconds, 3)
        out["serve_seconds"] = round(self.serve_seconds, 3)
        out["serve_ms_per_user"] = self.serve_ms_per_user
        out["artifact"] = str(self.artifact) if self.artifact is not None else None
        out["model_id"] = self.model_id
        out["version"] = self.version
        return out


@dataclass(frozen=True)
class OfflineReport:
    """Every strategy's offline metrics on one split of a catalogue's history."""

    experiment: str
    catalog: str
    data: HistorySummary
    split: HeldOut
    ks: tuple[int, ...]
    include_seen: bool
    results: list[StrategyScore]
    skipped: tuple[str, ...] = ()
    unregistered: dict[str, str] = field(default_factory=dict)
    """Variants `train` fitted but could not register, with the reason."""
    rankers: list[RankerQuality] = field(default_factory=list)
    """Offline quality of the rankers `train` trained (strategies.ranker)."""

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
        """``{"experiment", "catalog", "data", "ks", "include_seen", "variants": {name:
        {...}}, "split": {...}, "skipped", "unregistered"}`` (baselines are listed with the
        variants)."""
        return {
            "experiment": self.experiment,
            "catalog": self.catalog,
            "data": self.data.to_dict(),
            "ks": list(self.ks),
            "include_seen": self.include_seen,
            "variants": {r.name: r.to_dict() for r in self.results},
            "split": self.split.to_dict(),
            "skipped": list(self.skipped),
            "unregistered": dict(self.unregistered),
            "rankers": [r.to_dict() for r in self.rankers],
        }


def evaluate_offline(
    config: ExperimentConfig,
    source: HistorySource,
    *,
    split: Split | None = None,
    catalog: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    include_seen: bool = False,
    baselines: bool = True,
    seed: int = 42,
    target_events: Sequence[str] | None = None,
    progress: Progress = no_progress,
    export: Exporter | None = None,
) -> OfflineReport:
    """Fit every variant's strategy on the training part and score it on held-out interactions.

    Parameters
    ----------
    config
        The experiment: every variant with a strategy is evaluated.
    source
        The database holding the catalogue's history, or the history itself.
    split
        How to get held-out interactions (see `strategies.splits`); default
        ``RandomSplit(0.2, seed)``.
    catalog
        The catalogue to read from the database (default: the config's `catalog_name`).
    ks
        Cut-offs of the metrics.
    include_seen
        Keep items the user interacted with in the training part in the top-K (the TFRS
        tutorial's protocol). By default they are removed from each top-K, and held-out
        pairs whose item the user already met in training are dropped (they could never be
        hit); the count is ``split.targets.seen_pairs_dropped``. The split says which
        interaction types make an item seen (`SplitParts.seen_events`).
    baselines
        Also evaluate `popularity` and `random` with default parameters
        (``baseline:popularity``, ``baseline:random``).
    seed
        Seed of every strategy (and of a default random split).
    target_events
        Interaction types whose held-out rows are targets (default: every type).
    progress
        Called as ``progress(stage, done, total)``; stages: "load", "fit" (strategies fitted)
        and "<strategy>: rank" (test users ranked).
    export
        Called after each strategy is scored (see `Exporter`); its artifact goes into the
        strategy's result.

    Returns
    -------
    OfflineReport
        Per strategy ``hit@K``, ``recall@K``, ``ndcg@K``, ``coverage@K``, ``cold_hit@K``
        (hit@K over cold users' pairs, when there are cold users), ``diversity@K`` and
        ``novelty@K`` at the smallest K, ``users``, and fit and serving seconds.

    Notes
    -----
    The metric definitions are `RankingTally`'s and `SlateQuality`'s. Cold users (no
    training interaction) are served by each strategy's unknown-user path and counted like
    everyone else.
    """
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    for k in ks:
        check_k(k)
    ks = tuple(sorted(set(int(k) for k in ks)))
    chosen = catalog or config.catalog_name
    chosen_split: Split = split if split is not None else RandomSplit(seed=seed)
    progress("load", 0, 1)
    history = read_history(source, chosen)
    progress("load", 1, 1)
    if len(history.catalog) == 0:
        raise AbplatformError(
            f"catalogue {chosen!r} has no items",
            hint="ingest --items (and --interactions) into it first, or name another --catalog",
        )
    parts = chosen_split.divide(history, chosen)
    targets = held_out_targets(
        parts.train, parts.test, include_seen, target_events, seen_events=parts.seen_events
    )
    summary = held_out(parts, targets)
    if len(targets.test) == 0:
        raise AbplatformError(
            f"no held-out interaction to evaluate on ({summary.to_dict()})",
            hint="use a larger --test-fraction, another split, or check --events",
        )
    plan = strategy_plan(config, baselines=baselines)
    results = []
    for fitted in fit_each(plan, parts.train, seed=seed, progress=progress):
        planned = fitted.planned
        metrics, serve_seconds = score_strategy(
            fitted.strategy,
            parts.train,
            targets,
            ks,
            include_seen=include_seen,
            progress=_stage(progress, f"{planned.name}: rank"),
        )
        artifact = export(fitted, metrics, history) if export is not None else None
        params = fitted.strategy.Params.model_validate(dict(planned.params))
        results.append(
            StrategyScore(
                planned.name,
                planned.role,
                planned.kind,
                params.model_dump(mode="json"),
                metrics,
                fitted.fit_seconds,
                serve_seconds,
                artifact,
            )
        )
    return OfflineReport(
        experiment=config.key,
        catalog=chosen,
        data=HistorySummary.of(history),
        split=summary,
        ks=ks,
        include_seen=include_seen,
        results=results,
        skipped=plan.skipped,
    )


def _stage(progress: Progress, stage: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        progress(stage, done, total)

    return report


def held_out_targets(
    train_log: InteractionLog,
    test_log: InteractionLog,
    include_seen: bool,
    target_events: Sequence[str] | None = None,
    *,
    seen_events: Sequence[str] | None = None,
) -> Targets:
    """Distinct held-out (user, item) pairs per user, dropping seen pairs unless `include_seen`.

    Rows of items missing from the catalogue or of other types than `target_events` (None:
    all) are not targets. A training row of the `seen_events` types (None: any) makes its
    item seen by its user.
    """
    n_items = len(train_log.catalog)
    items = item_indices(test_log)
    usable = items >= 0
    if target_events is not None:
        usable &= np.isin(test_log.event_types, list(target_events))
    users, user_codes = np.unique(test_log.user_ids[usable], return_inverse=True)
    keys = np.unique(user_codes.reshape(-1).astype(np.int64) * n_items + items[usable])
    owners, pair_items = keys // max(n_items, 1), keys % max(n_items, 1)
    seen_all = seen_items(train_log, users, events=seen_events)
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
    cold = ~np.isin(test.user_ids, np.unique(train_log.user_ids))
    return Targets(
        test,
        cold,
        [seen_all[i] for i in present.tolist()],
        tuple(target_events) if target_events is not None else None,
        dropped,
    )


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
    tally = RankingTally(ks, n_items)
    quality = SlateQuality(train_log, min(ks))
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
        if width < max(ks):  # K beyond the catalogue: the missing positions are misses
            pad = np.full((ranked.shape[0], max(ks) - width), -1, dtype=np.int64)
            ranked = np.concatenate([ranked, pad], axis=1)
        first, last = test.indptr[lo], test.indptr[hi]
        chunk = HoldoutSet(
            test.user_ids[lo:hi], test.indptr[lo : hi + 1] - first, test.items[first:last]
        )
        tally.add(ranked, chunk, targets.cold[lo:hi])
        quality.add(ranked)
    if progress is not None:
        progress(n_users, n_users)
    metrics = tally.metrics(("hit", "recall", "ndcg", "coverage"))
    metrics.update(tally.metrics(("cold_hit",)))
    metrics.update(quality.metrics())
    metrics["users"] = float(n_users)
    return metrics, serve_seconds
