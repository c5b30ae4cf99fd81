"""Play an experiment in the synthetic shop and write every row to SQL as real traffic would."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from abplatform.artifacts import default_artifacts_dir
from abplatform.assignment.engine import build_policy
from abplatform.config.models import ExperimentConfig, SimulationConfig
from abplatform.domain import InteractionLog, RecRequest
from abplatform.errors import AbplatformError
from abplatform.progress import Progress, no_progress
from abplatform.storage.catalog import (
    ItemFields,
    delete_catalog,
    insert_interactions,
    insert_items,
    insert_users,
)
from abplatform.storage.model_registry import ModelRecord
from abplatform.storage.repository import (
    clear_experiment_data,
    finish_run,
    save_experiment,
    start_run,
)
from abplatform.strategy import Strategy
from simulator.bandit import (
    BanditRun,
    arm_values,
    draw_traffic,
    play_bandit,
)
from simulator.context import HOME, Contexts, draw_contexts, draw_scenes
from simulator.history import generate_history
from simulator.logging_period import (
    LoggingPeriod,
    clear_logging,
    play_logging_period,
    ranker_notes,
)
from simulator.rows import SessionBlock, sample_sessions, write_sessions
from simulator.tally import VariantTally
from simulator.truth import Labels, SlateSource, scene_expectations, truth_from_scenes
from simulator.world import World, build_world
from strategies.fitting import PlannedStrategy, StrategyPlan, fit_each, read_history, strategy_plan
from strategies.ranker.data import ImpressionSource, logged_impressions
from strategies.served import serve_variants
from strategies.training import ExportedVariant, export_variant, register_exported, unexportable

EXPERIMENT_START = int(np.datetime64("2026-03-02T00:00:00", "s").astype(np.int64))
SECONDS_PER_DAY = 86_400
HOME_PAGE = "home_page"
RECOMMEND_BATCH = 10_000

"""progress(stage, done, total): called as the run advances."""


@dataclass(frozen=True)
class SimulationResult:
    """What a run wrote, and the ground truth it stored."""

    experiment: str
    run_id: int
    seed: int
    users: int
    items: int
    history_interactions: int
    tallies: dict[str, VariantTally]
    ground_truth: dict[str, dict[str, float | None]]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    """Lines for people, e.g. a bandit run's final allocation and regret."""
    models: dict[str, ModelRecord] = field(default_factory=dict)
    """The registered model each variant served, by variant (absent: fitted in memory)."""

    @property
    def impressions(self) -> int:
        """Impressions written across variants."""
        return sum(t.impressions for t in self.tallies.values())


def simulation_catalog(config: ExperimentConfig) -> str:
    """The catalogue a simulated run writes its world into."""
    return config.catalog if config.catalog is not None else f"sim:{config.key}"


def _write_world(conn: Connection, world: World, catalog: str) -> None:
    cat = world.catalog()
    fields = ItemFields(category=cat.categories, brand=cat.brands, price=cat.prices)
    insert_items(conn, catalog, cat.item_ids, fields)
    insert_users(conn, catalog, world.user_ids)


def _write_history(conn: Connection, world: World, catalog: str, rng: np.random.Generator) -> int:
    history = generate_history(world, EXPERIMENT_START, rng)
    return insert_interactions(
        conn,
        catalog,
        user_ids=world.user_ids[history.user],
        item_ids=world.item_ids[history.item],
        types=history.event_type,
        values=history.value,
        seconds=history.ts,
    )


def _slate_matrix(
    strategy: Any, requests: list[RecRequest], index: dict[str, int], k: int
) -> tuple[npt.NDArray[np.int64], Labels | None]:
    """Slates for requests from a strategy, as item indices (requests, k), and their items'
    retrieval sources (None when the strategy's slates have none)."""
    out = np.empty((len(requests), k), dtype=np.int64)
    labels: Labels | None = None
    for lo in range(0, len(requests), RECOMMEND_BATCH):
        slates = strategy.recommend_batch(requests[lo : lo + RECOMMEND_BATCH], k)
        for row, slate in enumerate(slates):
            if len(slate.items) != k:
                raise AbplatformError(
                    f"strategy {strategy.kind!r} returned {len(slate.items)} items, expected {k}",
                    hint="the slate size must not exceed the catalogue size",
                )
            out[lo + row] = [index[item] for item in slate.items]
            if slate.sources is not None:
                if labels is None:
                    labels = np.full((len(requests), k), None, dtype=object)
                labels[lo + row] = slate.sources
    return out, labels


