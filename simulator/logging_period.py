"""The logging period: days before the experiment when the shop serves its current strategy.

With ``simulation.logging_days: N`` the simulator plays the N days before the experiment
starts with every user served ``simulation.logging_strategy`` (default: popularity over 30
days), and writes that traffic as the experiment ``<key>__logging`` (one variant,
``logging``, its own simulation run): exposures, impressions and click / purchase events,
exactly as `simulator.runner` writes the experiment's own. It is kept apart from the
experiment so analysing the experiment is unaffected; rankers in the experiment's variants
train on its impressions (`strategies.ranker.data.logged_impressions`). The period's clicks
and purchases are also added to the catalogue's interaction history, as a real shop's
history holds what users did on its recommendation slates, so every variant (and the
ranker's behaviour counts) fits on them too. Its randomness has its own seed stream
(``[seed, 3]``): a run without a logging period draws exactly what it drew before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from abplatform.assignment.engine import build_policy
from abplatform.config.models import ExperimentConfig, SimulationConfig
from abplatform.progress import Progress, no_progress
from abplatform.storage import models as m
from abplatform.storage.catalog import insert_interactions
from abplatform.storage.repository import (
    clear_experiment_data,
    finish_run,
    save_experiment,
    start_run,
)
from abplatform.strategy import Strategy
from simulator.context import draw_contexts, draw_scenes
from simulator.rows import PURCHASE_DELAY_S, SessionBlock, sample_sessions, write_sessions
from simulator.truth import SlateSource
from simulator.world import World
from strategies.fitting import PlannedStrategy, fit_strategy, read_history
from strategies.ranker.report import ranker_quality

SECONDS_PER_DAY = 86_400
EventParts = tuple[
    list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]]
]
"""(users, items, seconds) of logged events, one array per day."""
SlatesFactory = Callable[[Strategy, World, dict[str, int], int], SlateSource]
"""(strategy, world, item index, k) -> the slate source serving `strategy`."""
LOGGING_VARIANT = "logging"
LOGGING_STAGE = "logging"
"""The progress stage of the logging period, counted in days."""


@dataclass(frozen=True)
class LoggingPeriod:
    """What the logging period wrote: its experiment key, traffic and history rows."""

    experiment: str
    days: int
    strategy: str
    exposures: int
    impressions: int
    clicks: int
    purchases: int
    interactions: int
    """Clicks and purchases added to the catalogue's interaction history."""

    def note(self) -> str:
        """One line for the simulate summary."""
        return (
            f"logging period: {self.days} days of {self.strategy} logged as "
            f"{self.experiment!r}: {self.exposures:,} exposures, {self.impressions:,} "
            f"impressions, {self.clicks:,} clicks, {self.purchases:,} purchases "
            f"(added to the history)"
        )

    def to_dict(self) -> dict[str, object]:
        """The summary stored with the experiment's simulation run."""
        return dict(vars(self))


def logging_config(config: ExperimentConfig) -> ExperimentConfig:
    """The logging experiment: one variant serving the logging strategy to everyone."""
    sim = config.simulation or SimulationConfig()
    spec = sim.logging_strategy
    return ExperimentConfig.model_validate(
        {
            "key": config.logging_key,
            "description": f"logging period before {config.key}: every user served "
            f"{spec.kind} (what its rankers train on)",
            "unit": config.unit,
            "catalog": config.catalog,
            "variants": [
                {
                    "key": LOGGING_VARIANT,
                    "weight": 1.0,
                    "strategy": {"kind": spec.kind, "params": dict(spec.params)},
                }
            ],
            "metrics": [metric.model_dump() for metric in config.metrics],
        }
    )


def clear_logging(session: Session, config: ExperimentConfig) -> None:
    """Delete the rows a previous run's logging period wrote (the definition stays)."""
    stored = session.scalars(
        select(m.Experiment.id).where(m.Experiment.key == config.logging_key)
    ).one_or_none()
    if stored is not None:
        clear_experiment_data(session, stored)


