"""The feature store's cost in the writer: `/v1/events`-style batches with and without it.

Prints, for SQLite (a temporary file) and PostgreSQL (a temporary database at
127.0.0.1:5432, skipped when unreachable), the events per second committed by the
`BufferedWriter` when CALLERS concurrent callers each submit batches of BATCH events and
await their commit (as `/v1/events` does): events of an experiment's assigned units on
catalogue items (clicks, views, add-to-carts: every one updates the feature store), once
with the store off and once with it on (rows already full: every unit holds its last 50
interactions, the steady state), alternated `--repeat` times; and the time per
transaction spent in `update_features` (profiled separately, one transaction of 800 events).

Run: .venv/bin/python bench/bench_features.py [--seconds 5] [--repeat 2] [--no-pg]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, create_engine, text

from abplatform.config import load_experiment_text
from abplatform.storage.catalog import ItemFields, insert_items
from abplatform.storage.db import make_engine, transaction, upgrade
from abplatform.storage.exposure_ids import reserve_exposure_ids
from abplatform.storage.features import update_features
from abplatform.storage.repository import save_experiment, utcnow
from abplatform.storage.rows import EventRow, ExposureColumns, insert_exposures
from abplatform.writer import BufferedWriter

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UNITS = 2_000
ITEMS = 1_000
BATCH = 100
CALLERS = 8
TYPES = ("click", "view", "add_to_cart", "click")
EXPERIMENT = """
key: featured
variants: [{key: a, weight: 0.5}, {key: b, weight: 0.5}]
metrics: [{name: buy, type: proportion, event: purchase}]
"""


def _seed(engine: Engine) -> int:
    """The experiment (catalogue `shop`), its items and its assigned units; its id."""
    with transaction(engine) as session:
        experiment_id = save_experiment(session, load_experiment_text(EXPERIMENT), "shop").id
    with engine.begin() as conn:
        items = [f"item{i}" for i in range(ITEMS)]
        insert_items(conn, "shop", items, ItemFields(category=[f"c{i % 20}" for i in range(ITEMS)]))
        now = int(time.time())
        insert_exposures(
            conn,
            reserve_exposure_ids(conn, UNITS).tolist(),
            experiment_id,
            ExposureColumns(
                variant=["a"] * UNITS,
                unit_id=[f"u{u:04d}" for u in range(UNITS)],
                seconds=[now] * UNITS,
                propensity=[0.5] * UNITS,
            ),
        )
    return experiment_id


class Events:
    """Seeded batches: random assigned units, random items, each batch a second later than
    every batch made before (by any `Events`: the clock is shared)."""

    clock = utcnow()

    def __init__(self, experiment_id: int, tag: str) -> None:
        self.experiment_id = experiment_id
        self.tag = tag
        self.rng = np.random.default_rng(0)

    def __call__(self, caller: int, index: int) -> list[EventRow]:
        units = self.rng.integers(UNITS, size=BATCH)
        items = self.rng.integers(ITEMS, size=BATCH)
        Events.clock += timedelta(seconds=1)
        ts = Events.clock
        return [
            EventRow(
                f"{self.tag}-{caller}-{index}-{j}",
                self.experiment_id,
                None,
                f"u{u:04d}",
                TYPES[j % 4],
                f"item{i}",
                None,
                ts,
            )
            for j, (u, i) in enumerate(zip(units.tolist(), items.tolist(), strict=True))
        ]


async def _events_per_second(
    writer: BufferedWriter, make: Callable[[int, int], list[EventRow]], seconds: float
) -> tuple[float, int]:
    """Events committed per second by CALLERS concurrent submitters, and events featured."""
    done = featured = 0
    stop = time.perf_counter() + seconds

    async def caller(c: int) -> None:
        nonlocal done, featured
        i = 0
        while time.perf_counter() < stop:
            result = await writer.commit((), make(c, i))
            done += result.new_events
            featured += result.featured_events
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(CALLERS)))
    return done / (time.perf_counter() - start), featured


def _one_transaction(engine: Engine, make: Events, repeat: int = 20) -> float:
    """Median seconds of `update_features` for 8 batches of 100 (rolled back each time)."""
    times = []
    for r in range(repeat):
        batches = [make(c, 10_000 + r) for c in range(CALLERS)]
        new_ids = {e.event_id for b in batches for e in b}
        with engine.connect() as conn, conn.begin() as tx:
            start = time.perf_counter()
            update_features(conn, batches, new_ids)
            times.append(time.perf_counter() - start)
            tx.rollback()
    return float(np.median(times))


def bench(url: str, label: str, seconds: float, repeat: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    experiment_id = _seed(engine)

    async def fill() -> None:  # every unit's row full: the steady state
        writer = BufferedWriter(engine)
        writer.start()
        try:
            make = Events(experiment_id, "fill")
            for r in range(UNITS * 60 // (BATCH * CALLERS) + 1):
                await asyncio.gather(*(writer.commit((), make(c, r)) for c in range(CALLERS)))
        finally:
            await writer.close()

    asyncio.run(fill())
    for r in range(repeat):
        for store in (False, True):

            async def run(store: bool = store, r: int = r) -> tuple[float, int]:
                writer = BufferedWriter(engine, features=store)
                writer.start()
                try:
                    tag = f"{'on' if store else 'off'}{r}"
                    return await _events_per_second(writer, Events(experiment_id, tag), seconds)
                finally:
                    await writer.close()

            rate, featured = asyncio.run(run())
            state = "store on " if store else "store off"
            print(f"{label}: {state} {rate:9,.0f} events/s ({featured:,} featured)")
    median = _one_transaction(engine, Events(experiment_id, "profile"))
    print(f"{label}: update_features, 8 batches of 100 events: {median * 1e3:.1f} ms (median)")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--repeat", type=int, default=2, help="alternations of off/on")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bench(f"sqlite:///{Path(folder) / 'bench.db'}", "sqlite", args.seconds, args.repeat)
    if args.no_pg:
        return
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = f"abp_bench_{uuid.uuid4().hex[:8]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server: SQLite only
        print(f"postgresql: skipped ({type(exc).__name__})")
        return
    try:
        bench(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", "postgresql", args.seconds, args.repeat)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
