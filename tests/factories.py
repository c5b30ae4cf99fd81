"""Builders shared by several test modules: CLI runs, seeded experiments, configs, data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from abplatform.config import ExperimentConfig, load_experiment_text
from abplatform.domain import Catalog, InteractionLog
from abplatform.storage import models as m
from abplatform.storage.bulk import bulk_insert, seconds_to_sql
from abplatform.storage.db import transaction
from abplatform.storage.repository import save_experiment, utcnow
from simulator.synthetic import (
    SyntheticSpec,
    SyntheticUnits,
    SyntheticVariant,
    experiment_yaml,
    write_synthetic,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# The real `abplatform` command line, run as a subprocess
# ---------------------------------------------------------------------------


def cli(*args: str, db: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `abplatform ARGS` from the checkout; the database is `db`, never the environment's."""
    env = {k: v for k, v in os.environ.items() if k != "ABPLATFORM_DATABASE_URL"}
    if db is not None:
        env["ABPLATFORM_DATABASE_URL"] = db
    return subprocess.run(
        [sys.executable, "-m", "abplatform.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


# ---------------------------------------------------------------------------
# Seeded experiments for the analysis and report tests
# ---------------------------------------------------------------------------


T0 = 1_700_000_000  # unix seconds; every timestamp below is T0 + offset


@dataclass(frozen=True)
class Exposure:
    """One exposure row to seed: (unit, variant, offset seconds, slate size)."""

    unit: str
    variant: str
    t: int
    slate: int


@dataclass(frozen=True)
class Event:
    """One event row to seed; `experiment_id` None means the event's own experiment."""

    unit: str
    type: str
    t: int
    value: float | None = None


def create_experiment(engine: Engine, yaml_text: str) -> int:
    """Save an experiment from its YAML; return its id."""
    with transaction(engine) as session:
        return save_experiment(session, load_experiment_text(yaml_text), "shop").id


def seed_exposures(engine: Engine, experiment_id: int, rows: Sequence[Exposure]) -> None:
    """Bulk-insert exposures of one experiment."""
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "exposures",
            {
                "experiment_id": [experiment_id] * len(rows),
                "variant": [r.variant for r in rows],
                "unit_id": [r.unit for r in rows],
                "ts": seconds_to_sql([T0 + r.t for r in rows]),
                "propensity": [0.5] * len(rows),
                "slate_size": [r.slate for r in rows],
            },
        )


def seed_events(
    engine: Engine, experiment_id: int | None, rows: Sequence[Event], prefix: str
) -> None:
    """Bulk-insert events of one experiment (or of none when `experiment_id` is None)."""
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "events",
            {
                "event_id": [f"{prefix}-{i}" for i in range(len(rows))],
                "experiment_id": [experiment_id] * len(rows),
                "unit_id": [r.unit for r in rows],
                "type": [r.type for r in rows],
                "value": [r.value for r in rows],
                "ts": seconds_to_sql([T0 + r.t for r in rows]),
            },
        )


def add_run(
    engine: Engine, experiment_id: int, status: str, ground_truth: dict[str, Any] | None
) -> int:
    """Record a simulation run; return its id."""
    with transaction(engine) as session:
        run = m.SimulationRun(
            experiment_id=experiment_id,
            seed=1234,
            status=status,
            config={},
            ground_truth=ground_truth,
            started_at=utcnow(),
        )
        session.add(run)
        session.flush()
        return run.id


# ---------------------------------------------------------------------------
# A tiny two-variant experiment computed by hand (tests/reports/test_analysis.py)
# ---------------------------------------------------------------------------


def tiny_yaml(key: str = "tiny", description: str = "hand-made") -> str:
    """YAML of the hand-computed experiment of `seed_tiny`: two variants, all five metrics."""
    return experiment_yaml(key, {"control": 0.5, "treatment": 0.5}, description=description)


