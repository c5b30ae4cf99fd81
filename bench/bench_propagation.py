"""How long a start or stop takes to reach every worker of `abplatform serve --workers 2`.

Seeds the small homepage experiment (300 users, 200 items) into a SQLite file and a fresh
PostgreSQL database, starts the server (2 workers, default status TTL of 1 s), pins one
keep-alive connection to each worker (told apart by `/readyz`'s `process`), then flips the
experiment `--flips` times (start, stop, start, ...), sending each flip through the two
workers in turn. After each flip's answer, both workers are asked `/v1/assign` at the same
time (one thread each, back to back) until they answer as the new status says (200 after a
start, 409 after a stop). Prints, per database, the lag from the flip's answer to that first
answer: median, p99 and max, for the worker that took the change and for the other one,
and for starts (which refit the strategies) and stops.

Usage: python bench/bench_propagation.py [--flips 50] [--pg URL | --no-pg]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abplatform.config.loader import load_experiment  # noqa: E402
from abplatform.config.models import SimulationConfig  # noqa: E402
from abplatform.storage.db import make_engine, open_database, upgrade  # noqa: E402
from simulator.runner import simulate  # noqa: E402

KEY = "homepage_popularity"
EXAMPLE = ROOT / "examples" / "homepage_popularity.yaml"
GIVE_UP_SECONDS = 5.0


def seed(url: str) -> None:
    """The example experiment in a tiny simulated world, status draft."""
    engine = open_database(url)
    config = load_experiment(EXAMPLE)
    sim = SimulationConfig(users=300, days=1, items=200, slate_size=5, seed=7)
    simulate(engine, config.model_copy(update={"simulation": sim}))
    engine.dispose()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(url: str, port: int, journal: Path) -> subprocess.Popen[bytes]:
    """`abplatform serve --workers 2 --no-auth`, once a worker answers `/readyz`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    env["ABPLATFORM_API_JOURNAL_DIR"] = str(journal)
    command = [sys.executable, "-m", "abplatform.cli", "serve", "--db", url, "--no-auth"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server on {url} did not start")


def pin(port: int, workers: int = 2) -> list[httpx.Client]:
    """One client per worker, each holding one keep-alive connection to it."""
    found: dict[int, httpx.Client] = {}
    deadline = time.monotonic() + 30
    while len(found) < workers and time.monotonic() < deadline:
        http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=10,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        process = int(http.get("/readyz").json()["process"])
        if process in found:
            http.close()
            time.sleep(0.01)
        else:
            found[process] = http
    if len(found) < workers:
        raise SystemExit(f"new connections reached only the workers {sorted(found)}")
    return list(found.values())


def first_answer(http: httpx.Client, since: float, expected: int, lags: list[float]) -> None:
    """Assign back to back until `expected` comes; append the seconds since `since`."""
    number = 0
    while time.monotonic() - since < GIVE_UP_SECONDS:
        number += 1
        body = {"experiment": KEY, "unit_id": f"u{number}"}
        if http.post("/v1/assign", json=body).status_code == expected:
            lags.append(time.monotonic() - since)
            return
    lags.append(float("inf"))


def flips(port: int, n: int) -> dict[tuple[str, str], list[float]]:
    """Lags by (start | stop, taking | other worker) over `n` flips."""
    clients = pin(port)
    lags: dict[tuple[str, str], list[float]] = {}
    try:
        for http in clients:
            http.post("/v1/assign", json={"experiment": KEY, "unit_id": "warm"})
        for flip in range(n):
            verb, expected = ("start", 200) if flip % 2 == 0 else ("stop", 409)
            taking = clients[(flip // 2) % 2]  # each worker takes starts and stops in turn
            answer = taking.post(f"/v1/experiments/{KEY}/{verb}")
            since = time.monotonic()
            assert answer.status_code == 200, answer.text
            found: dict[int, list[float]] = {id(http): [] for http in clients}
            threads = [
                threading.Thread(target=first_answer, args=(h, since, expected, found[id(h)]))
                for h in clients
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for http in clients:
                role = "taking" if http is taking else "other"
                lags.setdefault((verb, role), []).extend(found[id(http)])
            time.sleep(0.05)  # the probes' exposures are written; then the next flip
    finally:
        for http in clients:
            http.close()
    return lags


def measure(name: str, url: str, n: int) -> None:
    """Seed, serve, flip, print one database's lag distribution."""
    seed(url)
    with tempfile.TemporaryDirectory() as journal:
        port = free_port()
        server = serve(url, port, Path(journal))
        try:
            lags = flips(port, n)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    print(f"{name}: {n} flips, lag from the flip's answer to the worker's first answer")
    every: list[float] = []
    for (verb, role), values in sorted(lags.items()):
        every += values
        print(f"  {verb:5} {role:6} {summary(values)}")
    print(f"  all          {summary(every)}")


def summary(values: list[float]) -> str:
    """median, p99 and max in ms (inf: no answer within `GIVE_UP_SECONDS`)."""
    ms = np.asarray(values) * 1000.0
    return (
        f"n={len(ms):3d}  median {np.median(ms):6.1f} ms  "
        f"p99 {np.percentile(ms, 99):6.1f} ms  max {ms.max():6.1f} ms"
    )


def main() -> None:
    """Parse the options and measure SQLite, then PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure("SQLite", f"sqlite:///{folder}/bench-propagation.db", args.flips)
    if args.no_pg:
        return
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"abp_bench_propagation_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg.rsplit("/", 1)[0] + f"/{name}"
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        measure("PostgreSQL", url, args.flips)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
