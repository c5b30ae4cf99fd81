"""Start-up and memory of `abplatform serve` serving a registered two-tower model.

Seeds a temporary SQLite file with `examples/homepage_two_tower.yaml` (small: --users users,
--items items, 2 epochs), trains it (`train_experiment`: every variant registered), promotes
the models, starts the experiment, then starts `abplatform serve --workers N` and prints:

- seconds from the server's launch to its first answered `/v1/assign` of the two-tower
  variant (target: under 3 s; before the registry every worker trained the model at start);
- each worker's peak RSS (VmHWM) after `--requests` assigns (target: under 300 MiB), and
  whether TensorFlow is mapped into it (it must not be).

The throughput against the hello-world yardstick is `bench/bench_api.py`'s two-tower row.

Usage: python bench/bench_model_serving.py [--workers 2] [--users 2000] [--items 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_api import free_port, quick_two_tower

ROOT = Path(__file__).resolve().parents[1]
TWO_TOWER = ROOT / "examples" / "homepage_two_tower.yaml"
KEY = "homepage_two_tower"


def seed(url: str, artifacts: Path, users: int, items: int) -> None:
    """Simulate, train, register and promote the two-tower example; mark it running."""
    from abplatform.config.loader import load_experiment
    from abplatform.config.models import SimulationConfig
    from abplatform.storage.db import open_database, transaction
    from abplatform.storage.repository import set_status
    from simulator.runner import simulate, simulation_catalog
    from strategies.served import switch_model
    from strategies.training import train_experiment

    config = quick_two_tower(load_experiment(TWO_TOWER))
    sim = SimulationConfig(users=users, days=1, items=items, slate_size=10)
    config = config.model_copy(update={"simulation": sim})
    engine = open_database(url)
    simulate(engine, config)
    report = train_experiment(engine, config, simulation_catalog(config), artifacts_dir=artifacts)
    with transaction(engine) as session:
        for result in report.results:
            if result.model_id is not None:
                switch_model(session, result.model_id, "serving")
        set_status(session, KEY, "running")
    engine.dispose()


def _children(pid: int) -> list[int]:
    """The direct child processes of `pid` (the server's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-models-"))
    url = f"sqlite:///{folder}/bench.db"
    clock = time.perf_counter()
    seed(url, folder / "artifacts", args.users, args.items)
    print(f"seeded and trained in {time.perf_counter() - clock:.0f} s ({url})")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABPLATFORM_")}
    port = free_port()
    command = [sys.executable, "-m", "abplatform.cli", "serve", "--db", url, "--no-auth"]
    command += ["--port", str(port), "--workers", str(args.workers)]
    base = f"http://127.0.0.1:{port}"
    with (folder / "serve.log").open("wb") as log:
        launched = time.perf_counter()
        server = subprocess.Popen(command, cwd=ROOT, env=env, stderr=log, start_new_session=True)
        try:
            first = None
            unit = 0
            with httpx.Client(base_url=base, timeout=30) as http:
                while time.perf_counter() - launched < 600 and server.poll() is None:
                    try:
                        answer = http.post(
                            "/v1/assign", json={"experiment": KEY, "unit_id": f"u{unit}"}
                        )
                    except httpx.TransportError:
                        time.sleep(0.01)
                        continue
                    unit += 1
                    if answer.status_code == 200 and answer.json()["variant"] == "treatment":
                        first = time.perf_counter() - launched
                        break
                if first is None:
                    raise SystemExit(f"no two-tower answer: {(folder / 'serve.log').read_text()}")
                print(f"launch to first two-tower /v1/assign: {first:.2f} s (target < 3 s)")
                for i in range(args.requests):
                    http.post("/v1/assign", json={"experiment": KEY, "unit_id": f"v{i}"})
            for worker in _children(server.pid):
                command_line = Path(f"/proc/{worker}/cmdline").read_bytes()
                if b"resource_tracker" in command_line:
                    continue  # multiprocessing's helper, not a server worker
                peak = _status_kib(worker, "VmHWM") / 1024
                maps = Path(f"/proc/{worker}/maps").read_text()
                tensorflow = "tensorflow" in maps
                print(
                    f"worker {worker}: peak RSS {peak:.0f} MiB (target < 300), "
                    f"TensorFlow mapped: {'yes' if tensorflow else 'no'}"
                )
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
