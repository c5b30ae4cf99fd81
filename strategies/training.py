"""The `train` verb: evaluate every variant's strategy on the SQL history, then export it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from sqlalchemy import Engine

from abplatform.config.models import ExperimentConfig
from abplatform.domain import InteractionLog
from abplatform.progress import Progress, no_progress
from strategies.base import ExportableStrategy
from strategies.fitting import FittedStrategy, fit_strategy, strategy_seed
from strategies.offline import DEFAULT_KS, OfflineReport, evaluate_offline
from strategies.splits import NewItemsSplit

REPORT_FILE = "train_report.json"


def report_path(artifacts_dir: str | Path, experiment: str) -> Path:
    """Where `train_experiment` writes the report of an experiment."""
    return Path(artifacts_dir) / experiment / REPORT_FILE


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
    refit_on_full_history: bool = True,
) -> OfflineReport:
    """Fit, evaluate and export every variant's strategy from the catalogue's SQL history.

    Parameters
    ----------
    engine
        The database holding the catalogue and its interactions.
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
    refit_on_full_history
        Export strategies refitted on the whole history (the held-out interactions are the
        most recent ones, the most useful to serve); False exports the evaluated fit.

    Returns
    -------
    OfflineReport
        The variants' and the baselines' (popularity, random) metrics on the same split,
        with the artifact of every exported variant.

    Notes
    -----
    This is `evaluate_offline` with ``NewItemsSplit(holdout_per_user)``, seen items
    excluded and every target type. Strategies that implement `ExportableStrategy` are
    exported with their metrics written into the manifest; the metrics describe the same
    configuration fitted without the held-out interactions.
    """
    started = time.perf_counter()
    chosen_seed = strategy_seed(config, seed)
    root = Path(artifacts_dir)

    def export(
        fitted: FittedStrategy, metrics: dict[str, float], history: InteractionLog
    ) -> Path | None:
        if fitted.planned.role != "variant" or not isinstance(fitted.strategy, ExportableStrategy):
            return None
        exportable: ExportableStrategy = fitted.strategy
        if refit_on_full_history:  # the same kind and params: exportable as well
            refitted = fit_strategy(fitted.planned, history, chosen_seed).strategy
            exportable = cast(ExportableStrategy, refitted)
        # A manifest is strict JSON: an undefined metric (e.g. diversity@1) is left out.
        defined = {name: value for name, value in metrics.items() if math.isfinite(value)}
        return exportable.export(
            root, experiment=config.key, variant=fitted.planned.name, metrics=defined
        )

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
    path = report_path(root, config.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**report.to_dict(), "seconds": round(time.perf_counter() - started, 3)}
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return report
