"""Benchmark catalogue ingestion: items + N interactions from CSV into a temp SQLite file; rows/s.

Usage: python bench/bench_catalog_ingest.py [--rows 1000000] [--items 50000] [--unix] [--db URL]

Times the first load (items + interactions in one transaction) and a re-ingest of the same
interactions file (every row already stored, so nothing is written).
"""

from __future__ import annotations

import argparse
import csv
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from abplatform.catalog_ingest import ingest_catalog
from abplatform.storage.db import open_database

START = 1_714_521_600  # 2024-05-01T00:00:00Z
TYPES = np.array(["view", "click", "add_to_cart", "purchase", "rating"])


def write_catalog(
    folder: Path, rows: int, n_items: int, *, unix: bool, seed: int = 7
) -> tuple[Path, Path]:
    """Write items.csv (`n_items` lines) and interactions.csv (`rows` lines), seeded."""
    rng = np.random.default_rng(seed)
    items, interactions = folder / "items.csv", folder / "interactions.csv"
    item_ids = [f"item-{i:07d}" for i in range(n_items)]
    with items.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "category", "brand", "price", "title", "tags"])
        categories = rng.integers(0, 40, n_items).tolist()
        brands = rng.integers(0, 300, n_items).tolist()
        prices = np.round(rng.gamma(2.0, 15.0, n_items), 2).tolist()
        for i, item in enumerate(item_ids):
            tags = f"t{categories[i] % 7}|t{brands[i] % 11}"
            writer.writerow(
                [item, f"c{categories[i]}", f"b{brands[i]}", prices[i], f"Item {i}", tags]
            )
    n_users = max(rows // 20, 1)
    with interactions.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "item_id", "timestamp", "type", "value"])
        who = rng.integers(0, n_users, rows).tolist()
        what = np.minimum(rng.zipf(1.3, rows) - 1, n_items - 1).tolist()
        kinds = TYPES[rng.integers(0, len(TYPES), rows)].tolist()
        seconds = START + np.sort(rng.integers(0, 90 * 86_400, rows))
        if unix:
            stamps = [str(s) for s in seconds.tolist()]
        else:
            iso = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s")
            stamps = [s + "Z" for s in iso.tolist()]
        values = np.round(rng.uniform(1, 5, rows), 1).tolist()
        for i in range(rows):
            value = values[i] if kinds[i] == "rating" else ""
            writer.writerow([f"user-{who[i]:07d}", item_ids[what[i]], stamps[i], kinds[i], value])
    return items, interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="interactions to generate")
    parser.add_argument("--items", type=int, default=50_000, help="catalogue size")
    parser.add_argument("--unix", action="store_true", help="Unix seconds instead of ISO 8601")
    parser.add_argument("--db", default=None, help="database URL (default: temp SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        items, interactions = write_catalog(folder, args.rows, args.items, unix=args.unix)
        size_mb = interactions.stat().st_size / 1e6
        print(
            f"generated {args.items:,} items and {args.rows:,} interactions ({size_mb:.1f} MB) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        engine = open_database(args.db or f"sqlite:///{folder / 'bench.db'}")
        try:
            for label, item_file in (("first load", items), ("re-ingest (all stored)", None)):
                t0, cpu0 = time.perf_counter(), time.process_time()
                summary = ingest_catalog(
                    engine, "bench-shop", items=item_file, interactions=interactions
                )
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                rows = summary.interactions + summary.duplicate_interactions
                # CPU seconds too: on a shared machine wall time also measures the neighbours.
                print(
                    f"{label}: {summary.items_added:,} items + {summary.interactions:,} "
                    f"interactions ({summary.duplicate_interactions:,} already stored) in "
                    f"{elapsed:.2f} s ({cpu:.2f} s CPU) = {rows / elapsed:,.0f} interactions/s"
                )
        finally:
            engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
