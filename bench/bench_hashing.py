"""Benchmark the vectorised and scalar GrowthBook-compatible bucketing functions."""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
from timing import best_time

from abplatform.assignment.hashing import bucket, bucket_batch


def _scalar_loop(seed: str, unit_ids: list[str], version: int) -> list[float | None]:
    """Bucket ``unit_ids`` one at a time with the scalar function."""
    return [bucket(seed, uid, version) for uid in unit_ids]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print ids/second lines; return a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2_000_000, help="ids for the batch timings")
    parser.add_argument(
        "--scalar-n", type=int, default=200_000, help="ids for the scalar-loop timing"
    )
    parser.add_argument("--check-n", type=int, default=20_000, help="ids checked batch == scalar")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (best is reported)")
    parser.add_argument("--seed", default="checkout-reco-v1", help="experiment seed to hash with")
    args = parser.parse_args(argv)

    ids = [f"user-{i:07d}" for i in range(args.n)]
    ids_array = np.array(ids, dtype=np.str_)
    seed: str = args.seed
    print(f"n={args.n:,} ids like {ids[min(1234567, args.n - 1)]!r}, seed={seed!r}")

    ok = True
    for version in (1, 2):
        sample = [*ids[: args.check_n], "", "ü-ñ-漢", "😀-user", "x" * 40]
        batch = bucket_batch(seed, sample, version)
        scalar = np.array([bucket(seed, uid, version) for uid in sample], dtype=np.float64)
        same = bool(np.array_equal(batch, scalar))
        ok = ok and same
        print(f"check v{version}: batch == scalar on {len(sample):,} ids: {same}")

    for version in (1, 2):
        for label, data in (("list[str]", ids), ("np.ndarray[U]", ids_array)):
            elapsed = best_time(partial(bucket_batch, seed, data, version), args.repeats)
            print(
                f"bucket_batch v{version} ({label:13s}): {args.n / elapsed:>13,.0f} ids/s "
                f"({elapsed:.3f} s for {args.n:,})"
            )

    scalar_ids = ids[: args.scalar_n]
    for version in (1, 2):
        elapsed = best_time(partial(_scalar_loop, seed, scalar_ids, version), args.repeats)
        print(
            f"scalar bucket loop v{version}     : {len(scalar_ids) / elapsed:>13,.0f} ids/s "
            f"({elapsed:.3f} s for {len(scalar_ids):,})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
