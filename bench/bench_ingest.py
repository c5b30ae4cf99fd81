"""Benchmark CSV log ingestion: N events (+ N/10 exposures) into a temp SQLite file; rows/s.

Usage: python bench/bench_ingest.py [--rows 1000000] [--event-ids] [--unix] [--db URL]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from abplatform.config import validate_config
from abplatform.ingest import ingest_logs
from abplatform.storage.db import open_database

START = 1_714_521_600  # 2024-05-01T00:00:00Z
EVENT_TYPES = np.array(["view", "click", "add_to_cart", "purchase"])


def _stamps(seconds: np.ndarray, unix: bool) -> list[str]:
    if unix:
        return [str(s) for s in seconds.tolist()]
    iso = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s")
    return [s + "Z" for s in iso.tolist()]


def write_logs(
    folder: Path, rows: int, *, event_ids: bool, unix: bool, seed: int = 7
) -> tuple[Path, Path]:
    """Write exposures.csv (rows // 10 lines) and events.csv (`rows` lines) with seeded content."""
    rng = np.random.default_rng(seed)
    n_units = max(rows // 10, 1)
    exposures, events = folder / "exposures.csv", folder / "events.csv"
    units = [f"user-{i:08d}" for i in range(n_units)]
    variants = np.where(rng.random(n_units) < 0.5, "control", "treatment").tolist()
    with exposures.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["unit_id", "variant", "timestamp", "scene", "slate_size"])
        stamps = _stamps(START + rng.integers(0, 86_400, n_units), unix)
        scenes, slate_sizes = ["home_page"] * n_units, [10] * n_units
        writer.writerows(zip(units, variants, stamps, scenes, slate_sizes, strict=True))
    with events.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        header = ["unit_id", "type", "timestamp", "item_id", "value"]
        writer.writerow(["event_id", *header] if event_ids else header)
        who = rng.integers(0, n_units, rows)
        kinds = EVENT_TYPES[rng.integers(0, len(EVENT_TYPES), rows)].tolist()
        # Distinct seconds per row keep derived ids distinct (identical rows would be duplicates).
        stamps = _stamps(START + 86_400 + np.arange(rows), unix)
        items = [f"item-{i}" for i in rng.integers(0, 50_000, rows).tolist()]
        values = np.round(rng.gamma(2.0, 10.0, rows), 2).tolist()
        for i, unit in enumerate(who.tolist()):
            row = [units[unit], kinds[i], stamps[i], items[i], values[i]]
            writer.writerow([f"ev-{i}", *row] if event_ids else row)
    return exposures, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="events to generate")
    parser.add_argument("--event-ids", action="store_true", help="give an event_id column")
    parser.add_argument("--unix", action="store_true", help="Unix seconds instead of ISO 8601")
    parser.add_argument("--db", default=None, help="database URL (default: temp SQLite file)")
    args = parser.parse_args()
    config = validate_config(
        {
            "key": "bench-ingest",
            "variants": [{"key": "control", "weight": 0.5}, {"key": "treatment", "weight": 0.5}],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        exposures, events = write_logs(folder, args.rows, event_ids=args.event_ids, unix=args.unix)
        size_mb = events.stat().st_size / 1e6
        print(
            f"generated {args.rows:,} events ({size_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s"
        )
        engine = open_database(args.db or f"sqlite:///{folder / 'bench.db'}")
        try:
            runs = [
                ("first load", exposures),
                ("re-ingest of events.csv (all duplicates)", None),
            ]
            for label, exposure_log in runs:
                t0, cpu0 = time.perf_counter(), time.process_time()
                summary = ingest_logs(engine, config, exposure_log, events)
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                rows = summary.exposures + summary.events + summary.duplicate_events
                # CPU seconds too: on a shared machine wall time also measures the neighbours.
                print(
                    f"{label}: {summary.exposures:,} exposures + {summary.events:,} events "
                    f"({summary.duplicate_events:,} duplicates skipped) in {elapsed:.2f} s "
                    f"({cpu:.2f} s CPU) = {rows / elapsed:,.0f} rows/s"
                )
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