class VariantSlates:
    """slates(users, contexts) for one variant (`SourcedSlates`); home-page slates are
    computed once per user."""

    def __init__(self, strategy: Any, world: World, index: dict[str, int], k: int) -> None:
        self.strategy = strategy
        self.world = world
        self.index = index
        self.k = k
        self._home: tuple[npt.NDArray[np.int64], Labels | None] | None = None

    def __call__(self, users: npt.NDArray[np.int64], contexts: Contexts) -> npt.NDArray[np.int64]:
        return self.with_sources(users, contexts)[0]

    def with_sources(
        self, users: npt.NDArray[np.int64], contexts: Contexts
    ) -> tuple[npt.NDArray[np.int64], Labels | None]:
        """The slates and their items' retrieval sources (None: the strategy has none)."""
        world, k = self.world, self.k
        out = np.empty((users.size, k), dtype=np.int64)
        labels: Labels | None = None
        at_home = contexts.scene == HOME
        if at_home.any():
            if self._home is None:
                everyone = [RecRequest(str(u), scene=HOME_PAGE) for u in world.user_ids.tolist()]
                self._home = _slate_matrix(self.strategy, everyone, self.index, k)
            home, home_labels = self._home
            out[at_home] = home[users[at_home]]
            if home_labels is not None:
                labels = np.full((users.size, k), None, dtype=object)
                labels[at_home] = home_labels[users[at_home]]
        elsewhere = np.flatnonzero(~at_home)
        if elsewhere.size:
            subset = Contexts(
                contexts.scene[elsewhere], contexts.current[elsewhere], contexts.cart[elsewhere]
            )
            requests = subset.requests(world, users[elsewhere])
            out[elsewhere], found = _slate_matrix(self.strategy, requests, self.index, k)
            if found is not None:
                if labels is None:
                    labels = np.full((users.size, k), None, dtype=object)
                labels[elsewhere] = found
        return out, labels


@dataclass(frozen=True)
class ServedStrategies:
    """What each variant of a simulated run serves, and the registered model it came from."""

    strategies: dict[str, Strategy]
    models: dict[str, ModelRecord]

    def model_ids(self, keys: list[str]) -> list[int | None]:
        """The model id of each variant in `keys` order (None: fitted in memory)."""
        return [self.models[key].id if key in self.models else None for key in keys]


def train_and_serve(
    session: Session,
    config: ExperimentConfig,
    catalog: str,
    history: InteractionLog,
    *,
    seed: int,
    artifacts_dir: Path,
    progress: Progress = no_progress,
) -> ServedStrategies:
    """Fit, export and register every unpinned variant, then serve all of them as the API does.

    Each variant without a ``model:`` pin is fitted on `history` with `seed`, exported under
    `artifacts_dir` (`export_variant`) and registered in `session` as a candidate with no
    metrics; then `serve_variants` loads every variant from its artifact (the one just
    registered, or the one the YAML pins) after checking its checksum. A composite nesting
    a two-tower is one model too (`strategies.composite`); only a strategy with no artifact
    format (`unexportable`) keeps its in-memory fit and serves no model id.
    """
    plan = StrategyPlan(
        tuple(
            PlannedStrategy(v.key, "variant", v.strategy.kind, dict(v.strategy.params))
            for v in config.variants
            if v.strategy is not None and v.strategy.model is None
        )
    )
    in_memory: dict[str, Strategy] = {}
    exported: list[ExportedVariant] = []
    for fitted in fit_each(plan, history, seed=seed, progress=progress):
        if unexportable(fitted) is not None:
            in_memory[fitted.planned.name] = fitted.strategy
        else:
            exported.append(
                export_variant(
                    artifacts_dir, config.key, fitted, seed=seed, history=history, metrics={}
                )
            )
    registered = register_exported(session, config.key, catalog, seed, exported)
    variants = []
    for v in config.variants:
        if v.key in in_memory:
            v = v.model_copy(update={"strategy": None})
        elif v.key in registered and v.strategy is not None:
            pinned = v.strategy.model_copy(update={"model": registered[v.key].id})
            v = v.model_copy(update={"strategy": pinned})
        variants.append(v)
    pinned_config = config.model_copy(update={"variants": variants})
    served = serve_variants(session, pinned_config, catalog, history=history, seed=seed)
    strategies = dict(in_memory)
    models: dict[str, ModelRecord] = {}
    for key, one in served.items():
        if one.strategy is not None:
            strategies[key] = one.strategy
        if one.model is not None:
            models[key] = one.model
    return ServedStrategies({v.key: strategies[v.key] for v in config.variants}, models)