def seed_tiny(engine: Engine, key: str = "tiny", description: str = "hand-made") -> int:
    """Seed the hand-computed experiment described in `test_tiny_sufficient_statistics`."""
    experiment_id = create_experiment(engine, tiny_yaml(key, description))
    other_id = create_experiment(engine, tiny_yaml(f"{key}-other", "x"))
    seed_exposures(
        engine,
        experiment_id,
        [
            Exposure("c1", "control", 100, 5),
            Exposure("c1", "control", 200, 5),
            Exposure("c2", "control", 100, 4),
            Exposure("c3", "control", 300, 6),
            Exposure("t1", "treatment", 100, 5),
            Exposure("t1", "treatment", 150, 5),
            Exposure("t1", "treatment", 400, 5),
            Exposure("t2", "treatment", 200, 10),
            Exposure("t3", "treatment", 200, 3),
            Exposure("x1", "control", 100, 5),  # x1 sees both variants: excluded
            Exposure("x1", "treatment", 200, 5),
            Exposure("g1", "legacy", 100, 5),  # a variant missing from the config
        ],
    )
    # c1 was exposed earlier in another experiment: that must not move its first exposure.
    seed_exposures(engine, other_id, [Exposure("c1", "control", 50, 7)])
    seed_events(
        engine,
        experiment_id,
        [
            Event("c1", "click", 50),  # before c1's first exposure (100): ignored
            Event("c1", "click", 60),  # after the other experiment's exposure only: ignored
            Event("c1", "purchase", 90, 99.0),  # before: ignored
            Event("c1", "click", 120),
            Event("c1", "click", 210),
            Event("c1", "purchase", 220, 20.0),
            Event("c2", "click", 100),  # exactly at the first exposure: counted
            Event("c2", "click", 130),
            Event("c2", "add_to_cart", 140),  # no metric uses it
            Event("t1", "click", 110),
            Event("t1", "click", 160),
            Event("t1", "click", 170),
            Event("t1", "purchase", 180, 30.0),
            Event("t1", "purchase", 190, None),  # NULL value: 1 in count, 0 in sum
            Event("t2", "click", 250),
            Event("t2", "purchase", 260, 15.5),
            Event("t3", "click", 100),  # before t3's first exposure (200): ignored
            Event("x1", "click", 300),  # excluded unit
            Event("ghost", "click", 300),  # never exposed: not a unit
        ],
        prefix=f"{key}-ev",
    )
    # Events of another experiment, and without experiment, are not this experiment's.
    seed_events(engine, other_id, [Event("c1", "click", 150)], prefix=f"{key}-other")
    seed_events(engine, None, [Event("c1", "purchase", 150, 5.0)], prefix=f"{key}-none")
    return experiment_id


# ---------------------------------------------------------------------------
# A random three-variant experiment of `simulator.synthetic`, with its per-unit truth
# ---------------------------------------------------------------------------


FOUR_METRICS = ("conversion", "clicks_per_user", "revenue_per_user", "ctr")  # no order_value

RANDOM_VARIANTS = (
    SyntheticVariant("control", 0.5),
    SyntheticVariant("treatment", 0.3, click_lift=1.15),
    SyntheticVariant("other", 0.2, click_lift=0.95),
)
# 1-3 exposures a unit of 0-10 items (an empty slate is allowed); 10% of purchases carry
# no value (NULL); 20% of units click before their first exposure (ignored).
RANDOM_SPEC = SyntheticSpec(
    variants=RANDOM_VARIANTS,
    exposures_per_unit=(1, 3),
    slate_sizes=(0, 10),
    exposure_seconds=(1_000, 99_999),
    click_rate=0.08,
    purchase_rate=0.3,
    valueless_share=0.1,
    early_share=0.2,
    event_seconds=5_000,
    early_seconds=500,
)


def seed_random_experiment(
    engine: Engine, key: str = "random", n_units: int = 2_000, seed: int = 20240601
) -> SyntheticUnits:
    """Seed a random 3-variant experiment (`RANDOM_SPEC`); return its per-unit truth."""
    yaml_text = experiment_yaml(
        key,
        {v.key: v.weight for v in RANDOM_VARIANTS},
        description="random experiment",
        metrics=FOUR_METRICS,
    )
    experiment_id = create_experiment(engine, yaml_text)
    return write_synthetic(engine, experiment_id, n_units, RANDOM_SPEC, np.random.default_rng(seed))


# ---------------------------------------------------------------------------
# A three-variant experiment whose outcomes correlate with each unit's history (CUPED)
# ---------------------------------------------------------------------------


CUPED_VARIANTS = ("control", "treatment", "other")


def cuped_yaml(key: str, analysis: str) -> str:
    """YAML of the three-variant experiment of `seed_world`; `analysis` is the indented body."""
    weights = dict(zip(CUPED_VARIANTS, (0.34, 0.33, 0.33), strict=True))
    return experiment_yaml(key, weights, metrics=FOUR_METRICS, analysis=analysis)


def seed_interactions(engine: Engine, rows: list[tuple[str, str, str, int, float | None]]) -> None:
    """History rows (catalog, user, type, offset seconds, value)."""
    with engine.begin() as conn:
        bulk_insert(
            conn,
            "interactions",
            {
                "catalog": [r[0] for r in rows],
                "user_id": [r[1] for r in rows],
                "item_id": ["i"] * len(rows),
                "type": [r[2] for r in rows],
                "value": [r[4] for r in rows],
                "ts": seconds_to_sql([T0 + r[3] for r in rows]),
            },
        )


