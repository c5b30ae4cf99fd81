"""Benchmark Thompson sampling against UCB1, epsilon-greedy and uniform on Bernoulli bandits.

Thompson sampling runs through the production `ThompsonPolicy` (posterior updates, P(best)
weights, drawing arms by inverting the weights), one policy context per seed so all seeds
advance together in one vectorised update. Per-step updates use ``draws=1`` Monte Carlo:
the weights are then the one-hot argmax of a single joint posterior draw, which is textbook
Thompson sampling. Batched updates use the policy's default (quadrature P(best) for Beta
arms): between updates every step draws its arm from the frozen P(best), as batched
Thompson sampling does with a fresh posterior draw per step.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt
from timing import best_time

from abplatform.assignment.allocation import Method, allocation_weights_many
from abplatform.assignment.posteriors import BetaPosterior, RewardStats
from abplatform.assignment.thompson import ThompsonPolicy, choose_arms

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# chooser(successes (S, K), pulls (S, K), t, batch, rng) -> arms (batch, S)
Chooser = Callable[[FloatArray, FloatArray, int, int, np.random.Generator], IntArray]


def _ucb1(
    succ: FloatArray, pulls: FloatArray, t: int, batch: int, rng: np.random.Generator
) -> IntArray:
    """Auer et al. (2002): mean + sqrt(2 ln t / n); untried arms first. Fixed within a batch."""
    with np.errstate(divide="ignore", invalid="ignore"):
        index = succ / pulls + np.sqrt(2.0 * math.log(max(t, 1)) / pulls)
    index[pulls == 0] = np.inf
    return np.broadcast_to(index.argmax(axis=-1), (batch, succ.shape[0])).astype(np.int64)


def _epsilon_greedy(
    succ: FloatArray, pulls: FloatArray, t: int, batch: int, rng: np.random.Generator
) -> IntArray:
    """Explore uniformly with probability 0.1, else play the best empirical mean."""
    seeds, arms = succ.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(pulls > 0, succ / pulls, np.inf)
    greedy = np.broadcast_to(mean.argmax(axis=-1), (batch, seeds))
    explore = rng.random((batch, seeds)) < 0.1
    return np.where(explore, rng.integers(0, arms, (batch, seeds)), greedy).astype(np.int64)


def _uniform(
    succ: FloatArray, pulls: FloatArray, t: int, batch: int, rng: np.random.Generator
) -> IntArray:
    """Pick an arm uniformly at random."""
    return rng.integers(0, succ.shape[1], (batch, succ.shape[0]), dtype=np.int64)


ALGORITHMS: dict[str, Chooser | None] = {
    "thompson": None,  # the production ThompsonPolicy, see simulate_thompson
    "ucb1": _ucb1,
    "eps-greedy(0.1)": _epsilon_greedy,
    "uniform": _uniform,
}


def simulate(
    chooser: Chooser,
    probs: FloatArray,
    horizon: int,
    seeds: int,
    batch: int,
    rng: np.random.Generator,
) -> FloatArray:
    """Pseudo-regret sum_t (p* - p_{a_t}) at the horizon, one value per seed.

    All seeds run at once: state is (seeds, arms) and each step (or batch of ``batch`` steps,
    between which the state is frozen, as with late feedback) is one set of array operations.
    """
    arms = len(probs)
    gaps = probs.max() - probs
    succ = np.zeros((seeds, arms))
    pulls = np.zeros((seeds, arms))
    regret = np.zeros(seeds)
    rows = np.arange(seeds)
    t = 0
    while t < horizon:
        size = min(batch, horizon - t)
        chosen = chooser(succ, pulls, t, size, rng)  # (size, seeds)
        rewards = rng.random(chosen.shape) < probs[chosen]
        regret += gaps[chosen].sum(axis=0)
        if size == 1:
            pulls[rows, chosen[0]] += 1
            succ[rows, chosen[0]] += rewards[0]
        else:
            onehot = chosen[..., None] == np.arange(arms)
            pulls += onehot.sum(axis=0)
            succ += (onehot & rewards[..., None]).sum(axis=0)
        t += size
    return regret


def simulate_thompson(
    probs: FloatArray, horizon: int, seeds: int, batch: int, rng: np.random.Generator
) -> FloatArray:
    """`simulate` for Thompson sampling through `ThompsonPolicy`, one context per seed."""
    arms = len(probs)
    gaps = probs.max() - probs
    keys = [f"arm{i}" for i in range(arms)]
    per_step = batch == 1
    policy = ThompsonPolicy(
        keys,
        draws=1 if per_step else 10_000,
        method="monte_carlo" if per_step else "auto",
        seed=int(rng.integers(2**32)),
    )
    contexts = [f"seed{i}" for i in range(seeds)]
    regret = np.zeros(seeds)
    t = 0
    while t < horizon:
        size = min(batch, horizon - t)
        weights = policy.weights_many(contexts)  # (seeds, arms), frozen within the batch
        chosen = choose_arms(
            np.broadcast_to(weights, (size, seeds, arms)), rng.random((size, seeds))
        )
        rewards = rng.random(chosen.shape) < probs[chosen]
        regret += gaps[chosen].sum(axis=0)
        onehot = chosen[..., None] == np.arange(arms)  # (size, seeds, arms)
        pulls = onehot.sum(axis=0)
        wins = (onehot & rewards[..., None]).sum(axis=0)
        feedback: dict[str | None, dict[str, RewardStats]] = {
            context: {
                keys[k]: RewardStats.binary(int(pulls[i, k]), int(wins[i, k]))
                for k in np.flatnonzero(pulls[i])
            }
            for i, context in enumerate(contexts)
        }
        policy.update_many(feedback)
        t += size
    return regret


def main(argv: list[str] | None = None) -> int:
    """Run the regret scenarios and the update-cost timings; print tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="independent runs per cell")
    parser.add_argument("--horizon", type=int, default=100_000, help="steps per run (T)")
    parser.add_argument("--draws", type=int, default=10_000, help="Monte Carlo draws per update")
    parser.add_argument("--contexts", type=int, default=100, help="contexts for the many-update")
    parser.add_argument(
        "--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset to run"
    )
    parser.add_argument("--seed", type=int, default=20261127, help="master seed")
    parser.add_argument("--no-regret", action="store_true", help="only time the weight updates")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 seeds and T=20,000 (about a minute; the references hold at T=100,000 only)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.horizon = min(args.seeds, 20), min(args.horizon, 20_000)

    ten = np.array([0.5] + [0.4] * 9)
    scenarios = (
        []
        if args.no_regret
        else [
            ("(a) 2 arms .10/.11", np.array([0.10, 0.11]), 1, 58.0),
            ("(b) 10 arms .5/.4", ten, 1, 250.0),
            ("(c) 10 arms, batch 100", ten, 100, 255.0),
            ("(c) 10 arms, batch 1000", ten, 1000, 275.0),
        ]
    )
    names = [n for n in args.algorithms.split(",") if n]
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        parser.error(f"unknown algorithms {unknown}; known: {list(ALGORITHMS)}")

    if scenarios:
        _print_regret_table(scenarios, names, args.horizon, args.seeds, args.seed)
    _print_update_costs(args.draws, args.contexts)
    return 0