def simulate(
    engine: Engine,
    config: ExperimentConfig,
    *,
    users: int | None = None,
    seed: int | None = None,
    progress: Progress = no_progress,
    artifacts_dir: str | Path | None = None,
) -> SimulationResult:
    """Simulate the experiment into the database in one transaction (all or nothing).

    Variants serve what the API would (`train_and_serve`): each unpinned variant is fitted
    on the simulated history, exported under `artifacts_dir` (default:
    `default_artifacts_dir`), registered as a new candidate version and loaded back from
    its artifact; every exposure records the id of the model that served it (a composite
    nesting a two-tower included: it is one composite artifact). A rerun of
    the same experiment key replaces the previous run's rows and registers new versions.
    """
    sim = config.simulation or SimulationConfig()
    run_seed = sim.seed if seed is None else seed
    if sim.slate_size > sim.items:
        raise AbplatformError(
            f"simulation.slate_size ({sim.slate_size}) exceeds simulation.items ({sim.items})"
        )
    rng = np.random.default_rng([run_seed, 1])
    catalog = simulation_catalog(config)
    k = sim.slate_size
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = seconds.get(phase, 0.0) + now - clock
        clock = now

    missing = strategy_plan(config).skipped
    if missing:
        raise AbplatformError(
            f"variant {missing[0]!r} has no strategy; the simulator needs one per variant"
        )
    bandit = config.bandit
    world = build_world(sim, users=users, seed=run_seed)
    with engine.begin() as conn:
        session = Session(bind=conn)
        stored = save_experiment(session, config, catalog, discard_data=True)
        clear_experiment_data(session, stored.id)
        delete_catalog(conn, catalog)
        run_config = {"simulation": sim.model_dump(mode="json"), "users": world.n_users}
        run_id = start_run(session, stored.id, run_seed, run_config)
        progress("world", 0, 1)
        _write_world(conn, world, catalog)
        n_history = _write_history(conn, world, catalog, rng)
        progress("world", 1, 1)
        lap("world and history")

        clear_logging(session, config)
        logged: LoggingPeriod | None = None
        if sim.logging_days > 0:
            logged = play_logging_period(
                conn,
                config,
                world,
                catalog,
                start=EXPERIMENT_START,
                seed=run_seed,
                slates=VariantSlates,
                progress=progress,
            )
            n_history += logged.interactions
            lap("logging period")

        history = read_history(conn, catalog)
        # Rankers train on the logging period's impressions (none without one: they fall back).
        impressions = ImpressionSource(conn, experiment=config.logging_key)
        with logged_impressions(impressions) if logged else contextlib.nullcontext():
            served = train_and_serve(
                session,
                config,
                catalog,
                history,
                seed=run_seed,
                artifacts_dir=Path(artifacts_dir or default_artifacts_dir()),
                progress=progress,
            )
        notes = (() if logged is None else (logged.note(),)) + ranker_notes(
            served.strategies, logged
        )
        model_ids = served.model_ids([v.key for v in config.variants])
        index = history.catalog.index()
        sources: dict[str, SlateSource] = {
            key: VariantSlates(strategy, world, index, k)
            for key, strategy in served.strategies.items()
        }
        lap("fit")

        daily_rate = sim.sessions_per_user_per_day * world.user_activity
        truth_rng = np.random.default_rng([run_seed, 2])
        per_scene = scene_expectations(world, sources, sim.scenes, sim.truth_draws, truth_rng)
        truth = truth_from_scenes(per_scene, daily_rate * sim.days, config.metrics, sim.scenes)
        lap("slates and ground truth")
        played: BanditRun | None = None
        if bandit is None:
            decisions = build_policy(config).assign_batch(world.user_ids)
            tallies = _play(
                conn,
                config,
                stored.id,
                run_id,
                world,
                sources,
                decisions,
                daily_rate,
                sim,
                rng,
                progress,
                model_ids,
            )
        else:
            traffic = draw_traffic(world, daily_rate, sim, EXPERIMENT_START, rng)
            values = arm_values(bandit, per_scene, daily_rate * sim.days, sim.scenes)
            played = play_bandit(
                conn,
                config,
                bandit,
                stored.id,
                run_id,
                world,
                sources,
                traffic,
                values,
                rng,
                run_seed,
                progress,
                model_ids,
            )
            tallies = played.tallies
        lap("traffic")

        clean_truth = {
            metric: {v: (None if math.isnan(x) else x) for v, x in values.items()}
            for metric, values in truth.items()
        }
        ground_truth: dict[str, Any] = {"metrics": clean_truth}
        summary: dict[str, Any] = {
            "users": world.n_users,
            "items": world.n_items,
            "history_interactions": n_history,
            "variants": {key: vars(t) for key, t in tallies.items()},
        }
        if played is not None:
            ground_truth["bandit"] = played.truth
            summary["bandit"] = played.summary
        if logged is not None:
            summary["logging"] = logged.to_dict()
        finish_run(session, run_id, ground_truth=ground_truth, summary=summary)
        session.close()
    lap("commit")
    return SimulationResult(
        experiment=config.key,
        run_id=run_id,
        seed=run_seed,
        users=world.n_users,
        items=world.n_items,
        history_interactions=n_history,
        tallies=tallies,
        ground_truth=clean_truth,
        seconds=seconds,
        notes=notes + (() if played is None else played.notes),
        models=served.models,
    )


