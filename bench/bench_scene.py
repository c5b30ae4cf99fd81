"""Scene strategies: per-request overhead of routing and re-ranking, and co-purchase build time."""

from __future__ import annotations

import argparse
import time

import numpy as np

from abplatform.domain import Catalog, InteractionLog, RecRequest
from abplatform.registry import build_strategy


def synthetic_log(n_rows: int, n_users: int, n_items: int, seed: int = 0) -> InteractionLog:
    """Zipf-like item popularity, 20% purchases, over 60 days."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = rng.choice(n_items, size=n_rows, p=weights / weights.sum())
    catalog = Catalog(
        item_ids=np.array([f"i{i:06d}" for i in range(n_items)]),
        categories=np.array([f"c{i % 24}" for i in range(n_items)]),
        brands=np.array([f"b{i % 12}" for i in range(n_items)]),
        prices=rng.uniform(2, 300, size=n_items).round(2),
    )
    return InteractionLog(
        catalog=catalog,
        user_ids=np.array([f"u{u}" for u in rng.integers(0, n_users, size=n_rows)]),
        item_ids=catalog.item_ids[items],
        event_types=np.where(rng.random(n_rows) < 0.2, "purchase", "click"),
        values=np.full(n_rows, np.nan),
        timestamps=np.sort(rng.integers(0, 60 * 86_400, size=n_rows)),
    )


def latency(strategy: object, requests: list[RecRequest], k: int) -> np.ndarray:
    """Seconds per single `recommend` call."""
    out = np.empty(len(requests))
    for i, request in enumerate(requests):
        start = time.perf_counter()
        strategy.recommend(request, k)  # type: ignore[attr-defined]
        out[i] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="history interactions")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=3_000)
    args = parser.parse_args()
    log = synthetic_log(args.rows, args.users, args.items)

    complementary = build_strategy("complementary", {"events": ["click", "purchase"]})
    start = time.perf_counter()
    complementary.fit(log)
    print(
        f"co-purchase statistics for {args.rows:,} interactions "
        f"({args.users:,} users, {args.items:,} items): {time.perf_counter() - start:.2f} s"
    )

    rng = np.random.default_rng(1)
    users = [f"u{u}" for u in rng.integers(0, args.users, size=args.requests)]
    home = [RecRequest(u, scene="home_page") for u in users]
    base = build_strategy("popularity", {"per_category": True})
    router = build_strategy(
        "scene_router",
        {
            "strategies": {"pop": {"kind": "popularity", "params": {"per_category": True}}},
            "default": "pop",
        },
    )
    rerank = build_strategy(
        "diversity_rerank",
        {
            "base": {"kind": "popularity", "params": {"per_category": True}},
            "lambda": 0.3,
            "candidates": 50,
        },
    )
    # Over a random base every request has new candidates, so no re-ranking is cached.
    random_base = build_strategy("random", {})
    random_rerank = build_strategy(
        "diversity_rerank", {"base": {"kind": "random"}, "lambda": 0.3, "candidates": 50}
    )
    pairs = {
        "popularity": base,
        "scene_router": router,
        "diversity_rerank": rerank,
        "random": random_base,
        "diversity_rerank(random)": random_rerank,
    }
    timings = {}
    for name, strategy in pairs.items():
        strategy.fit(log)
        latency(strategy, home[:200], 10)  # warm-up
        timings[name] = latency(strategy, home, 10)
    p50 = {name: np.percentile(t, 50) * 1e3 for name, t in timings.items()}
    p99 = {name: np.percentile(t, 99) * 1e3 for name, t in timings.items()}
    for name in timings:
        print(f"{name:<26} p50 {p50[name]:.3f} ms  p99 {p99[name]:.3f} ms")
    for name, over in (
        ("scene_router", "popularity"),
        ("diversity_rerank", "popularity"),
        ("diversity_rerank(random)", "random"),
    ):
        print(f"overhead of {name} over {over} at p99: {p99[name] - p99[over]:.3f} ms")


if __name__ == "__main__":
    main()
