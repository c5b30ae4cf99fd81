"""End-to-end coverage of the analysis' 95% intervals against the simulator's ground truth.

Usage::

    .venv/bin/python bench/bench_coverage.py                 # 30 seeds
    .venv/bin/python bench/bench_coverage.py --seeds 50 --users 6000

Each seed simulates a small A/B test (`simulator.runner.simulate`) into its own
temporary SQLite file and analyses it with `reports.analysis.analyze` (CUPED on,
fixed horizon). For every metric it counts how often the 95% CI of the difference
(treatment - control) and of the relative lift covers the simulator's true value
(`ground_truth` in the analysis JSON), and reports the CUPED variance reduction.
With S seeds a rate's standard error is about sqrt(0.95 * 0.05 / S). It also prints
the mean and standard deviation of z = (diff - true diff) / SE over the seeds (SE from
the CI's half-width): a biased centre shows in the mean, a wrong width in the sd.
`--per-seed FILE` writes every seed's z-scores as CSV.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from abplatform.config.loader import load_experiment_text
from abplatform.storage.db import open_database
from reports.analysis import analyze
from simulator.runner import simulate

EXPERIMENT = """
key: coverage
variants:
  - {{key: control, weight: 0.5, strategy: {{kind: popularity}}}}
  - {{key: treatment, weight: 0.5, strategy: {{kind: popularity, params: {{per_category: true}}}}}}
metrics:
  - {{name: purchase_rate, type: proportion, event: purchase}}
  - {{name: clicks_per_user, type: mean, event: click}}
  - {{name: revenue_per_user, type: mean, event: purchase, value: sum}}
  - {{name: ctr, type: ratio, numerator: {{event: click}}, denominator: {{event: impression}}}}
simulation: {{users: {users}, days: 3, items: 400, slate_size: 8, seed: 1}}
analysis: {{correction: none}}
"""
Z95 = 1.959963984540054


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--no-cuped", action="store_true", help="analyse without CUPED")
    parser.add_argument("--per-seed", type=Path, help="write seed,metric,z rows to this CSV")
    args = parser.parse_args()
    text = EXPERIMENT.format(users=args.users)
    if args.no_cuped:
        text = text.replace(
            "analysis: {correction: none}", "analysis: {correction: none, cuped: false}"
        )
    config = load_experiment_text(text)
    covered: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    reduction: dict[str, list[float]] = defaultdict(list)
    z_scores: dict[str, list[float]] = defaultdict(list)
    rows: list[str] = ["seed,metric,diff,true_diff,se,z"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            engine = open_database(f"sqlite:///{Path(tmp) / f'run{seed}.db'}")
            simulate(engine, config, seed=seed, artifacts_dir=Path(tmp) / "artifacts")
            document = analyze(engine, "coverage").to_dict()
            engine.dispose()
            for metric in document["metrics"]:
                truth = metric["ground_truth"]
                (cmp,) = metric["comparisons"]
                true_diff = truth["treatment"] - truth["control"]
                true_lift = truth["treatment"] / truth["control"] - 1.0
                lo, hi = cmp["diff_ci"]
                covered[metric["metric"]]["diff"] += int(lo <= true_diff <= hi)
                se = (hi - lo) / (2 * Z95)
                z = (cmp["diff"] - true_diff) / se
                z_scores[metric["metric"]].append(z)
                rows.append(f"{seed},{metric['metric']},{cmp['diff']},{true_diff},{se},{z}")
                lo, hi = cmp["rel_lift_ci"]
                covered[metric["metric"]]["lift"] += int(lo <= true_lift <= hi)
                covered[metric["metric"]]["significant"] += int(cmp["p_value"] < 0.05)
                reduction[metric["metric"]].append(cmp["cuped"]["variance_reduction"] or 0.0)
    seeds = args.seeds
    se = math.sqrt(0.95 * 0.05 / seeds)
    print(
        f"{seeds} seeds x {args.users} users, CUPED {'off' if args.no_cuped else 'on'}, "
        f"{time.perf_counter() - started:.0f} s; "
        f"SE of a coverage rate at 95%: {se:.3f}"
    )
    print(
        "| metric | diff CI covers truth | lift CI covers truth | p < 0.05 | CUPED var. red. "
        "| z mean | z sd |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    total = 0
    for name, counts in covered.items():
        total += counts["diff"]
        mean_red = sum(reduction[name]) / len(reduction[name])
        print(
            f"| {name} | {counts['diff']}/{seeds} ({counts['diff'] / seeds:.1%}) "
            f"| {counts['lift']}/{seeds} ({counts['lift'] / seeds:.1%}) "
            f"| {counts['significant']}/{seeds} | {mean_red:.1%} "
            f"| {np.mean(z_scores[name]):+.2f} | {np.std(z_scores[name], ddof=1):.2f} |"
        )
    intervals = seeds * len(covered)
    print(
        f"all difference CIs: {total}/{intervals} = {total / intervals:.1%} "
        f"(SE {math.sqrt(0.95 * 0.05 / intervals):.3f} if independent; each seed is its own world, "
        "but the metrics of one seed share its users, so they are correlated)"
    )
    print(
        f"z mean has SE {1 / math.sqrt(seeds):.2f}; "
        f"z sd has SE about {1 / math.sqrt(2 * seeds):.2f}"
    )
    if args.per_seed is not None:
        args.per_seed.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