def _print_regret_table(
    scenarios: list[tuple[str, FloatArray, int, float]],
    names: list[str],
    horizon: int,
    seeds: int,
    seed: int,
) -> None:
    """One row per scenario: mean regret ± SE per algorithm, TS against its reference."""
    print(f"Mean cumulative pseudo-regret at T={horizon:,} over {seeds} seeds (± 1 SE)")
    header = f"{'scenario':<26}" + "".join(f"{n:>20}" for n in names)
    header += f"{'TS ref':>9}{'TS/ref ± SE':>14}{'±15%':>6}{'secs':>7}"
    print(header)
    master = np.random.SeedSequence(seed)
    for (label, probs, batch, reference), child in zip(
        scenarios, master.spawn(len(scenarios)), strict=True
    ):
        start = time.perf_counter()
        cells, ts_mean, ts_se = [], float("nan"), float("nan")
        for name, algo_seed in zip(names, child.spawn(len(names)), strict=True):
            algo_rng = np.random.default_rng(algo_seed)
            chooser = ALGORITHMS[name]
            if chooser is None:
                regret = simulate_thompson(probs, horizon, seeds, batch, algo_rng)
            else:
                regret = simulate(chooser, probs, horizon, seeds, batch, algo_rng)
            mean, se = regret.mean(), regret.std(ddof=1) / math.sqrt(seeds)
            cells.append(f"{mean:>11.1f} ± {se:<6.1f}")
            if name == "thompson":
                ts_mean, ts_se = float(mean), float(se)
        ratio, ratio_se = ts_mean / reference, ts_se / reference
        # "n.s.": outside 15% but within 2 SE of it, too noisy to tell (heavy-tailed regret).
        ok = "yes" if abs(ratio - 1) <= 0.15 else ("no" if ratio == ratio else "-")
        if ok == "no" and abs(ratio - 1) - 0.15 < 2 * ratio_se:
            ok = "n.s."
        print(
            f"{label:<26}"
            + "".join(f"{c:>20}" for c in cells)
            + f"{reference:>9.0f}{ratio:>8.2f} ± {ratio_se:.2f}{ok:>6}"
            + f"{time.perf_counter() - start:>7.1f}"
        )


