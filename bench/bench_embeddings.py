"""Compressed two-tower item embeddings: top-100 overlap with float32, artifact size, latency.

    .venv/bin/python bench/bench_embeddings.py                  # simulated shop + MovieLens 100K
    .venv/bin/python bench/bench_embeddings.py --skip-movielens # (MovieLens needs recbole)

One two-tower is trained per dataset (TensorFlow, `--epochs`); its artifact is then stored with
each `embedding_dtype` (float32, float16, int8), exported and loaded back as an API worker
does, and for `--sample` known users the served top-100 (`recommend_batch`) is compared with
float32's: the overlap is |top100(dtype) & top100(float32)| / 100, averaged over the users.
Sizes are of ``item_embeddings.npy`` (+ ``item_embedding_scales.npy``) and of the whole
version directory; latency is `recommend` of one user at a time (k = 10, p50 / p99) and
`recommend_batch` of every sampled user (k = 100).
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
from strategies.two_tower.artifact import compressed, export_artifact
from strategies.two_tower.compression import EMBEDDING_DTYPES
from strategies.two_tower.strategy import TwoTowerStrategy

TARGETS = {"float32": 1.0, "float16": 0.99, "int8": 0.97}  # issue 14


def _bytes(path: Path, names: tuple[str, ...]) -> int:
    return sum((path / n).stat().st_size for n in names if (path / n).is_file())


def measure(name: str, log: InteractionLog, params: dict[str, Any], seed: int, sample: int) -> None:
    """Train once, then serve the artifact in each dtype; print one line per dtype."""
    users = np.unique(log.user_ids).astype(str)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(users, size=min(sample, users.size), replace=False).tolist()
    requests = [RecRequest(u) for u in chosen]
    clock = time.perf_counter()
    trained = TwoTowerStrategy(params, seed=seed)
    trained.fit(log)
    fit = time.perf_counter() - clock
    print(
        f"\n{name}: {len(log):,} interactions, {users.size:,} users, {len(log.catalog):,} "
        f"items, embedding width {trained.artifact.dim}; fit {fit:.1f} s "
        f"({os.cpu_count()} shared cores, load average {os.getloadavg()[0]:.2f})"
    )
    print(
        f"{'dtype':<8}{'overlap@100':>12}{'min':>7}{'target':>8}{'emb KiB':>9}{'ratio':>7}"
        f"{'dir KiB':>9}{'load s':>8}{'p50 us':>8}{'p99 us':>8}{'batch ms':>10}"
    )
    reference: list[tuple[str, ...]] = []
    base_size = 0
    for dtype in EMBEDDING_DTYPES:
        artifact = compressed(trained.artifact, dtype)  # what fit with this dtype stores
        with tempfile.TemporaryDirectory() as tmp:
            path = export_artifact(artifact, tmp, experiment="bench", variant=dtype)
            size = _bytes(path, ("item_embeddings.npy", "item_embedding_scales.npy"))
            whole = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            clock = time.perf_counter()
            served = TwoTowerStrategy.from_artifact(path)
            served.recommend(requests[0], 10)  # builds the serving state
            load = time.perf_counter() - clock
        singles = []
        for request in requests:
            clock = time.perf_counter()
            served.recommend(request, 10)
            singles.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        slates = served.recommend_batch(requests, 100)
        batch = time.perf_counter() - clock
        tops = [slate.items for slate in slates]
        if dtype == "float32":
            reference, base_size = tops, size
        kept = [len(set(a) & set(b)) / len(b) for a, b in zip(tops, reference, strict=True)]
        p50, p99 = np.percentile(np.array(singles) * 1e6, [50, 99])
        print(
            f"{dtype:<8}{np.mean(kept):>12.4f}{min(kept):>7.2f}{TARGETS[dtype]:>8.2f}"
            f"{size / 1024:>9.1f}{base_size / size:>7.2f}{whole / 1024:>9.1f}{load:>8.3f}"
            f"{p50:>8.0f}{p99:>8.0f}{batch * 1e3:>10.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sample", type=int, default=1_000, help="known users compared")
    parser.add_argument("--skip-movielens", action="store_true")
    args = parser.parse_args()
    params = {"epochs": args.epochs, "refit": False}
    from bench_two_tower import simulated_log

    log = simulated_log(args.users, args.items, args.interactions, args.seed)
    measure("simulated shop", log, params, args.seed, args.sample)
    if not args.skip_movielens:
        from bench_baselines import movielens  # needs recbole==1.2.1 (make bench-data)

        measure("MovieLens 100K (all ratings)", movielens(), params, args.seed, args.sample)


if __name__ == "__main__":
    main()
