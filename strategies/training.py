"""The `train` verb: fit every variant's strategy on the SQL history, evaluate it, export it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from sqlalchemy import Engine

from abplatform.config.models import ExperimentConfig
from abplatform.domain import InteractionLog
from abplatform.errors import AbplatformError
from abplatform.progress import Progress, no_progress
from abplatform.registry import build_strategy
from abplatform.storage.history import load_history
from strategies.evaluation import POSITIVE_EVENTS, evaluate, time_split

"""progress(stage, done, total): called as training advances (stages: load, fit, export)."""

BASELINES: tuple[tuple[str, str], ...] = (
    ("baseline:popularity", "popularity"),
    ("baseline:random", "random"),
)
"""(name, kind) of the strategies every report shows next to the variants, default params."""

REPORT_FILE = "train_report.json"


@runtime_checkable
class ExportableStrategy(Protocol):
    """A strategy that can write what it learned as a versioned artifact."""

    def export(
        self,
        root: str | Path,
        *,
        experiment: str,
        variant: str,
        metrics: dict[str, float] | None = None,
    ) -> Path:
        """Write a new artifact version under ``root/experiment/variant``; return its path."""
        ...


@dataclass(frozen=True)
class StrategyResult:
    """One evaluated strategy: a variant of the experiment or a baseline."""

    name: str
    role: Literal["variant", "baseline"]
    kind: str
    params: dict[str, Any]
    metrics: dict[str, float]
    fit_seconds: float
    artifact: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (NaN metrics become None)."""
        return {
            "name": self.name,
            "role": self.role,
            "kind": self.kind,
            "params": self.params,
            "metrics": {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()},
            "fit_seconds": round(self.fit_seconds, 3),
            "artifact": str(self.artifact) if self.artifact is not None else None,
        }


@dataclass(frozen=True)
class TrainReport:
    """What `train_experiment` did: the data, the split and every strategy's offline metrics."""

    experiment: str
    catalog: str
    interactions: int
    users: int
    items: int
    start: int  # Unix seconds of the first and last interaction
    end: int
    holdout_per_user: int
    test_users: int
    ks: tuple[int, ...]
    results: list[StrategyResult]
    skipped: list[str] = field(default_factory=list)
    report_path: Path | None = None

    def result(self, name: str) -> StrategyResult:
        """The result of a variant key or baseline name."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def metric_names(self) -> list[str]:
        """recall@K for every K, then NDCG and coverage at the smallest K."""
        first = min(self.ks)
        return [f"recall@{k}" for k in self.ks] + [f"ndcg@{first}", f"coverage@{first}"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description."""
        return {
            "experiment": self.experiment,
            "catalog": self.catalog,
            "data": {
                "interactions": self.interactions,
                "users": self.users,
                "items": self.items,
                "start": _iso(self.start),
                "end": _iso(self.end),
            },
            "split": {"holdout_per_user": self.holdout_per_user, "test_users": self.test_users},
            "ks": list(self.ks),
            "results": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
        }


def _iso(seconds: int) -> str:
    return str(np.datetime64(seconds, "s")) + "Z"


