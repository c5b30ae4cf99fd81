"""Benchmark of `reports.analysis.analyze` on a synthetic experiment: seconds and peak memory.

Usage::

    .venv/bin/python bench/bench_analyze.py                       # 1M users x 10 impressions
    .venv/bin/python bench/bench_analyze.py --users 100000 --db postgresql://HOST/SCRATCH_DB

The data (exposures with a slate size, a few % click events, purchases with a
value, and some events before the first exposure) is written by
`simulator.synthetic`. The experiment is analysed at the full
size and at 1/10 of it, each time in a fresh child process, so the peak RSS
reported is that of the analysis alone: it should not grow with impressions,
because per-unit rows never leave the database.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select, text

from abplatform.config.loader import load_experiment_text
from abplatform.storage import models as m
from abplatform.storage.db import is_sqlite, make_engine, open_database, transaction, upgrade
from abplatform.storage.repository import get_experiment, save_experiment
from reports.aggregate import build_aggregate_query
from reports.analysis import analyze
from simulator.synthetic import SyntheticSpec, SyntheticVariant, experiment_yaml, write_synthetic

CHUNK_USERS = 200_000
SLATE_SIZE = 5
DAY = 86_400
# Clicks per impression: 3.0% control, 3.3% treatment; 10% of clicks convert; 5% of users
# click once before their first exposure (the analysis must ignore it).
VARIANTS = (SyntheticVariant("control", 0.5), SyntheticVariant("treatment", 0.5, 1.1))


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def experiment_key(users: int, impressions_per_user: int) -> str:
    """Key of the synthetic experiment of this size."""
    return f"bench-{users}u-{impressions_per_user}i"


def build(engine: Engine, users: int, impressions_per_user: int, seed: int) -> tuple[str, int]:
    """Create the synthetic experiment unless it exists; return its key and impressions."""
    key = experiment_key(users, impressions_per_user)
    with transaction(engine) as session:
        existing = session.scalars(
            select(m.Experiment.id).where(m.Experiment.key == key)
        ).one_or_none()
        if existing is not None:
            total = session.scalar(
                select(func.sum(m.Exposure.slate_size)).where(m.Exposure.experiment_id == existing)
            )
            return key, int(total or 0)
        description = (
            f"synthetic benchmark experiment ({users} users, {impressions_per_user} "
            "impressions per user)"
        )
        yaml_text = experiment_yaml(
            key, {v.key: v.weight for v in VARIANTS}, description=description
        )
        experiment_id = save_experiment(session, load_experiment_text(yaml_text), "bench").id
    slate = max(1, min(SLATE_SIZE, impressions_per_user))
    # 1..most exposures a user, uniform: about `impressions_per_user` impressions on average
    # (exactly when 2 x impressions_per_user / slate is odd, as at the default 10 / 5).
    most = max(1, round(2 * impressions_per_user / slate - 1))
    spec = SyntheticSpec(
        variants=VARIANTS,
        exposures_per_unit=(1, most),
        slate_sizes=(slate, slate),
        exposure_seconds=(0, 7 * DAY),
        click_rate=0.030,
        purchase_rate=0.10,
        early_share=0.05,
        event_seconds=2 * DAY,
        early_seconds=DAY,
        chunk_units=CHUNK_USERS,
    )
    started = time.perf_counter()
    written = write_synthetic(
        engine, experiment_id, users, spec, np.random.default_rng(seed), _print_progress
    )
    with engine.begin() as conn:
        # Fresh statistics, as a database that has been running for a while would have.
        conn.execute(text("ANALYZE"))
    print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return key, int(written.impressions.sum())


def _print_progress(stage: str, done: int, total: int) -> None:
    print(f"  wrote users {done:>10,}/{total:,}", file=sys.stderr, flush=True)


def query_plan(engine: Engine, key: str) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of the aggregation query (empty on other databases)."""
    if not is_sqlite(engine):
        return []
    with transaction(engine) as session:
        stored = get_experiment(session, key)
        query = build_aggregate_query(
            stored.id, [v.key for v in stored.config.variants], stored.config.metrics
        )
        sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
        rows = session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
    return [str(row[-1]) for row in rows]


def measure(url: str, key: str) -> dict[str, Any]:
    """Time `analyze` in this process; peak RSS before and after."""
    engine = open_database(url)
    rss_before = peak_rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = analyze(engine, key)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    engine.dispose()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb_before": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "units": sum(result.units.values()),
        "srm_p": result.srm.p_value,
    }


def _child(*args: str) -> dict[str, Any]:
    """Run this script with `args` in a fresh interpreter and return its JSON output.

    Linux carries the parent's peak RSS across fork+exec into ``ru_maxrss``, so
    the parent stays small: the data is generated in one child and each
    analysis runs in another.
    """
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    """Build the synthetic experiments (full size and 1/10) and time their analysis."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="database URL (default: a temp SQLite file)")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--impressions-per-user", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--measure", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        print(json.dumps(measure(args.db, args.measure)))
        return
    if args.build:
        engine = make_engine(args.db)
        upgrade(engine)  # idempotent; a fresh PostgreSQL database needs the schema
        key, impressions = build(engine, args.users, args.impressions_per_user, args.seed)
        engine.dispose()
        print(json.dumps({"key": key, "impressions": impressions}))
        return

    url = args.db
    if url is None:
        folder = tempfile.mkdtemp(prefix="abp-bench-")
        url = f"sqlite:///{os.path.join(folder, 'bench.db')}"
    print(f"database: {url}")
    sizes = [args.users, max(2, args.users // 10)]
    built = [
        _child(
            "--build",
            "--db",
            url,
            "--users",
            str(users),
            "--impressions-per-user",
            str(args.impressions_per_user),
            "--seed",
            str(args.seed),
        )
        for users in sizes
    ]
    engine = open_database(url)
    plan = query_plan(engine, built[0]["key"])
    if plan:
        print("query plan (SQLite EXPLAIN QUERY PLAN):")
        for line in plan:
            print(f"  {line}")
        with engine.connect() as conn:
            cache = int(conn.exec_driver_sql("PRAGMA cache_size").scalar_one())
        # Negative cache_size is in KiB: the page cache caps what SQLite itself holds.
        limit = f"{-cache / 1024:.0f} MiB" if cache < 0 else f"{cache} pages"
        print(f"SQLite page cache limit per connection: {limit}")
    engine.dispose()
    # cpu s is this process's CPU time: SQLite runs in-process, PostgreSQL does not.
    print(
        f"{'users':>10} {'impressions':>12} {'seconds':>8} {'cpu s':>6} {'impr/s':>12} "
        f"{'peak RSS MiB':>13}"
    )
    for users, info in zip(sizes, built, strict=True):
        run = _child("--measure", info["key"], "--db", url)
        rate = info["impressions"] / run["seconds"]
        print(
            f"{users:>10,} {info['impressions']:>12,} {run['seconds']:>8.2f} "
            f"{run['cpu_seconds']:>6.2f} {rate:>12,.0f} "
            f"{run['peak_rss_mb']:>13.0f}  (before analyze: {run['peak_rss_mb_before']:.0f})"
        )


if __name__ == "__main__":
    main()
