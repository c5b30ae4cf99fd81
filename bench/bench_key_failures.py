"""Cost of failed API-key verifications to everyone else, on 127.0.0.1 only.

Starts `abplatform serve` (2 workers, auth on) on a SQLite file with one key, then, for a
fixed time each: `/healthz` alone (the baseline), and `/healthz` while 4 attacking clients
send `POST /v1/assign` with a known key id and a new wrong secret on every request. The
attack runs twice: with the default failure limits, and with the limits lifted
(`ABPLATFORM_API_KEY_FAILURES_PER_*` set to a million), which leaves only the one bounded
hashing thread per worker between a flood and the event loop. Prints the attackers'
requests/s by status and `/healthz` p50/p99.

Usage: python bench/bench_key_failures.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from bench_api import free_port, make_key, stop, wait_up

ROOT = Path(__file__).resolve().parents[1]
ATTACKERS = 4


async def _probe(base: str, until: float) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < until:
            start = time.perf_counter()
            await client.get("/healthz")
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(0.005)
    return latencies


async def _attack(base: str, key_id: str, until: float, statuses: Counter[int]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        n = 0
        while time.monotonic() < until:
            n += 1
            wrong = f"abp_{key_id}_wrong-{os.getpid()}-{id(statuses)}-{n}"
            response = await client.post(
                "/v1/assign",
                json={"experiment": "x", "unit_id": "u"},
                headers={"Authorization": f"Bearer {wrong}"},
            )
            statuses[response.status_code] += 1


async def _round(base: str, key_id: str, seconds: float, attackers: int) -> None:
    until = time.monotonic() + seconds
    statuses: Counter[int] = Counter()
    attacks = [_attack(base, key_id, until, statuses) for _ in range(attackers)]
    latencies, *_ = await asyncio.gather(_probe(base, until), *attacks)
    ms = np.array(latencies) * 1000
    label = f"{attackers} attackers" if attackers else "baseline"
    mix = ", ".join(f"{code}: {count / seconds:.0f}/s" for code, count in sorted(statuses.items()))
    print(
        f"  {label:12s} /healthz p50 {np.percentile(ms, 50):5.1f} ms  "
        f"p99 {np.percentile(ms, 99):5.1f} ms   {mix or '-'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    url = f"sqlite:///{folder}/bench.db"
    key_id = make_key(url).split("_")[1]
    print(f"{os.cpu_count()} CPUs; db {url}")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    lifted = {
        "ABPLATFORM_API_KEY_FAILURES_PER_KEY": "1000000",
        "ABPLATFORM_API_KEY_FAILURES_PER_CLIENT": "1000000",
    }
    for label, extra in (("default limits", {}), ("limits lifted", lifted)):
        port = free_port()
        command = [sys.executable, "-m", "abplatform.cli", "serve", "--db", url]
        command += ["--port", str(port), "--workers", "2"]
        log = folder / "serve.log"
        with log.open("wb") as out:
            server = subprocess.Popen(command, cwd=ROOT, env={**base_env, **extra}, stderr=out)
            try:
                base = f"http://127.0.0.1:{port}"
                wait_up(f"{base}/readyz", server, log)
                print(label)
                asyncio.run(_round(base, key_id, args.seconds, 0))
                asyncio.run(_round(base, key_id, args.seconds, ATTACKERS))
            finally:
                stop(server)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
