"""The `train` verb: evaluate every variant's strategy on the SQL history, export, register it."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from abplatform.artifacts import artifact_sha256
from abplatform.config.models import ExperimentConfig
from abplatform.domain import InteractionLog
from abplatform.progress import Progress, no_progress
from abplatform.storage.db import transaction
from abplatform.storage.model_registry import ModelRecord, register
from strategies.base import ExportableStrategy
from strategies.composite import export_composite, tensorflow_stages
from strategies.fitting import FittedStrategy, fit_strategy, strategy_seed
from strategies.offline import DEFAULT_KS, OfflineReport, evaluate_offline
from strategies.ranker.data import ImpressionSource, logged_impressions
from strategies.ranker.report import RankerQuality, ranker_quality
from strategies.snapshot import (
    TENSORFLOW_KINDS,
    export_snapshot,
    needs_tensorflow,
    needs_training,
    nested_kinds,
    trained_kinds,
)
from strategies.splits import NewItemsSplit

REPORT_FILE = "train_report.json"


def report_path(artifacts_dir: str | Path, experiment: str) -> Path:
    """Where `train_experiment` writes the report of an experiment."""
    return Path(artifacts_dir) / experiment / REPORT_FILE


@dataclass(frozen=True)
class ExportedVariant:
    """A variant's exported artifact, waiting to be registered with what it was fitted on."""

    variant: str
    kind: str
    params: dict[str, Any]
    artifact: Path
    metrics: dict[str, float]
    history_cutoff: dt.datetime | None
    history_rows: int


def history_cutoff(history: InteractionLog) -> dt.datetime | None:
    """The time of the newest interaction (naive UTC, as stored), None for an empty log."""
    if len(history) == 0:
        return None
    return dt.datetime.fromtimestamp(history.end_timestamp, dt.UTC).replace(tzinfo=None)


def train_experiment(
    engine: Engine,
    config: ExperimentConfig,
    catalog: str,
    *,
    artifacts_dir: str | Path,
    progress: Progress = no_progress,
    seed: int | None = None,
    holdout_per_user: int = 1,
    ks: Sequence[int] = DEFAULT_KS,
) -> OfflineReport:
    """Fit, evaluate, export and register every variant's strategy from the SQL history.

    Parameters
    ----------
    engine
        The database holding the catalogue and its interactions; the models are
        registered in its `models` table.
    config
        The experiment; each variant with a strategy is trained (variants without one are
        listed in `OfflineReport.skipped`).
    catalog
        The catalogue whose history to train on (a simulated run writes ``sim:<key>``).
    artifacts_dir
        Root of the artifacts: ``<artifacts_dir>/<experiment>/<variant>/<version>/``, and
        ``<artifacts_dir>/<experiment>/train_report.json``: the report's JSON (plus the
        ``seconds`` the whole run took).
    progress
        Called as ``progress(stage, done, total)`` (see `evaluate_offline`).
    seed
        Seed of every strategy; None applies `strategy_seed` (the simulation's seed, else 0).
    holdout_per_user
        New items held out per user (`NewItemsSplit`).
    ks
        Cut-offs of the offline metrics.

    Returns
    -------
    OfflineReport
        The variants' and the baselines' (popularity, random) metrics on the same split,
        with the artifact, model id and version of every registered variant.

    Notes
    -----
    This is `evaluate_offline` with ``NewItemsSplit(holdout_per_user)``, seen items
    excluded and every target type. The exported fit is the same configuration refitted
    on the whole history (the held-out interactions are the most recent ones, the most
    useful to serve); the metrics describe it fitted without them. Two-tower, ALS and EASE
    variants (`ExportableStrategy`) write what they learned, composites nesting two-towers a
    composite artifact (`strategies.composite`: the two-towers' exports and a snapshot for
    the rest); every other kind writes a snapshot of that history (`strategies.snapshot`).
    Each is registered as a `candidate` with its finite metrics, the catalogue and the
    history's cut-off, all in one transaction after the last fit (nothing is registered if
    any fails). A strategy with no artifact format (`unexportable`, e.g. a composite nesting
    an ALS strategy) is listed in `unregistered`.
    """
    started = time.perf_counter()
    chosen_seed = strategy_seed(config, seed)
    root = Path(artifacts_dir)
    exported: list[ExportedVariant] = []
    unregistered: dict[str, str] = {}
    rankers: list[RankerQuality] = []

    def export(
        fitted: FittedStrategy, metrics: dict[str, float], history: InteractionLog
    ) -> Path | None:
        if fitted.planned.role != "variant":
            return None
        reason = unexportable(fitted)
        if reason is not None:
            unregistered[fitted.planned.name] = reason
            return None
        if trained_with_tensorflow(fitted):  # fitted without the held-out part: refit
            fitted = fit_strategy(fitted.planned, history, chosen_seed)
        rankers.extend(ranker_quality(fitted.planned.name, fitted.strategy))
        one = export_variant(
            root, config.key, fitted, seed=chosen_seed, history=history, metrics=metrics
        )
        exported.append(one)
        return one.artifact

    # Rankers fitted below train on this experiment's logged impressions.
    with logged_impressions(ImpressionSource(engine, experiment=config.key, catalog=catalog)):
        report = evaluate_offline(
            config,
            engine,
            split=NewItemsSplit(holdout_per_user),
            catalog=catalog,
            ks=ks,
            seed=chosen_seed,
            progress=progress,
            export=export,
        )
    with transaction(engine) as session:
        registered = register_exported(session, config.key, catalog, chosen_seed, exported)
    report = replace(
        report,
        results=[
            replace(r, model_id=registered[r.name].id, version=registered[r.name].version)
            if r.name in registered and r.role == "variant"
            else r
            for r in report.results
        ],
        unregistered=unregistered,
        rankers=rankers,
    )
    path = report_path(root, config.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**report.to_dict(), "seconds": round(time.perf_counter() - started, 3)}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return report