def play_logging_period(
    conn: Connection,
    config: ExperimentConfig,
    world: World,
    catalog: str,
    *,
    start: int,
    seed: int,
    slates: SlatesFactory,
    progress: Progress = no_progress,
) -> LoggingPeriod:
    """Play ``simulation.logging_days`` before `start` (Unix seconds) into the database.

    The logging strategy is fitted on the catalogue's history as it stands (the organic
    pre-period) with `seed`; `slates(strategy, world, index, k)` builds its slate source
    (the runner's `VariantSlates`). Sessions follow the experiment's own rates and scene
    shares; the rows go to the logging experiment (`logging_config`), then its clicks and
    purchases to the catalogue's history.
    """
    sim = config.simulation or SimulationConfig()
    days, k = sim.logging_days, sim.slate_size
    rng = np.random.default_rng([seed, 3])
    session = Session(bind=conn)
    logging = logging_config(config)
    stored = save_experiment(session, logging, catalog, discard_data=True)
    clear_experiment_data(session, stored.id)
    run_config = {"simulation": sim.model_dump(mode="json"), "users": world.n_users}
    run_id = start_run(session, stored.id, seed, run_config)

    history = read_history(conn, catalog)
    spec = sim.logging_strategy
    planned = PlannedStrategy(LOGGING_VARIANT, "variant", spec.kind, dict(spec.params))
    strategy = fit_strategy(planned, history, seed).strategy
    source = slates(strategy, world, history.catalog.index(), k)
    decisions = build_policy(logging).assign_batch(world.user_ids)
    daily_rate = sim.sessions_per_user_per_day * world.user_activity
    keys = [LOGGING_VARIANT]
    event_seq = exposures = clicks = purchases = 0
    revenue = 0.0
    clicked_users: list[npt.NDArray[np.int64]] = []
    clicked_items: list[npt.NDArray[np.int64]] = []
    clicked_ts: list[npt.NDArray[np.int64]] = []
    bought_users: list[npt.NDArray[np.int64]] = []
    bought_items: list[npt.NDArray[np.int64]] = []
    bought_ts: list[npt.NDArray[np.int64]] = []
    first_day = start - days * SECONDS_PER_DAY
    for day in range(days):
        progress(LOGGING_STAGE, day, days)
        users = np.repeat(np.arange(world.n_users, dtype=np.int64), rng.poisson(daily_rate))
        if users.size == 0:
            continue
        ts = first_day + day * SECONDS_PER_DAY + rng.integers(0, SECONDS_PER_DAY - 3600, users.size)
        order = np.argsort(ts, kind="stable")
        users, ts = users[order], ts[order]
        contexts = draw_contexts(world, users, draw_scenes(sim.scenes, users.size, rng), rng)
        arm = np.zeros(users.size, dtype=np.int64)
        items, labels, clicked, bought = sample_sessions(
            world, {LOGGING_VARIANT: source}, keys, users, contexts, arm, k, rng
        )
        block = SessionBlock(
            users,
            ts,
            contexts,
            arm,
            decisions.propensity[users],
            decisions.bucket[users],
            items,
            clicked,
            bought,
            item_sources=labels,
        )
        event_seq = write_sessions(
            conn, world, block, keys, experiment_id=stored.id, run_id=run_id, event_seq=event_seq
        )
        exposures += users.size
        clicks += int(clicked.sum())
        purchases += int(bought.sum())
        revenue += float((bought * world.item_price[items]).sum())
        rows, cols = np.nonzero(clicked)
        clicked_users.append(users[rows])
        clicked_items.append(items[rows, cols])
        clicked_ts.append(ts[rows] + cols + 1)
        rows, cols = np.nonzero(bought)
        bought_users.append(users[rows])
        bought_items.append(items[rows, cols])
        bought_ts.append(ts[rows] + cols + PURCHASE_DELAY_S)
    progress(LOGGING_STAGE, days, days)
    interactions = _add_to_history(
        conn,
        world,
        catalog,
        (clicked_users, clicked_items, clicked_ts),
        (bought_users, bought_items, bought_ts),
    )
    period = LoggingPeriod(
        experiment=logging.key,
        days=days,
        strategy=spec.kind,
        exposures=exposures,
        impressions=exposures * k,
        clicks=clicks,
        purchases=purchases,
        interactions=interactions,
    )
    summary = {**period.to_dict(), "revenue": round(revenue, 2)}
    finish_run(session, run_id, ground_truth={}, summary=summary)
    session.close()
    return period


def _add_to_history(
    conn: Connection,
    world: World,
    catalog: str,
    clicks: EventParts,
    purchases: EventParts,
) -> int:
    """Insert the period's clicks and purchases (valued at the price) as history rows."""
    empty = np.zeros(0, dtype=np.int64)
    cu, ci, ct = (np.concatenate(part) if part else empty for part in clicks)
    bu, bi, bt = (np.concatenate(part) if part else empty for part in purchases)
    if cu.size + bu.size == 0:
        return 0
    return insert_interactions(
        conn,
        catalog,
        user_ids=world.user_ids[np.concatenate([cu, bu])],
        item_ids=world.item_ids[np.concatenate([ci, bi])],
        types=np.array(["click"] * cu.size + ["purchase"] * bu.size, dtype=str),
        values=np.concatenate([np.full(cu.size, np.nan), world.item_price[bi]]),
        seconds=np.concatenate([ct, bt]),
    )


def ranker_notes(served: Mapping[str, Strategy], logged: LoggingPeriod | None) -> tuple[str, ...]:
    """One line per ranker the variants serve: what it trained on, or why it fell back."""
    lines = []
    for variant, strategy in served.items():
        for quality in ranker_quality(variant, strategy):
            if quality.fallback is not None:
                lines.append(f"ranker of {variant}: fell back ({quality.fallback})")
                continue
            where = f" of {logged.experiment!r}" if logged is not None else ""
            auc = quality.heads.get("ranker", {}).get("click")
            shown = "" if auc is None else f"; holdout click AUC {auc.auc:.4f}"
            lines.append(
                f"ranker of {variant}: trained on {quality.impressions:,} logged "
                f"impressions{where}{shown}"
            )
    return tuple(lines)
