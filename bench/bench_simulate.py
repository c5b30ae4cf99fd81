"""Simulator throughput: impressions written per second into SQLite (or --db), end to end."""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from abplatform.config import load_experiment
from abplatform.storage.db import open_database
from simulator.runner import simulate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "examples" / "homepage_popularity.yaml"))
    parser.add_argument("--db", default=None, help="database URL (default: a temp SQLite file)")
    parser.add_argument("--users", type=int, default=None, help="override simulation.users")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    config = load_experiment(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{tmp}/bench.db"
        engine = open_database(url)
        for i in range(args.repeat):
            start = time.perf_counter()
            result = simulate(
                engine, config, users=args.users, artifacts_dir=Path(tmp) / "artifacts"
            )
            elapsed = time.perf_counter() - start
            phases = ", ".join(f"{k} {v:.2f}s" for k, v in result.seconds.items())
            print(
                f"run {i + 1}: {result.users:,} users, {result.impressions:,} impressions, "
                f"{result.history_interactions:,} history rows in {elapsed:.2f}s "
                f"-> {result.impressions / elapsed:,.0f} impressions/s end to end ({phases})"
            )
        engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"database: {url.split(':', 1)[0]}; peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