def train_experiment(
    engine: Engine,
    config: ExperimentConfig,
    catalog: str,
    *,
    artifacts_dir: str | Path,
    progress: Progress = no_progress,
    seed: int = 0,
    holdout_per_user: int = 1,
    ks: Sequence[int] = (10, 50, 100),
    refit_on_full_history: bool = True,
) -> TrainReport:
    """Fit, evaluate and export every variant's strategy from the catalogue's SQL history.

    Parameters
    ----------
    engine
        The database holding the catalogue and its interactions.
    config
        The experiment; each variant with a strategy is trained (variants without one are
        listed in `TrainReport.skipped`).
    catalog
        The catalogue whose history to train on (a simulated run writes ``sim:<key>``).
    artifacts_dir
        Root of the artifacts: ``<artifacts_dir>/<experiment>/<variant>/<version>/``, and
        ``<artifacts_dir>/<experiment>/train_report.json`` with every strategy's metrics.
    progress
        Called as ``progress(stage, done, total)``.
    seed
        Seed of every strategy (as the simulator passes its run seed).
    holdout_per_user
        Items held out per user by `time_split`.
    ks
        Cut-offs of the offline metrics.
    refit_on_full_history
        Export strategies refitted on the whole history (the held-out interactions are the
        most recent ones, the most useful to serve); False exports the evaluated fit.

    Returns
    -------
    TrainReport
        The variants' and the baselines' (popularity, random) metrics on the same split.

    Notes
    -----
    Every strategy is fitted on the training part of one `time_split` of the history and
    evaluated on its held-out items with `exclude_seen=True`. Strategies that implement
    `ExportableStrategy` are exported with the metrics written into their manifest; the
    metrics describe the same configuration fitted without the held-out interactions.
    """
    started = time.perf_counter()
    progress("load", 0, 1)
    with engine.connect() as conn:
        history = load_history(conn, catalog)
    progress("load", 1, 1)
    if len(history) == 0:
        raise AbplatformError(
            f"catalogue {catalog!r} has no interaction history to train on",
            hint="simulate the experiment or ingest interactions first",
        )
    train_log, test = time_split(history, holdout_per_user)
    if len(test) == 0 and not np.isin(history.event_types, POSITIVE_EVENTS).any():
        found = ", ".join(sorted(set(history.event_types.tolist())))
        raise AbplatformError(
            f"catalogue {catalog!r} has no {' or '.join(POSITIVE_EVENTS)} interactions to "
            f"train on (its history has only: {found})",
            hint="the strategies learn from clicks and purchases: ingest the interactions "
            "that mean interest (e.g. ratings of 4 and more) with type click",
        )
    if len(test) == 0:
        raise AbplatformError(
            f"no user of catalogue {catalog!r} has enough history to hold out "
            f"{holdout_per_user} item(s) and keep one for training",
            hint="train on a longer history or lower holdout_per_user",
        )
    plan, skipped = strategy_plan(config)
    results = []
    root = Path(artifacts_dir)
    for i, (name, role, kind, params) in enumerate(plan):
        progress("fit", i, len(plan))
        results.append(
            _train_one(
                name,
                role,
                kind,
                params,
                history,
                train_log,
                test,
                seed,
                ks,
                root,
                config.key,
                refit_on_full_history,
            )
        )
    progress("fit", len(plan), len(plan))
    report = TrainReport(
        experiment=config.key,
        catalog=catalog,
        interactions=len(history),
        users=int(np.unique(history.user_ids).size),
        items=len(history.catalog),
        start=int(history.timestamps.min()),
        end=int(history.timestamps.max()),
        holdout_per_user=holdout_per_user,
        test_users=len(test),
        ks=tuple(ks),
        results=results,
        skipped=skipped,
    )
    path = root / config.key / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**report.to_dict(), "seconds": round(time.perf_counter() - started, 3)}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return replace(report, report_path=path)


PlannedStrategy = tuple[str, Literal["variant", "baseline"], str, dict[str, Any]]
"""(name, role, kind, params) of one strategy to fit."""


def strategy_plan(
    config: ExperimentConfig, *, baselines: bool = True
) -> tuple[list[PlannedStrategy], list[str]]:
    """The strategies `train` and `evaluate` fit: every variant's, then the baselines.

    Returns the plan and the keys of the variants without a strategy (skipped).
    """
    plan: list[PlannedStrategy] = []
    skipped = []
    for variant in config.variants:
        if variant.strategy is None:
            skipped.append(variant.key)
        else:
            plan.append(
                (variant.key, "variant", variant.strategy.kind, dict(variant.strategy.params))
            )
    if baselines:
        plan.extend((name, "baseline", kind, {}) for name, kind in BASELINES)
    return plan, skipped


def _train_one(
    name: str,
    role: Literal["variant", "baseline"],
    kind: str,
    params: Mapping[str, Any],
    history: InteractionLog,
    train_log: InteractionLog,
    test: Any,
    seed: int,
    ks: Sequence[int],
    root: Path,
    experiment: str,
    refit: bool,
) -> StrategyResult:
    """Evaluate one strategy on the split, then export it if it can be exported."""
    strategy = build_strategy(kind, params, seed=seed)
    clock = time.perf_counter()
    metrics = evaluate(strategy, train_log, test, ks=ks, exclude_seen=True)
    seconds = time.perf_counter() - clock
    artifact = None
    if role == "variant" and isinstance(strategy, ExportableStrategy):
        if refit:
            strategy = build_strategy(kind, params, seed=seed)
            strategy.fit(history)
        exportable: Any = strategy
        artifact = exportable.export(root, experiment=experiment, variant=name, metrics=metrics)
    validated = strategy.Params.model_validate(dict(params)).model_dump(mode="json")
    return StrategyResult(name, role, kind, validated, metrics, seconds, artifact)


def format_table(report: TrainReport) -> list[list[str]]:
    """Rows of a plain-text metrics table: header, then one row per strategy."""
    names = report.metric_names()
    rows = [["strategy", "kind", *names]]
    for result in report.results:
        values = [f"{result.metrics.get(n, float('nan')):.4f}" for n in names]
        rows.append([result.name, result.kind, *values])
    return rows
