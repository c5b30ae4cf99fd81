"""Benchmark the assignment API against a hello-world FastAPI app, on 127.0.0.1 only.

Starts, in the same run, a hello-world app under plain `uvicorn app:app` (one worker,
defaults) and `abplatform serve` with its defaults (auth on) on a seeded SQLite file
holding a popularity experiment and a small two-tower experiment, side by side, and
loads them in turn with the same closed-loop client (`wrk` if installed, else an asyncio
httpx client) at 8 and 32 connections (hello-world first, then abplatform, per connection
count, so a change in the machine's background load hits both). The hello-world app
answers `POST /` with a pydantic body (the issue's yardstick: a trivial FastAPI POST
endpoint; it gets the same request bytes as /v1/assign) and `GET /`. Prints requests/s,
p50 and p99 for both hello-world routes, POST /v1/assign with the popularity and the
two-tower slate (for units the model has never seen, which get its default query, and for
users of its history, each a top-k over the item embeddings), POST /v1/events (batches of
100), the ratios against hello-world, the in-process cost of an assignment, and after the
server's SIGTERM how many exposures and events the database holds against the 2xx answers
counted by the client.

Usage: python bench/bench_api.py [--seconds 20] [--connections 8 32] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx

from abplatform.config.models import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "homepage_popularity.yaml"
KEY = "homepage_popularity"
TWO_TOWER = ROOT / "examples" / "homepage_two_tower.yaml"
TWO_TOWER_KEY = "homepage_two_tower"
EVENTS_PER_BATCH = 100
KNOWN_USERS = 2_000
"""Users of the two-tower experiment's simulated history (u0000 ... u1999)."""
RUN_TAGS = (f"r{i}" for i in itertools.count())

HELLO_APP = """
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Ask(BaseModel):
    experiment: str
    unit_id: str


@app.get("/")
async def root() -> dict[str, str]:
    return {"message": "Hello World"}


@app.post("/")
async def ask(body: Ask) -> dict[str, str]:
    return {"message": "Hello World"}
"""

# Unique unit ids / event ids per request: every thread has its own Lua state and counter,
# every wrk run its own tag (args[4]).
WRK_SCRIPT = r"""
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  mode = args[1]
  key = args[2]
  auth = args[3]
  run = args[4]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. auth
end
function request()
  counter = counter + 1
  local id = run .. "-" .. tid .. "-" .. counter
  local body
  if mode == "assign" then
    body = '{"experiment":"' .. key .. '","unit_id":"user-' .. id .. '"}'
  elseif mode == "known" then
    -- A user of the model's history (u0000 ... u1999): a top-k over the item embeddings
    -- (with online features, the user tower first). The current item (which the two-tower
    -- ignores for known users) varies so that the slate cache does not answer.
    body = '{"experiment":"' .. key .. '","unit_id":"u' ..
      string.format("%04d", (tid * 7919 + counter) % KNOWN_USERS) ..
      '","context":{"current_item":"' .. ITEMS[(counter * 31 + tid) % #ITEMS + 1] .. '"}}'
  elseif mode == "featured" then
    -- Events of known users on catalogue items: every one updates the feature store.
    local parts = {}
    local types = {"click", "view", "add_to_cart", "click"}
    for i = 1, EVENTS_PER_BATCH do
      parts[i] = '{"event_id":"' .. id .. "-" .. i .. '","unit_id":"u' ..
        string.format("%04d", (tid * 104729 + counter * EVENTS_PER_BATCH + i) % KNOWN_USERS) ..
        '","type":"' .. types[i % 4 + 1] .. '","experiment":"' .. key ..
        '","item_id":"' .. ITEMS[(counter * 13 + i * 7 + tid) % #ITEMS + 1] .. '"}'
    end
    body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  else
    local parts = {}
    for i = 1, EVENTS_PER_BATCH do
      parts[i] = '{"event_id":"' .. id .. "-" .. i ..
        '","unit_id":"user-' .. i .. '","type":"click","experiment":"' .. key .. '"}'
    end
    body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format(nil, nil, nil, body)
end
""".replace("EVENTS_PER_BATCH", str(EVENTS_PER_BATCH)).replace("KNOWN_USERS", str(KNOWN_USERS))


