"""Benchmark of `reports.analysis.analyze`: seconds per stage, per 10M impressions, peak memory.

Usage::

    .venv/bin/python bench/bench_analyze.py                        # realistic, 40,000 users
    .venv/bin/python bench/bench_analyze.py --users 400000         # realistic, 10x
    .venv/bin/python bench/bench_analyze.py --db postgresql://HOST/DB --db sqlite:///x.db
    .venv/bin/python bench/bench_analyze.py --synthetic            # 1M users x 10 impressions
    .venv/bin/python bench/bench_analyze.py --synthetic --users 100000 --db postgresql://HOST/DB

Realistic mode (the default) simulates `examples/homepage_popularity.yaml` and
`examples/multi_scene.yaml` at ``--users`` with the real simulator (strategies fitted,
slates served, clicks and purchases from the choice model), once per database, on SQLite
(a file under ``--data-dir``) and on PostgreSQL (a scratch database per example, created
on the server at ``--pg``, kept for the next run unless ``--drop``). A database that
already holds the completed run is reused: simulating is slower than analysing. Each
analysis runs in a fresh child process and prints its stages (`reports.stages`): the
aggregate SQL (units, metrics and CUPED sums are one query; its parts are timed apart
by re-running it with fewer terms), the statistics in Python, ranking quality, ground
truth, rendering of the HTML report, the total, seconds per 10M impressions and the peak
RSS.

Synthetic mode writes the data with `simulator.synthetic` (exposures with a slate size,
a few % click events, purchases with a value, and some events before the first exposure)
and analyses the experiment at the full size and at 1/10 of it, each time in a fresh
child process, so the peak RSS reported is that of the analysis alone: it should not
grow with impressions, because per-unit rows never leave the database.
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
from pathlib import Path
from typing import Any

import numpy as np
import realistic_runs as realistic
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


def measure(url: str | None, key: str) -> dict[str, Any]:
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
    """Realistic (default) or synthetic benchmark, per the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--synthetic", action="store_true", help="the synthetic experiment instead of examples"
    )
    parser.add_argument(
        "--db",
        action="append",
        default=None,
        help="database URL (repeatable; default: SQLite under --data-dir and a scratch "
        "PostgreSQL database at --pg; synthetic mode: a temp SQLite file)",
    )
    parser.add_argument("--users", type=int, default=None, help="40,000 (synthetic: 1M)")
    parser.add_argument("--impressions-per-user", type=int, default=10, help="synthetic only")
    parser.add_argument("--seed", type=int, default=7, help="synthetic only")
    parser.add_argument("--data-dir", type=Path, default=realistic.DATA_DIR)
    parser.add_argument("--pg", default=realistic.PG_ADMIN_URL, help="PostgreSQL server URL")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--drop", action="store_true", help="drop the scratch databases after")
    parser.add_argument("--examples", nargs="+", default=list(realistic.EXAMPLES))
    parser.add_argument("--measure", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--measure-stages", metavar="KEY", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--simulate-example", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    url = args.db[0] if args.db else None

    if args.simulate_example:
        print(json.dumps(realistic.simulate_example(url, args.simulate_example, args.users)))
        return

    if args.measure_stages:
        print(json.dumps(realistic.measure_stages(url, args.measure_stages)))
        return
    if not (args.synthetic or args.build or args.measure):  # the children are synthetic's
        realistic.run(args, _child)
        return
    args.users = args.users or 1_000_000
    if args.measure:
        print(json.dumps(measure(url, args.measure)))
        return
    if args.build:
        engine = make_engine(url)
        upgrade(engine)  # idempotent; a fresh PostgreSQL database needs the schema
        key, impressions = build(engine, args.users, args.impressions_per_user, args.seed)
        engine.dispose()
        print(json.dumps({"key": key, "impressions": impressions}))
        return

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
