"""Learned ranker: p50/p99 of scoring 500 candidates for one request in NumPy (issue 15).

Trains a ranker on 20,000 seeded synthetic impressions over a 5,000-item catalogue, exports
it, then, in a fresh process that never imports TensorFlow (as an API worker), loads it from
the artifact and times `score_items` for one request with 500 candidates. Target: p99 < 2 ms.
The child uses one BLAS thread, as `abplatform serve`'s workers do, unless
OPENBLAS_NUM_THREADS is set (e.g. 2, to see multithreaded BLAS on a busy machine).

    .venv/bin/python bench/bench_ranker.py            # --repeats 2000 --candidates 500
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abplatform.domain import Catalog, InteractionLog, RecRequest
from strategies.ranker.data import ImpressionLog
from strategies.ranker.strategy import RankerStrategy

N_ITEMS, N_USERS, N_EXPOSURES, SLATE = 5_000, 2_000, 2_000, 10


def world(seed: int) -> tuple[InteractionLog, ImpressionLog]:
    """A seeded catalogue, click history and impression log (clicks favour one category)."""
    rng = np.random.default_rng(seed)
    catalog = Catalog(
        item_ids=np.array([f"i{i}" for i in range(N_ITEMS)]),
        categories=np.array([f"c{i % 20}" for i in range(N_ITEMS)]),
        brands=np.array([f"b{i % 60}" for i in range(N_ITEMS)]),
        prices=rng.uniform(1, 200, N_ITEMS).round(2),
    )
    users = np.array([f"u{i}" for i in range(N_USERS)])
    n = 20_000
    history = InteractionLog(
        catalog=catalog,
        user_ids=users[rng.integers(0, N_USERS, n)],
        item_ids=catalog.item_ids[rng.integers(0, N_ITEMS, n)],
        event_types=np.where(rng.random(n) < 0.1, "purchase", "click"),
        values=np.full(n, np.nan),
        timestamps=np.sort(rng.integers(0, 10**6, n)).astype(np.int64),
        user_features={
            u: {"segment": f"s{i % 4}", "age": 20 + i % 50} for i, u in enumerate(users)
        },
    )
    rows = N_EXPOSURES * SLATE
    items = rng.integers(0, N_ITEMS, rows)
    positions = np.tile(np.arange(SLATE), N_EXPOSURES)
    p = 1 / (1 + np.exp(-(-2.5 + 1.5 * (catalog.categories[items] == "c0") - 0.2 * positions)))
    clicked = rng.random(rows) < p
    log = ImpressionLog(
        exposure_ids=np.repeat(np.arange(N_EXPOSURES), SLATE).astype(np.int64),
        positions=positions.astype(np.int64),
        item_ids=catalog.item_ids[items],
        sources=np.full(rows, "popularity"),
        unit_ids=np.repeat(users[rng.integers(0, N_USERS, N_EXPOSURES)], SLATE),
        timestamps=np.repeat(10**6 + np.arange(N_EXPOSURES), SLATE).astype(np.int64),
        scenes=np.full(rows, "home"),
        clicked=clicked,
        purchased=clicked & (rng.random(rows) < 0.3),
    )
    return history, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the child: time this artifact
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args)
        return
    history, log = world(args.seed)
    ranker = RankerStrategy({"objective": "revenue", "epochs": 3}, seed=args.seed)
    started = time.perf_counter()
    ranker.fit_impressions(history, log)
    print(f"training on {len(log):,} impressions: {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        path = ranker.export(tmp, experiment="bench", variant="ranker")
        child = [sys.executable, __file__, "--serve", str(path)]
        child += ["--repeats", str(args.repeats), "--candidates", str(args.candidates)]
        # One BLAS thread, as `abplatform serve` sets for its workers (abplatform/cli/admin.py).
        env = dict(os.environ)
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, "1")
        subprocess.run([*child, "--seed", str(args.seed)], check=True, env=env)


def serve(path: Path, args: argparse.Namespace) -> None:
    """Time `score_items` of the exported ranker in this TensorFlow-free process."""
    started = time.perf_counter()
    served = RankerStrategy.from_artifact(path)
    print(f"load from artifact: {(time.perf_counter() - started) * 1000:.1f} ms")
    assert "tensorflow" not in sys.modules
    rng = np.random.default_rng(args.seed)
    request = [RecRequest("u7", scene="home")]
    times = np.empty(args.repeats)
    for i in range(args.repeats):
        items = rng.choice(N_ITEMS, size=(1, args.candidates), replace=False)
        start = time.perf_counter()
        served.score_items(request, items)
        times[i] = time.perf_counter() - start
    p50, p99 = np.percentile(times * 1000, [50, 99])
    width = served.artifact.space.width
    print(
        f"score_items, 1 request x {args.candidates} candidates ({width} features, NumPy, "
        f"{args.repeats} runs): p50 {p50:.3f} ms, p99 {p99:.3f} ms (target p99 < 2 ms)"
    )


if __name__ == "__main__":
    main()