def trained_with_tensorflow(fitted: FittedStrategy) -> bool:
    """Whether the variant's fit trained what its export holds (TensorFlow, itself or in a
    nested stage, or an `ExportableStrategy`), not a snapshot to refit on."""
    planned = fitted.planned
    params = fitted.strategy.Params.model_validate(dict(planned.params)).model_dump(mode="json")
    return isinstance(fitted.strategy, ExportableStrategy) or needs_tensorflow(planned.kind, params)


def unexportable(fitted: FittedStrategy) -> str | None:
    """Why a fitted variant has no artifact format, or None.

    A composite nesting two-towers exports a composite artifact (`strategies.composite`)
    when it fitted them as stages (`BaseStrategy.fit_stage`); one that trained them some
    other way, or that nests an ALS strategy, has nothing to export them from.
    """
    planned = fitted.planned
    params = fitted.strategy.Params.model_validate(dict(planned.params)).model_dump(mode="json")
    if isinstance(fitted.strategy, ExportableStrategy) or not needs_training(planned.kind, params):
        return None
    only_tensorflow = set(trained_kinds(planned.kind, params)) <= TENSORFLOW_KINDS
    if only_tensorflow and tensorflow_stages(fitted.strategy):
        return None
    inner = sorted(nested_kinds(planned.kind, params) - {planned.kind})
    return f"a {planned.kind} nesting {', '.join(inner)} has no artifact format"


def export_variant(
    root: Path,
    experiment: str,
    fitted: FittedStrategy,
    *,
    seed: int,
    history: InteractionLog,
    metrics: Mapping[str, float],
) -> ExportedVariant:
    """Export a variant's strategy fitted on `history` under `root`, ready to register.

    Two-tower, ALS and EASE strategies (`ExportableStrategy`) write what they learned,
    composites nesting two-towers a composite artifact; every other kind a snapshot of
    `history` that its loader refits on (`strategies.snapshot`), so `fitted` must have been
    fitted on exactly `history` with `seed`. Undefined (non-finite) metrics
    are left out: the registry and the manifests are strict JSON. A strategy `unexportable`
    names is refused with an AssertionError (callers check first).
    """
    planned = fitted.planned
    reason = unexportable(fitted)
    if reason is not None:
        raise AssertionError(f"variant {planned.name!r}: {reason}")
    params = fitted.strategy.Params.model_validate(dict(planned.params)).model_dump(mode="json")
    defined = {name: value for name, value in metrics.items() if math.isfinite(value)}
    if isinstance(fitted.strategy, ExportableStrategy):
        path = fitted.strategy.export(
            root, experiment=experiment, variant=planned.name, metrics=defined
        )
    elif trained_with_tensorflow(fitted):
        path = export_composite(
            root,
            experiment=experiment,
            variant=planned.name,
            strategy=fitted.strategy,
            params=params,
            history=history,
            metrics=defined,
        )
    else:
        path = export_snapshot(
            root,
            experiment=experiment,
            variant=planned.name,
            kind=planned.kind,
            params=params,
            seed=seed,
            history=history,
            metrics=defined,
        )
    return ExportedVariant(
        planned.name,
        planned.kind,
        params,
        path.resolve(),
        defined,
        history_cutoff(history),
        len(history),
    )


def register_exported(
    session: Session,
    experiment: str,
    catalog: str,
    seed: int,
    exported: Sequence[ExportedVariant],
) -> dict[str, ModelRecord]:
    """Register every exported variant as a candidate in the caller's transaction; by variant."""
    return {
        one.variant: register(
            session,
            experiment=experiment,
            variant=one.variant,
            kind=one.kind,
            params=one.params,
            seed=seed,
            catalog=catalog,
            history_cutoff=one.history_cutoff,
            history_rows=one.history_rows,
            artifact_path=one.artifact,
            artifact_sha256=artifact_sha256(one.artifact),
            metrics=one.metrics,
        )
        for one in exported
    }