def _play(
    conn: Connection,
    config: ExperimentConfig,
    experiment_id: int,
    run_id: int,
    world: World,
    sources: dict[str, SlateSource],
    decisions: Any,
    daily_rate: npt.NDArray[np.float64],
    sim: SimulationConfig,
    rng: np.random.Generator,
    progress: Progress,
    model_ids: list[int | None],
) -> dict[str, VariantTally]:
    """Run the experiment day by day: sessions, scenes, slates, clicks, purchases, rows."""
    keys = [v.key for v in config.variants]
    tallies = {key: VariantTally() for key in keys}
    arm = decisions.variant_index
    covered = np.flatnonzero(arm >= 0)
    k = sim.slate_size
    days = sim.days
    seen = np.zeros(world.n_users, dtype=bool)
    event_seq = 0
    for day in range(days):
        progress("traffic", day, days)
        counts = rng.poisson(daily_rate[covered])
        users = np.repeat(covered, counts)
        if users.size == 0:
            continue
        ts = (
            EXPERIMENT_START
            + day * SECONDS_PER_DAY
            + rng.integers(0, SECONDS_PER_DAY - 3600, size=users.size)
        )
        order = np.argsort(ts, kind="stable")
        users, ts = users[order], ts[order]
        contexts = draw_contexts(world, users, draw_scenes(sim.scenes, users.size, rng), rng)
        user_arm = arm[users]
        items, labels, clicked, bought = sample_sessions(
            world, sources, keys, users, contexts, user_arm, k, rng
        )

        block = SessionBlock(
            users,
            ts,
            contexts,
            user_arm,
            decisions.propensity[users],
            decisions.bucket[users],
            items,
            clicked,
            bought,
            item_sources=labels,
        )
        event_seq = write_sessions(
            conn,
            world,
            block,
            keys,
            experiment_id=experiment_id,
            run_id=run_id,
            event_seq=event_seq,
            model_ids=model_ids,
        )
        seen[users] = True
        for a, key in enumerate(keys):
            in_arm = user_arm == a
            tally = tallies[key]
            tally.exposures += int(in_arm.sum())
            tally.impressions += int(in_arm.sum()) * k
            tally.clicks += int(clicked[in_arm].sum())
            tally.purchases += int(bought[in_arm].sum())
            tally.revenue += float((bought[in_arm] * world.item_price[items[in_arm]]).sum())
    for a, key in enumerate(keys):
        tallies[key].units = int((seen & (arm == a)).sum())
    progress("traffic", days, days)
    return tallies
