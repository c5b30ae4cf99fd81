"""ALS and EASE speed: fit on MovieLens 100K and on 1M simulated interactions, serve, load.

    .venv/bin/python bench/bench_baselines.py                 # both datasets
    .venv/bin/python bench/bench_baselines.py --skip-movielens

Fit times are wall-clock seconds of `fit` (ALS single-threaded, as the strategy trains it).
Serving is `recommend` for one known user at a time (p50 / p99) and `recommend_batch` over
every known user. "load" is what an API worker pays at start: reading the exported artifact
(`from_artifact`, checksums checked) and the first slate; neither kind refits.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from abplatform.domain import InteractionLog, RecRequest
from strategies.als import AlsStrategy
from strategies.ease import EaseStrategy

ALS_PARAMS: dict[str, Any] = {}
EASE_PARAMS: dict[str, Any] = {}


def movielens() -> InteractionLog:
    """ML-100K through the project's storage, as bench_public_dataset.py reads it."""
    from bench_public_dataset import dataset_dir, ingest, read_movielens

    data = read_movielens(dataset_dir())
    with tempfile.TemporaryDirectory() as tmp:
        return ingest(Path(tmp), data)


def simulated(users: int, items: int, interactions: int, seed: int) -> InteractionLog:
    """The simulator's organic history (bench_two_tower.py's helper)."""
    from bench_two_tower import simulated_log

    return simulated_log(users, items, interactions, seed)


def measure(name: str, log: InteractionLog, seed: int, sample: int) -> None:
    """Fit, serve and load ALS and EASE on `log`; print one line each."""
    users = np.unique(log.user_ids).astype(str)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(users, size=min(sample, users.size), replace=False).tolist()
    requests = [RecRequest(u) for u in chosen]
    print(
        f"\n{name}: {len(log):,} interactions, {users.size:,} users, "
        f"{len(log.catalog):,} items (timings on {os.cpu_count()} shared cores)"
    )
    print(f"{'kind':<6}{'fit s':>9}{'load s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch s':>10}")
    for kind, build in (
        ("als", lambda: AlsStrategy(ALS_PARAMS, seed=seed)),
        ("ease", lambda: EaseStrategy(EASE_PARAMS, seed=seed)),
    ):
        strategy: Any = build()
        clock = time.perf_counter()
        strategy.fit(log)
        fit = time.perf_counter() - clock
        with tempfile.TemporaryDirectory() as tmp:
            path = strategy.export(tmp, experiment="bench", variant=kind)
            clock = time.perf_counter()
            served = type(strategy).from_artifact(path)
            served.recommend(requests[0], 10)  # builds the serving state
            load = time.perf_counter() - clock
        singles = []
        for request in requests:
            clock = time.perf_counter()
            served.recommend(request, 10)
            singles.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        served.recommend_batch(requests, 10)
        batch = time.perf_counter() - clock
        p50, p99 = np.percentile(np.array(singles) * 1e3, [50, 99])
        print(f"{kind:<6}{fit:>9.2f}{load:>9.2f}{p50:>9.2f}{p99:>9.2f}{batch:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sample", type=int, default=1_000, help="users served one by one")
    parser.add_argument("--skip-movielens", action="store_true")
    args = parser.parse_args()
    if not args.skip_movielens:
        measure("MovieLens 100K (all ratings)", movielens(), args.seed, args.sample)
    log = simulated(args.users, args.items, args.interactions, args.seed)
    measure("simulated shop", log, args.seed, args.sample)


if __name__ == "__main__":
    main()