@dataclass(frozen=True)
class Load:
    """The outcome of one closed-loop run."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server at {url} did not come up")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:  # e.g. "-nanus" when no request completed
        print(f"(unparsed wrk latency {text!r})")
        return float("nan")
    number, unit = match.groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def run_wrk(url: str, connections: int, seconds: int, script: Path | None, args: list[str]) -> Load:
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    command += [url]
    if args:
        command += ["--", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "50%" not in out:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Load(rps, p50, p99, errors, total)


async def _httpx_load(
    url: str, connections: int, seconds: float, mode: str, auth: str, key: str
) -> Load:
    latencies: list[float] = []
    errors = 0
    run = next(RUN_TAGS)
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"Authorization": f"Bearer {auth}"}

    async def worker(index: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            start = time.perf_counter()
            if mode == "hello":
                response = await http.get(url)
            elif mode == "assign":
                response = await http.post(
                    url, json={"experiment": key, "unit_id": f"user-{run}-{index}-{n}"}
                )
            elif mode == "known":
                unit = f"u{(index * 7919 + n) % KNOWN_USERS:04d}"
                response = await http.post(url, json={"experiment": key, "unit_id": unit})
            else:
                events = [
                    {
                        "event_id": f"{run}-{index}-{n}-{i}",
                        "unit_id": f"u{i}",
                        "type": "click",
                        "experiment": KEY,
                    }
                    for i in range(EVENTS_PER_BATCH)
                ]
                response = await http.post(url, json={"events": events})
            latencies.append(time.perf_counter() - start)
            errors += response.status_code >= 300

    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as http:
        began = time.perf_counter()
        await asyncio.gather(*(worker(i, http) for i in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3  # noqa: E731
    return Load(len(latencies) / elapsed, pick(0.5), pick(0.99), errors, len(latencies))


def load(
    url: str, mode: str, connections: int, seconds: int, script: Path, auth: str, key: str = KEY
) -> Load:
    if shutil.which("wrk"):
        if mode == "hello":
            return run_wrk(url, connections, seconds, None, [])
        return run_wrk(url, connections, seconds, script, [mode, key, auth, next(RUN_TAGS)])
    return asyncio.run(_httpx_load(url, connections, seconds, mode, auth, key))


def quick_two_tower(config: ExperimentConfig) -> ExperimentConfig:
    """`config` with its two-tower variants trained for 2 epochs (seconds, not minutes)."""
    variants = [
        v.model_copy(
            update={
                "strategy": v.strategy.model_copy(
                    update={"params": {**v.strategy.params, "epochs": 2}}
                )
            }
        )
        if v.strategy is not None and v.strategy.kind == "two_tower"
        else v
        for v in config.variants
    ]
    return config.model_copy(update={"variants": variants})


def seed(url: str, artifacts: Path) -> None:
    """Simulate both experiments into the database and mark them running.

    The two-tower one is small (2,000 users, 1,000 items, 2 epochs): it is trained once
    here and its registered model promoted, which every server worker loads (NumPy only);
    serving its slates is what is measured.
    """
    from abplatform.config.loader import load_experiment
    from abplatform.config.models import SimulationConfig
    from abplatform.storage.db import open_database, transaction
    from abplatform.storage.repository import list_experiments, set_status
    from simulator.runner import simulate, simulation_catalog
    from strategies.served import switch_model
    from strategies.training import train_experiment

    engine = open_database(url)
    config = load_experiment(EXAMPLE)
    config = config.model_copy(
        update={"simulation": SimulationConfig(users=5_000, days=1, items=2_000, slate_size=10)}
    )
    simulate(engine, config)
    config = quick_two_tower(load_experiment(TWO_TOWER))
    sim = SimulationConfig(users=KNOWN_USERS, days=1, items=1_000, slate_size=10)
    config = config.model_copy(update={"simulation": sim})
    simulate(engine, config)
    # The two-tower variant serves its registered model: trained here, once, and promoted.
    report = train_experiment(engine, config, simulation_catalog(config), artifacts_dir=artifacts)
    with transaction(engine) as session:
        for result in report.results:
            if result.model_id is not None:
                switch_model(session, result.model_id, "serving")
        for stored in list_experiments(session):
            set_status(session, stored.key, "running")
    engine.dispose()


def lua_items(url: str) -> str:
    """A Lua table of the two-tower catalogue's item ids (for the load script)."""
    from sqlalchemy import select

    from abplatform.storage import models as m
    from abplatform.storage.db import open_database

    engine = open_database(url)
    with engine.connect() as conn:
        ids = conn.execute(
            select(m.CatalogItem.item_id).where(m.CatalogItem.catalog == f"sim:{TWO_TOWER_KEY}")
        ).scalars()
        quoted = ",".join(f'"{item}"' for item in ids)
    engine.dispose()
    return f"ITEMS = {{{quoted}}}\n"


