"""Realistic mode of bench_analyze.py: simulated example experiments, analysed stage by stage."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from timing import peak_rss_mib

from abplatform.config.loader import load_experiment
from abplatform.storage import models as m
from abplatform.storage.db import (
    open_database,
    refresh_planner_statistics,
    transaction,
    upgrade,
    with_local_settings,
)
from abplatform.storage.repository import get_experiment, latest_simulation
from reports.aggregate import aggregate_experiment
from reports.analysis import POSTGRES_SETTINGS, analyze
from reports.render import render_report
from reports.stages import recording
from reports.units import PrePeriod

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "homepage_popularity": ROOT / "examples" / "homepage_popularity.yaml",
    "multi_scene": ROOT / "examples" / "multi_scene.yaml",
}
DATA_DIR = Path.home() / ".cache" / "abplatform-bench"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_USERS = 40_000
TEN_MILLION = 10_000_000
STAGES = (
    "units",
    "metrics",
    "CUPED",
    "statistics",
    "ranking quality",
    "ground truth",
    "rendering",
)

Child = Callable[..., dict[str, Any]]


def _impressions(engine: Engine, key: str) -> int:
    with transaction(engine) as session:
        stored = get_experiment(session, key)
        total = session.scalar(
            select(func.sum(m.Exposure.slate_size)).where(m.Exposure.experiment_id == stored.id)
        )
    return int(total or 0)


def simulated(url: str, key: str) -> bool:
    """Whether the database already holds a completed simulated run of ``key``."""
    engine = open_database(url)
    try:
        with transaction(engine) as session:
            row = session.scalars(select(m.Experiment.id).where(m.Experiment.key == key)).first()
            run = latest_simulation(session, row) if row is not None else None
        return run is not None and run.status == "completed"
    finally:
        engine.dispose()


def simulate_example(url: str | None, key: str, users: int) -> dict[str, Any]:
    """Simulate example ``key`` at ``users`` into ``url`` (in a child: its RSS stays there)."""
    from simulator.runner import simulate

    engine = open_database(url)
    started = time.perf_counter()
    simulate(engine, load_experiment(EXAMPLES[key]), users=users)
    seconds = time.perf_counter() - started
    impressions = _impressions(engine, key)
    engine.dispose()
    return {"seconds": seconds, "impressions": impressions}


def _aggregate_seconds(engine: Engine, key: str) -> dict[str, float]:
    """The aggregate query's parts: units alone, + metrics, + CUPED covariate sums."""
    local = with_local_settings(engine, POSTGRES_SETTINGS)
    refresh_planner_statistics(local)
    with transaction(local) as session:
        stored = get_experiment(session, key)
        config = stored.config
        settings = config.analysis
        variants = [v.key for v in config.variants]
        pre = PrePeriod(
            stored.catalog, settings.pre_period.naive_utc() if settings.pre_period else None
        )
        seconds = []
        for metrics, covariates in (
            ((), ()),
            (config.metrics, ()),
            (config.metrics, config.metrics if settings.cuped else ()),
        ):
            started = time.perf_counter()
            aggregate_experiment(
                session, stored.id, variants, metrics, covariates=covariates, pre_period=pre
            )
            seconds.append(time.perf_counter() - started)
    return {
        "units": seconds[0],
        "metrics": max(0.0, seconds[1] - seconds[0]),
        "CUPED": max(0.0, seconds[2] - seconds[1]),
    }


def measure_stages(url: str | None, key: str) -> dict[str, Any]:
    """Analyse ``key`` once, timing its stages, and render its report; peak RSS after."""
    engine = open_database(url)
    impressions = _impressions(engine, key)
    started = time.perf_counter()
    with recording() as stages:
        result = analyze(engine, key)
    total = time.perf_counter() - started
    started = time.perf_counter()
    render_report(result)
    rendering = time.perf_counter() - started
    parts = _aggregate_seconds(engine, key)
    engine.dispose()
    return {
        "impressions": impressions,
        "units": sum(result.units.values()),
        "stages": stages,
        "aggregate_parts": parts,
        "rendering": rendering,
        "analysis": total,
        "peak_rss_mib": peak_rss_mib(),
    }


def _scratch_pg(admin_url: str, name: str) -> str:
    """URL of PostgreSQL database ``name`` on the server of ``admin_url`` (made if missing)."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}) is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))  # name from our own pattern
    admin.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def _drop_pg(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _targets(args: argparse.Namespace, users: int) -> list[tuple[str, str]]:
    """(label, URL) of every database to run on."""
    if args.db:
        return [(url.split(":", 1)[0].split("+")[0], url) for url in args.db]
    args.data_dir.mkdir(parents=True, exist_ok=True)
    targets = [("sqlite", f"sqlite:///{args.data_dir / f'analyze-{users}.db'}")]
    if not args.no_pg:
        try:
            targets.append(("postgresql", _scratch_pg(args.pg, f"abp_bench_analyze_{users}")))
        except OperationalError as exc:  # no server: SQLite alone, and say so
            print(f"PostgreSQL at {args.pg} unreachable, skipped: {exc.orig}", flush=True)
    return targets


def run(args: argparse.Namespace, child: Child) -> None:
    """Simulate (unless stored) and analyse each example on each database; print the table."""
    users = args.users or DEFAULT_USERS
    targets = _targets(args, users)
    header = (
        f"{'database':<11} {'experiment':<20} {'units':>7} {'impressions':>11} "
        + " ".join(f"{s:>9.9}" for s in STAGES)
        + f" {'total':>7} {'s/10M':>7} {'RSS MiB':>8}"
    )
    rows = []
    for label, url in targets:
        for key in args.examples:
            if simulated(url, key):
                print(f"{label}: {key} already simulated, reused", flush=True)
            else:
                made = child("--db", url, "--simulate-example", key, "--users", str(users))
                print(
                    f"{label}: simulated {key} at {users:,} users in {made['seconds']:.0f} s "
                    f"({made['impressions']:,} impressions)",
                    flush=True,
                )
            info = child("--measure-stages", key, "--db", url)
            rows.append((label, key, info))
            print(json.dumps({"database": label, "experiment": key, **info}), flush=True)
    print(f"\n{users:,} users; seconds per stage (units/metrics/CUPED: SQL, timed apart)")
    print(header)
    for label, key, info in rows:
        stages, parts = info["stages"], info["aggregate_parts"]
        values = [
            parts["units"],
            parts["metrics"],
            parts["CUPED"],
            stages.get("statistics", 0.0),
            stages.get("ranking quality", 0.0),
            stages.get("ground truth", 0.0),
            info["rendering"],
        ]
        total = info["analysis"] + info["rendering"]
        per_10m = total * TEN_MILLION / max(1, info["impressions"])
        print(
            f"{label:<11} {key:<20} {info['units']:>7,} {info['impressions']:>11,} "
            + " ".join(f"{v:>9.2f}" for v in values)
            + f" {total:>7.2f} {per_10m:>7.1f} {info['peak_rss_mib']:>8.0f}"
        )
    print(
        "total = analyze (incl. planner statistics, aggregate SQL, statistics, ranking, "
        "ground truth) + rendering; units + metrics + CUPED ~ the aggregate SQL stage "
        "(each part timed apart by re-running the query with fewer terms)"
    )
    if args.drop and not args.db and not args.no_pg:
        _drop_pg(args.pg, f"abp_bench_analyze_{users}")
