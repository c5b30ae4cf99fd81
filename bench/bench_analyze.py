"""Benchmark of `reports.analysis.analyze` on a synthetic experiment: seconds and peak memory.

Usage::

    .venv/bin/python bench/bench_analyze.py                       # 1M users x 10 impressions
    .venv/bin/python bench/bench_analyze.py --users 100000 --db postgresql://HOST/SCRATCH_DB

The data (exposures with a slate size, a few % click events, purchases with a
value, and some events before the first exposure) is written with
`abplatform.storage.rows`. The experiment is analysed at the full
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
from abplatform.storage.rows import (
    EventColumns,
    ExposureColumns,
    insert_events,
    insert_exposures,
    reserve_exposure_ids,
)
from reports.aggregate import build_aggregate_query
from reports.analysis import analyze

CHUNK_USERS = 200_000
SLATE_SIZE = 5
T0 = 1_700_000_000  # unix seconds of the first exposure

CONFIG = """
key: {key}
description: synthetic benchmark experiment ({users} users, {ipu} impressions per user)
variants:
  - {{key: control, weight: 0.5}}
  - {{key: treatment, weight: 0.5}}
metrics:
  - {{name: conversion, type: proportion, event: purchase}}
  - {{name: clicks_per_user, type: mean, event: click}}
  - {{name: revenue_per_user, type: mean, event: purchase, value: sum}}
  - name: ctr
    type: ratio
    numerator: {{event: click}}
    denominator: {{event: impression}}
  - name: order_value
    type: ratio
    numerator: {{event: purchase, value: sum}}
    denominator: {{event: purchase}}
"""


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
        config = load_experiment_text(CONFIG.format(key=key, users=users, ipu=impressions_per_user))
        experiment_id = save_experiment(session, config, "bench").id
    rng = np.random.default_rng(seed)
    slate = max(1, min(SLATE_SIZE, impressions_per_user))
    mean_exposures = impressions_per_user / slate
    impressions = 0
    started = time.perf_counter()
    for first in range(0, users, CHUNK_USERS):
        n = min(CHUNK_USERS, users - first)
        impressions += _write_chunk(engine, rng, experiment_id, first, n, slate, mean_exposures)
        print(f"  wrote users {first + n:>10,}/{users:,}", file=sys.stderr, flush=True)
    with engine.begin() as conn:
        # Fresh statistics, as a database that has been running for a while would have.
        conn.execute(text("ANALYZE"))
    print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return key, impressions


def _write_chunk(
    engine: Engine,
    rng: np.random.Generator,
    experiment_id: int,
    first: int,
    n: int,
    slate: int,
    mean_exposures: float,
) -> int:
    unit_ids = np.array([f"u{i:08d}" for i in range(first, first + n)], dtype=object)
    treated = rng.random(n) < 0.5
    n_exposures = 1 + rng.poisson(max(mean_exposures - 1.0, 0.0), size=n)
    first_ts = T0 + rng.integers(0, 7 * 86_400, size=n)
    owner = np.repeat(np.arange(n), n_exposures)
    exposure_ts = first_ts[owner] + np.where(
        np.r_[True, owner[1:] != owner[:-1]], 0, rng.integers(1, 86_400, size=owner.size)
    )
    impressions = n_exposures * slate
    # Clicks per impression: 3.0% control, 3.3% treatment; 10% of clicks convert.
    clicks = rng.binomial(impressions, np.where(treated, 0.033, 0.030))
    purchases = rng.binomial(clicks, 0.10)
    early = rng.random(n) < 0.05  # a click before the first exposure: must be ignored
    click_owner = np.repeat(np.arange(n), clicks)
    purchase_owner = np.repeat(np.arange(n), purchases)
    early_owner = np.flatnonzero(early)
    event_owner = np.concatenate([click_owner, purchase_owner, early_owner])
    event_type = np.array(
        ["click"] * click_owner.size + ["purchase"] * purchase_owner.size + ["click"] * early.sum(),
        dtype=object,
    )
    offsets = np.concatenate(
        [
            rng.integers(0, 2 * 86_400, size=click_owner.size + purchase_owner.size),
            -rng.integers(1, 86_400, size=early_owner.size),
        ]
    )
    value = np.concatenate(
        [
            np.full(click_owner.size, np.nan),
            np.round(rng.lognormal(3.0, 1.0, size=purchase_owner.size), 2),
            np.full(early_owner.size, np.nan),
        ]
    )
    with engine.begin() as conn:
        exposures = ExposureColumns(
            variant=np.where(treated[owner], "treatment", "control").astype(object),
            unit_id=unit_ids[owner],
            seconds=exposure_ts,
            propensity=[0.5] * owner.size,
            slate_size=slate,
        )
        insert_exposures(conn, reserve_exposure_ids(conn, owner.size), experiment_id, exposures)
        ids = np.arange(event_owner.size) + first * 100
        events = EventColumns(
            event_id=[f"e{experiment_id}-{i}" for i in ids.tolist()],
            unit_id=unit_ids[event_owner],
            type=event_type,
            item_id=None,
            value=[None if np.isnan(v) else v for v in value.tolist()],
            seconds=first_ts[event_owner] + offsets,
        )
        insert_events(conn, experiment_id, events)
    return int(impressions.sum())


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