def seed_world(
    engine: Engine, key: str, analysis: str, yaml_text: str | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """A 3-variant experiment whose outcomes correlate with each unit's history.

    Returns the per-unit arrays (y: clicks, revenue, converted; x: the same before exposure)
    per variant, as the oracle sees them. `yaml_text` replaces the experiment's YAML (same
    three variants; `analysis` is then ignored).
    """
    rng = np.random.default_rng(21)
    experiment_id = create_experiment(engine, yaml_text or cuped_yaml(key, analysis))
    exposures, events, history = [], [], []
    truth: dict[str, dict[str, list[float]]] = {
        v: {k: [] for k in ("clicks", "revenue", "conv", "buys")}
        | {k: [] for k in ("x_clicks", "x_revenue", "x_conv", "x_buys")}
        for v in CUPED_VARIANTS
    }
    for i in range(150):
        variant = CUPED_VARIANTS[i % 3]
        unit = f"u{i}"
        start = 10_000 + int(rng.integers(0, 500))
        exposures.append(Exposure(unit, variant, start, 4))
        activity = rng.gamma(1.5)
        # History: before the first exposure counts; after it, or in another catalog, not.
        n_pre = int(rng.poisson(3 * activity))
        pre_rev = 0.0
        for _ in range(n_pre):
            history.append(("shop", unit, "click", start - int(rng.integers(1, 5000)), None))
        n_pre_buy = int(rng.poisson(activity))
        for _ in range(n_pre_buy):
            price = float(rng.uniform(5, 50))
            pre_rev += price
            history.append(("shop", unit, "purchase", start - int(rng.integers(1, 5000)), price))
        history.append(("shop", unit, "click", start + 5, None))  # after exposure: ignored
        history.append(("elsewhere", unit, "purchase", start - 10, 1000.0))  # other catalog
        lift = 1.3 if variant == "treatment" else 1.0
        n_clicks = int(rng.poisson(2 * activity * lift))
        n_buys = int(rng.poisson(0.5 * activity * lift))
        revenue = 0.0
        for _ in range(n_clicks):
            events.append(Event(unit, "click", start + int(rng.integers(0, 900))))
        for _ in range(n_buys):
            price = float(rng.uniform(5, 50))
            revenue += price
            events.append(Event(unit, "purchase", start + int(rng.integers(0, 900)), price))
        row = truth[variant]
        row["clicks"].append(n_clicks)
        row["revenue"].append(revenue)
        row["conv"].append(float(n_buys > 0))
        row["buys"].append(n_buys)
        row["x_buys"].append(n_pre_buy)
        row["x_clicks"].append(n_pre)
        row["x_revenue"].append(pre_rev)
        row["x_conv"].append(float(n_pre_buy > 0))
    seed_exposures(engine, experiment_id, exposures)
    seed_events(engine, experiment_id, events, prefix=key)
    seed_interactions(engine, history)
    return {v: {k: np.asarray(a, dtype=float) for k, a in d.items()} for v, d in truth.items()}


# ---------------------------------------------------------------------------
# Well-formedness of rendered HTML
# ---------------------------------------------------------------------------


VOID_ELEMENTS = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source"}


class TagChecker(HTMLParser):
    """Tracks open elements and records every problem that makes the page ill-formed."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.start_tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.start_tags.append((tag, dict(attrs)))
        if tag not in VOID_ELEMENTS:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.start_tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


# ---------------------------------------------------------------------------
# A small simulated experiment
# ---------------------------------------------------------------------------


SMALL_YAML = """
key: sim_small
variants:
  - {key: control, weight: 0.5, strategy: {kind: popularity}}
  - {key: treatment, weight: 0.5, strategy: {kind: random}}
metrics:
  - {name: purchase_rate, type: proportion, event: purchase}
  - {name: revenue, type: mean, event: purchase, value: sum}
  - {name: ctr, type: ratio, numerator: {event: click}, denominator: {event: impression}}
simulation: {users: 400, days: 2, items: 150, slate_size: 5, seed: 3}
"""


def small_config(text: str = SMALL_YAML) -> ExperimentConfig:
    return load_experiment_text(text)


# ---------------------------------------------------------------------------
# A simulated Thompson-sampling experiment
# ---------------------------------------------------------------------------


# Random slates sell far less than popular ones: a clear-cut world with one bad arm.
BANDIT_YAML = """
key: sim_bandit
assignment:
  type: thompson
  reward_metric: purchase_rate
  update_every: 150
  burn_in_units: 30
  min_weight: MIN_WEIGHT
  sticky: STICKY
  context: CONTEXT
  draws: 2000
  seed: 5
variants:
  - {key: pop, strategy: {kind: popularity}}
  - {key: rnd, strategy: {kind: random}}
  - {key: pop_cat, strategy: {kind: popularity, params: {per_category: true}}}
metrics:
  - {name: purchase_rate, type: proportion, event: purchase}
  - {name: revenue, type: mean, event: purchase, value: sum}
simulation:
  users: 1500
  days: 3
  items: 200
  slate_size: 5
  seed: 11
  scenes: {home_page: 0.7, product_detail: 0.3}
"""


def bandit_config(
    *, sticky: bool = True, context: str | None = None, min_weight: float = 0.0
) -> ExperimentConfig:
    text = (
        BANDIT_YAML.replace("STICKY", "true" if sticky else "false")
        .replace("CONTEXT", context or "null")
        .replace("MIN_WEIGHT", str(min_weight))
    )
    return load_experiment_text(text)


# ---------------------------------------------------------------------------
# Two-tower training data
# ---------------------------------------------------------------------------


GENRE_END = 1_770_000_000


GENRE_PARAMS: dict[str, Any] = {
    "embedding_dim": 8,
    "hidden_units": [16],
    "epochs": 6,
    "batch_size": 64,
    "history_length": 5,
    "learning_rate": 0.01,
    "validation_fraction": 0.0,
    "exclude_purchased": False,
}


def genre_world(seed: int = 0, cold_items: int = 4) -> InteractionLog:
    """40 movies, half tagged `drama`, half `comedy`; each of 60 users clicks one genre only.

    The last `cold_items` movies of each genre are never clicked: only their tags say
    who would like them. Users' profiles name their taste (`taste: drama|comedy`).
    """
    rng = np.random.default_rng(seed)
    n_items = 40
    genre = np.array(["drama" if i % 2 == 0 else "comedy" for i in range(n_items)])
    extra = np.array(["" if i % 3 else "|classic" for i in range(n_items)])
    catalog = Catalog(
        item_ids=np.array([f"movie-{i:02d}" for i in range(n_items)]),
        categories=np.full(n_items, ""),
        brands=np.full(n_items, ""),
        prices=np.full(n_items, np.nan),
        tags=np.char.add(genre, extra),
    )
    warm = np.arange(n_items - 2 * cold_items)
    users, items = [], []
    for u in range(60):
        taste = "drama" if u % 2 == 0 else "comedy"
        mine = warm[genre[warm] == taste]
        for item in rng.choice(mine, size=8, replace=False):
            users.append(f"user-{u:02d}")
            items.append(int(item))
    n = len(users)
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array(users),
        item_ids=catalog.item_ids[np.array(items)],
        event_types=np.full(n, "click"),
        values=np.full(n, np.nan),
        timestamps=GENRE_END - np.arange(n, 0, -1, dtype=np.int64) * 60,
        user_features={
            f"user-{u:02d}": {"taste": "drama" if u % 2 == 0 else "comedy"} for u in range(60)
        },
    )


# ---------------------------------------------------------------------------
# A small hand-made catalogue and history that every strategy can fit on
# ---------------------------------------------------------------------------

DAY = 86_400

HISTORY_END = 1_770_000_000


def make_history(
    seed: int = 0, n_items: int = 60, n_users: int = 40, n_events: int = 800
) -> InteractionLog:
    """Seeded catalogue of `n_items` in 4 categories and random clicks and purchases."""
    rng = np.random.default_rng(seed)
    catalog = Catalog(
        item_ids=np.array([f"item-{i:03d}" for i in range(n_items)]),
        categories=np.array([f"cat-{i % 4}" for i in range(n_items)]),
        brands=np.array([f"brand-{i % 7}" for i in range(n_items)]),
        prices=rng.uniform(1, 100, size=n_items).round(2),
    )
    # Skewed item popularity so rankings are well defined.
    weights = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, size=n_events, p=weights / weights.sum())
    users = rng.integers(0, n_users, size=n_events)
    types = np.where(rng.random(n_events) < 0.2, "purchase", "click")
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array([f"user-{u}" for u in users]),
        item_ids=catalog.item_ids[items],
        event_types=types.astype(str),
        values=np.where(types == "purchase", catalog.prices[items], np.nan),
        timestamps=np.sort(HISTORY_END - rng.integers(0, 20 * DAY, size=n_events)),
    )
