"""The one place strategies are built and fitted on history: API, simulator, train, evaluate."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Engine

from abplatform.config.models import ExperimentConfig
from abplatform.domain import InteractionLog
from abplatform.progress import Progress, no_progress
from abplatform.registry import build_strategy
from abplatform.storage.catalog import load_history
from abplatform.strategy import Strategy

FIT_STAGE = "fit"
"""The progress stage of fitting, counted in strategies."""

BASELINES: tuple[tuple[str, str], ...] = (
    ("baseline:popularity", "popularity"),
    ("baseline:random", "random"),
)
"""(name, kind) of the strategies offline reports show next to the variants, default params."""

HistorySource = Engine | Connection | InteractionLog
"""Where history comes from: a database (read with `load_history`) or a log in memory."""


def strategy_seed(config: ExperimentConfig, seed: int | None = None) -> int:
    """The seed every strategy of `config` is built with: `seed` if given, else the
    simulation's seed, else 0 (so the API serves what `simulate` and `train` fitted)."""
    if seed is not None:
        return seed
    return config.simulation.seed if config.simulation is not None else 0


@dataclass(frozen=True)
class PlannedStrategy:
    """One strategy to fit: a variant of the experiment or a baseline."""

    name: str
    role: Literal["variant", "baseline"]
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def build(self, seed: int) -> Strategy:
        """A new, unfitted instance (params validated by the strategy's `Params`)."""
        return build_strategy(self.kind, self.params, seed=seed)


@dataclass(frozen=True)
class StrategyPlan:
    """The strategies to fit, in order, and the variants without a strategy."""

    strategies: tuple[PlannedStrategy, ...]
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.strategies)


def strategy_plan(config: ExperimentConfig, *, baselines: bool = False) -> StrategyPlan:
    """Every variant's strategy in variant order, then (with `baselines`) the `BASELINES`."""
    planned = [
        PlannedStrategy(v.key, "variant", v.strategy.kind, dict(v.strategy.params))
        for v in config.variants
        if v.strategy is not None
    ]
    if baselines:
        planned.extend(PlannedStrategy(name, "baseline", kind) for name, kind in BASELINES)
    skipped = tuple(v.key for v in config.variants if v.strategy is None)
    return StrategyPlan(tuple(planned), skipped)


@dataclass(frozen=True)
class FittedStrategy:
    """A strategy fitted on a history, what it was planned as and how long `fit` took."""

    planned: PlannedStrategy
    strategy: Strategy
    fit_seconds: float


def fit_strategy(planned: PlannedStrategy, history: InteractionLog, seed: int) -> FittedStrategy:
    """Build `planned` with `seed` and fit it on `history`, timing the fit."""
    strategy = planned.build(seed)
    clock = time.perf_counter()
    strategy.fit(history)
    return FittedStrategy(planned, strategy, time.perf_counter() - clock)


def fit_each(
    plan: StrategyPlan, history: InteractionLog, *, seed: int, progress: Progress = no_progress
) -> Iterator[FittedStrategy]:
    """Fit the plan's strategies one at a time, in order (a caller may score or export each
    before the next is fitted); progress is ``("fit", fitted so far, len(plan))``."""
    total = len(plan)
    for done, planned in enumerate(plan.strategies):
        progress(FIT_STAGE, done, total)
        yield fit_strategy(planned, history, seed)
    progress(FIT_STAGE, total, total)


def read_history(source: HistorySource, catalog: str) -> InteractionLog:
    """The catalogue's history from a database, or `source` itself if it is a log."""
    if isinstance(source, InteractionLog):
        return source
    if isinstance(source, Connection):
        return load_history(source, catalog)
    with source.connect() as conn:
        return load_history(conn, catalog)


@dataclass(frozen=True)
class FittedVariants:
    """Every variant's fitted strategy (None for a variant without one) and the history."""

    history: InteractionLog
    strategies: dict[str, Strategy | None]


def fit_variants(
    source: HistorySource,
    config: ExperimentConfig,
    catalog: str,
    *,
    seed: int | None = None,
    progress: Progress = no_progress,
) -> FittedVariants:
    """Fit every variant's strategy of `config` on the catalogue's whole history.

    Parameters
    ----------
    source
        The database holding the catalogue's history (an open connection reads inside the
        caller's transaction), or the history itself.
    config
        The experiment; variants keep their order, those without a strategy map to None.
    catalog
        The catalogue whose history to read.
    seed
        The seed of every strategy; None applies `strategy_seed`.
    progress
        Called as ``progress("fit", done, total)``.
    """
    history = read_history(source, catalog)
    fitted: dict[str, Strategy | None] = {v.key: None for v in config.variants}
    plan = strategy_plan(config)
    for one in fit_each(plan, history, seed=strategy_seed(config, seed), progress=progress):
        fitted[one.planned.name] = one.strategy
    return FittedVariants(history, fitted)