def cache_line(metrics: str) -> str:
    """One worker's slate cache and feature-read counters from its `/metrics`."""
    wanted = ("slate_cache_hits", "slate_cache_misses", "slate_cache_size", "feature_reads")
    found = [
        line.split("{")[0].removeprefix("abplatform_") + " " + line.rsplit(" ", 1)[1]
        for line in metrics.splitlines()
        if line.startswith("abplatform_") and any(w in line for w in wanted)
    ]
    return "one worker's /metrics: " + ", ".join(found)


API_SINCE = datetime.now(UTC).replace(tzinfo=None)
"""Exposures stored at or after this (naive UTC, as stored) were written by the API."""


def stored(url: str, *, events: bool = True) -> tuple[int, int]:
    """Exposures and events (0 unless `events`) the database holds that the API wrote (not
    the simulator's: those are timed in the simulated past, before `API_SINCE`)."""
    from sqlalchemy import func, select

    from abplatform.storage import models as m
    from abplatform.storage.db import open_database

    engine = open_database(url)
    with engine.connect() as conn:
        exposures = conn.execute(
            select(func.count()).select_from(m.Exposure).where(m.Exposure.ts >= API_SINCE)
        ).scalar_one()
        n_events = 0
        if events:
            n_events = conn.execute(
                select(func.count()).select_from(m.Event).where(m.Event.event_id.like("%-%-%-%"))
            ).scalar_one()
    engine.dispose()
    return int(exposures), int(n_events)