def _print_update_costs(draws_default: int, contexts: int) -> None:
    """Wall-clock cost of one batched weight update: 10 arms, and contexts x 10 arms."""
    print(f"\nCost of one batched weight update (best of 5; MC draws={draws_default:,})")
    keys = [f"arm{i}" for i in range(10)]
    batch_stats = {k: RewardStats.binary(1000, 100 + 5 * i) for i, k in enumerate(keys)}
    many_stats: dict[str | None, dict[str, RewardStats]] = {
        f"ctx{c}": {k: RewardStats.binary(1000, 100 + c % 7 + 5 * i) for i, k in enumerate(keys)}
        for c in range(contexts)
    }
    methods: list[tuple[Method, str]] = [
        ("auto", "quadrature (default)"),
        ("monte_carlo", f"Monte Carlo {draws_default:,}"),
    ]
    for method, label in methods:
        policy = ThompsonPolicy(keys, draws=draws_default, seed=1, method=method)
        single = best_time(partial(policy.update, batch_stats), 5)
        many = best_time(partial(policy.update_many, many_stats), 5)
        print(f"  {'ThompsonPolicy.update, 10 arms, ' + label:<62}{single * 1e3:>9.1f} ms")
        text = f"ThompsonPolicy.update_many, {contexts} x 10 arms, {label}"
        print(f"  {text:<62}{many * 1e3:>9.1f} ms   (target < 50 ms)")
    rng = np.random.default_rng(2)
    rows = [
        [BetaPosterior(1 + 100 + c % 7 + 5 * i, 1 + 900 - 5 * i) for i in range(10)]
        for c in range(contexts)
    ]
    for draws in sorted({draws_default, 1000}, reverse=True):

        def many_mc(d: int = draws) -> object:
            return allocation_weights_many(rows, draws=d, rng=rng)

        label = f"allocation_weights_many, {contexts} x 10, MC draws={draws:,}"
        print(f"  {label:<62}{best_time(many_mc, 3) * 1e3:>9.1f} ms")

    def many_quad() -> object:
        return allocation_weights_many(rows, rng=rng, method="quadrature")

    label = f"allocation_weights_many, {contexts} x 10, quadrature"
    print(f"  {label:<62}{best_time(many_quad, 3) * 1e3:>9.1f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
