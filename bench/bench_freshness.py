"""How long from a `/v1/events` 2xx until an assign on another worker reflects the event.

Seeds the small homepage experiment (300 users, 200 items; `treatment` is popularity per
category, which uses the unit's fresh favourite category) into a SQLite file and a fresh
PostgreSQL database, starts `abplatform serve --workers 2`, and pins 8 keep-alive
connections, 4 to each worker (told apart by `/readyz`'s `process`): 4 pairs, each a writer
on one worker and a reader on the other (two pairs each way), all running at once. Each
pair loops over its own treatment units: the writer posts 48 views of one category's
items (enough to make it the unit's favourite), and as soon as the 2xx arrives the reader
assigns the unit until its slate holds only that category's items. Prints, per database,
the lag from the 2xx to that answer (median, p99, max), how many first answers already
reflected the event, and the load average.

Usage: python bench/bench_freshness.py [--rounds 50] [--pg URL | --no-pg]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from bench_propagation import KEY, free_port, seed, serve, summary
from sqlalchemy import create_engine, select, text

from abplatform.storage import models as m
from abplatform.storage.db import make_engine, open_database, upgrade

PAIRS = 4  # each pair holds one connection to each worker: 8 connections
K = 5
GIVE_UP_SECONDS = 5.0


def pinned(port: int, per_worker: int) -> dict[int, list[httpx.Client]]:
    """`per_worker` keep-alive connections to each of the 2 workers, by process id."""
    found: dict[int, list[httpx.Client]] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=10,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        process = int(http.get("/readyz").json()["process"])
        if len(found.get(process, [])) >= per_worker:
            http.close()
            continue
        found.setdefault(process, []).append(http)
        if len(found) == 2 and all(len(v) == per_worker for v in found.values()):
            return found
    raise SystemExit(f"could not pin {per_worker} connections to each of 2 workers")


def categories(url: str) -> list[list[str]]:
    """Item lists of the categories with at least K items."""
    engine = open_database(url)
    with engine.connect() as conn:
        rows = conn.execute(select(m.CatalogItem.item_id, m.CatalogItem.category)).all()
    engine.dispose()
    by: dict[str, list[str]] = {}
    for item, category in rows:
        by.setdefault(str(category), []).append(str(item))
    return [items for _, items in sorted(by.items()) if len(items) >= K]


def pair(
    writer: httpx.Client,
    reader: httpx.Client,
    units: list[str],
    usable: list[list[str]],
    rounds: int,
    tag: str,
    lags: list[float],
    first: list[bool],
) -> None:
    """`rounds` event batches by the writer, each followed by the reader's assigns."""
    for number in range(rounds):
        unit = units[number % len(units)]
        items = (usable[(number * 7 + len(tag)) % len(usable)] * 16)[:16]
        events = [
            {
                "event_id": f"{tag}-{number}-{i}",
                "unit_id": unit,
                "type": "view",
                "experiment": KEY,
                "item_id": item,
            }
            for i, item in enumerate(items * 3)
        ]
        answer = writer.post("/v1/events", json={"events": events})
        since = time.monotonic()
        assert answer.status_code == 200 and answer.json()["featured"] == 48, answer.text
        wanted = set(items)
        tries = 0
        while time.monotonic() - since < GIVE_UP_SECONDS:
            tries += 1
            body = {"experiment": KEY, "unit_id": unit, "k": K}
            slate = [i["item_id"] for i in reader.post("/v1/assign", json=body).json()["items"]]
            if set(slate) <= wanted:
                lags.append(time.monotonic() - since)
                first.append(tries == 1)
                break
        else:
            lags.append(float("inf"))
            first.append(False)


def measure(name: str, url: str, rounds: int) -> None:
    """Seed, serve, run the pairs, print one database's lag distribution."""
    seed(url)
    usable = categories(url)
    with tempfile.TemporaryDirectory() as journal:
        port = free_port()
        server = serve(url, port, Path(journal))
        try:
            clients = pinned(port, PAIRS)
            (_, left), (_, right) = sorted(clients.items())
            left[0].post(f"/v1/experiments/{KEY}/start").raise_for_status()
            treated = []
            for n in range(300):
                body = {"experiment": KEY, "unit_id": f"u{n:06d}", "k": K}
                if left[0].post("/v1/assign", json=body).json()["variant"] == "treatment":
                    treated.append(f"u{n:06d}")
            lags: list[float] = []
            first: list[bool] = []
            threads = []
            for p in range(PAIRS):
                # Half the pairs write to one worker and read from the other, half the reverse.
                writer, reader = (left[p], right[p]) if p % 2 == 0 else (right[p], left[p])
                units = treated[p::PAIRS]
                args = (writer, reader, units, usable, rounds, f"p{p}", lags, first)
                threads.append(threading.Thread(target=pair, args=args))
            load = os.getloadavg()[0]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for group in clients.values():
                for http in group:
                    http.close()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    print(f"{name}: {len(lags)} event batches over {2 * PAIRS} connections (load {load:.1f})")
    print("  lag from the events' 2xx to an assign on the other worker reflecting them:")
    print(f"  {summary(lags)}")
    print(f"  first assign already reflected it: {sum(first)}/{len(first)}")
    finite = np.asarray([x for x in lags if np.isfinite(x)])
    print(f"  mean {finite.mean() * 1000:.1f} ms")


def main() -> None:
    """Parse the options and measure SQLite, then PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="event batches per pair")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure("SQLite", f"sqlite:///{folder}/bench-freshness.db", args.rounds)
    if args.no_pg:
        return
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"abp_bench_freshness_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg.rsplit("/", 1)[0] + f"/{name}"
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        measure("PostgreSQL", url, args.rounds)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