def make_key(url: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "abplatform.cli",
            "keys",
            "create",
            "--scope",
            "assign",
            "--name",
            "bench",
            "--db",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return out.stdout.strip()


def in_process(url: str) -> None:
    from abplatform.assignment.engine import build_policy
    from abplatform.config.loader import load_experiment
    from abplatform.domain import RecRequest
    from abplatform.registry import build_strategy
    from abplatform.storage.catalog import load_history
    from abplatform.storage.db import open_database

    config = load_experiment(EXAMPLE)
    policy = build_policy(config)
    engine = open_database(url)
    with engine.connect() as conn:
        history = load_history(conn, f"sim:{KEY}")
    spec = config.variants[1].strategy
    assert spec is not None
    strategy = build_strategy(spec.kind, spec.params)
    strategy.fit(history)
    units = [f"user-{i}" for i in range(20_000)]
    number = len(units)
    it = iter(units * 10)
    assign_s = min(timeit.repeat(lambda: policy.assign(next(it)), number=number, repeat=3)) / number
    it = iter(units * 10)
    requests = [RecRequest(u) for u in units]
    rit = iter(requests * 10)

    def both() -> None:
        policy.assign(next(it))
        strategy.recommend(next(rit), 10)

    both_s = min(timeit.repeat(both, number=number, repeat=3)) / number
    print(
        f"in-process: policy.assign {assign_s * 1e6:.1f} us/call; "
        f"assign + popularity slate (k=10, per_category) {both_s * 1e6:.1f} us/call"
    )
    engine.dispose()


LABELS = {
    "hello-get": "GET / (hello world)",
    "hello-post": "POST / (hello world)",
    "assign": "POST /v1/assign (pop)",
    "two-tower": "POST /v1/assign (2-tower)",
    "two-tower-known": "  ... known users",
    "events": "POST /v1/events",
    "featured-events": "POST /v1/events featured",
    "two-tower-realtime": "two-tower realtime",
}


def catch_up(url: str, answered: int, timeout: float = 120) -> float:
    """Seconds after a load until the database holds an exposure per answered assignment.

    Assignments are answered before their commit; a writer that falls behind would show
    here (and, sustained, as 503s once its queue is full).
    """
    clock = time.monotonic()
    while stored(url, events=False)[0] < answered and time.monotonic() - clock < timeout:
        time.sleep(0.2)
    return time.monotonic() - clock


def report(
    results: dict[tuple[str, int], Load],
    lags: dict[tuple[str, int], float],
    rows: tuple[int, int],
) -> None:
    """The table, the ratios, the writer's lag, and the rows stored against the answers."""
    print(
        f"\n{'endpoint':<26}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}  note"
    )
    for (mode, c), r in results.items():
        note = ""
        if mode in ("assign", "two-tower", "two-tower-known", "two-tower-realtime"):
            post = r.requests_per_s / results["hello-post", c].requests_per_s
            get = r.requests_per_s / results["hello-get", c].requests_per_s
            note = f"ratio vs hello-world POST {post:.2f}, vs GET {get:.2f}; "
            note += f"all committed {lags[mode, c]:.1f} s after the load"
        if mode in ("events", "featured-events"):
            note = f"{r.requests_per_s * EVENTS_PER_BATCH:,.0f} events/s"
        numbers = f"{r.requests_per_s:>10,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
        print(f"{LABELS[mode]:<26}{c:>6}{numbers}  {note}")
    answered = {mode: 0 for mode, _ in results}
    for (mode, _), r in results.items():
        answered[mode] += r.requests - r.errors
    assigned = sum(
        answered.get(m, 0) for m in ("assign", "two-tower", "two-tower-known", "two-tower-realtime")
    )
    events = answered["events"] + answered.get("featured-events", 0)
    print(
        f"\nafter SIGTERM the database holds {rows[0]:,} exposures for {assigned:,} assignments "
        f"the client counted as answered, and {rows[1]:,} events for "
        f"{events * EVENTS_PER_BATCH:,} answered (in-flight requests at the end of each "
        "run are stored but not counted by the client)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--db", default=None, help="database URL (default: a temp SQLite file)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-api-"))
    url = args.db or f"sqlite:///{folder}/bench.db"
    client = "wrk" if shutil.which("wrk") else "httpx (asyncio)"
    print(f"client: {client}; {os.cpu_count()} CPUs; db {url}")
    seed(url, folder / "artifacts")
    auth = make_key(url)
    in_process(url)
    script = folder / "load.lua"
    script.write_text(lua_items(url) + WRK_SCRIPT)
    (folder / "hello.py").write_text(HELLO_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    results: dict[tuple[str, int], Load] = {}
    lags: dict[tuple[str, int], float] = {}

    # Both servers run side by side and the loads alternate between them per connection
    # count, so a change in the machine's background load hits both sides alike.
    hello_port, port = free_port(), free_port()
    hello_command = [sys.executable, "-m", "uvicorn", "hello:app", "--port", str(hello_port)]
    hello_command += ["--log-level", "warning", "--no-access-log"]
    serve_command = [sys.executable, "-m", "abplatform.cli", "serve", "--db", url]
    serve_command += ["--port", str(port)]
    with (
        (folder / "hello.log").open("wb") as hello_log,
        (folder / "serve.log").open("wb") as serve_log,
    ):
        hello = subprocess.Popen(hello_command, cwd=folder, env=env, stderr=hello_log)
        server = subprocess.Popen(serve_command, cwd=ROOT, env=env, stderr=serve_log)
        try:
            clock = time.monotonic()
            hello_url = f"http://127.0.0.1:{hello_port}/"
            wait_up(hello_url, hello, folder / "hello.log")
            wait_up(f"http://127.0.0.1:{port}/readyz", server, folder / "serve.log", timeout=600)
            print(
                f"servers ready in {time.monotonic() - clock:.0f} s (abplatform loads both models)"
            )
            base = f"http://127.0.0.1:{port}"
            answered = 0
            for c in args.connections:
                run = partial(load, connections=c, seconds=args.seconds, script=script, auth=auth)
                results["hello-get", c] = run(hello_url, "hello")
                results["hello-post", c] = run(hello_url, "assign")
                for mode, body, key in (
                    ("assign", "assign", KEY),
                    ("two-tower", "assign", TWO_TOWER_KEY),
                    ("two-tower-known", "known", TWO_TOWER_KEY),
                ):
                    results[mode, c] = r = run(f"{base}/v1/assign", body, key=key)
                    answered += r.requests - r.errors
                    lags[mode, c] = catch_up(url, answered)
                results["events", c] = run(f"{base}/v1/events", "events")
                # Events that update the feature store, then assigns of the users they gave
                # online features: the user tower embeds each one's fresh sequence.
                results["featured-events", c] = run(
                    f"{base}/v1/events", "featured", key=TWO_TOWER_KEY
                )
                results["two-tower-realtime", c] = r = run(
                    f"{base}/v1/assign", "known", key=TWO_TOWER_KEY
                )
                answered += r.requests - r.errors
                lags["two-tower-realtime", c] = catch_up(url, answered)
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
            print(cache_line(metrics))
        finally:
            stop(hello)
            stop(server)
    report(results, lags, stored(url))
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
