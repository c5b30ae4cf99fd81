"""Benchmark the assignment API against a hello-world FastAPI app, on 127.0.0.1 only.

Starts, in the same run, a hello-world app under plain `uvicorn app:app` and
`abplatform serve` with its defaults (auth on; 1 worker on SQLite) on a seeded SQLite
file, and loads each with the same closed-loop client (`wrk` if installed, else an
asyncio httpx client) at 8 and 32 connections. Prints requests/s, p50 and p99 for
hello-world, POST /v1/assign and POST /v1/events (batches of 100), the ratios, and the
in-process cost of an assignment.

Usage: python bench/bench_api.py [--seconds 20] [--connections 8 32] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "homepage_popularity.yaml"
KEY = "homepage_popularity"
EVENTS_PER_BATCH = 100

HELLO_APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def root() -> dict[str, str]:
    return {"message": "Hello World"}
"""

# Unique unit ids / event ids per request: every thread has its own Lua state and counter.
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
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. auth
end
function request()
  counter = counter + 1
  local id = tid .. "-" .. counter
  local body
  if mode == "assign" then
    body = '{"experiment":"' .. key .. '","unit_id":"user-' .. id .. '"}'
  else
    local parts = {}
    for i = 1, EVENTS_PER_BATCH do
      parts[i] = '{"event_id":"' .. math.random(1e9) .. "-" .. id .. "-" .. i ..
        '","unit_id":"user-' .. i .. '","type":"click","experiment":"' .. key .. '"}'
    end
    body = '{"events":[' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format(nil, nil, nil, body)
end
""".replace("EVENTS_PER_BATCH", str(EVENTS_PER_BATCH))


@dataclass(frozen=True)
class Load:
    """The outcome of one closed-loop run."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(
                f"server exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
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
    return Load(rps, p50, p99, errors)


async def _httpx_load(url: str, connections: int, seconds: float, mode: str, auth: str) -> Load:
    latencies: list[float] = []
    errors = 0
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
                    url, json={"experiment": KEY, "unit_id": f"u{index}-{n}"}
                )
            else:
                events = [
                    {
                        "event_id": f"{os.getpid()}-{index}-{n}-{i}",
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
    return Load(len(latencies) / elapsed, pick(0.5), pick(0.99), errors)


def load(url: str, mode: str, connections: int, seconds: int, script: Path, auth: str) -> Load:
    if shutil.which("wrk"):
        if mode == "hello":
            return run_wrk(url, connections, seconds, None, [])
        return run_wrk(url, connections, seconds, script, [mode, KEY, auth])
    return asyncio.run(_httpx_load(url, connections, seconds, mode, auth))


def seed(url: str) -> None:
    from abplatform.config.loader import load_experiment
    from abplatform.config.models import SimulationConfig
    from abplatform.storage.db import open_database
    from simulator.runner import simulate

    config = load_experiment(EXAMPLE)
    config = config.model_copy(
        update={"simulation": SimulationConfig(users=5_000, days=1, items=2_000, slate_size=10)}
    )
    engine = open_database(url)
    simulate(engine, config)
    with engine.begin() as conn:
        from sqlalchemy import update

        from abplatform.storage import models as m

        conn.execute(update(m.Experiment).where(m.Experiment.key == KEY).values(status="running"))
    engine.dispose()


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
    from abplatform.storage.db import open_database
    from abplatform.storage.history import load_history

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
    seed(url)
    auth = make_key(url)
    in_process(url)
    script = folder / "load.lua"
    script.write_text(WRK_SCRIPT)
    (folder / "hello.py").write_text(HELLO_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    results: dict[tuple[str, int], Load] = {}

    hello_port = free_port()
    hello = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "hello:app",
            "--port",
            str(hello_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=folder,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        wait_up(f"http://127.0.0.1:{hello_port}/", hello)
        for c in args.connections:
            results["hello", c] = load(
                f"http://127.0.0.1:{hello_port}/", "hello", c, args.seconds, script, auth
            )
    finally:
        stop(hello)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "abplatform.cli", "serve", "--db", url, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        wait_up(f"http://127.0.0.1:{port}/healthz", server)
        base = f"http://127.0.0.1:{port}"
        for c in args.connections:
            results["assign", c] = load(
                f"{base}/v1/assign", "assign", c, args.seconds, script, auth
            )
            results["events", c] = load(
                f"{base}/v1/events", "events", c, args.seconds, script, auth
            )
    finally:
        stop(server)

    print(
        f"\n{'endpoint':<24}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}  note"
    )
    for (mode, c), r in results.items():
        label = {
            "hello": "GET / (hello world)",
            "assign": "POST /v1/assign",
            "events": "POST /v1/events",
        }[mode]
        note = ""
        if mode == "assign":
            note = (
                f"ratio vs hello-world {r.requests_per_s / results['hello', c].requests_per_s:.2f}"
            )
        if mode == "events":
            note = f"{r.requests_per_s * EVENTS_PER_BATCH:,.0f} events/s"
        numbers = f"{r.requests_per_s:>10,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
        print(f"{label:<24}{c:>6}{numbers}  {note}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
