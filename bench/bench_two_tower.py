"""Two-tower speed and memory: training, NumPy top-k serving, TFRS BruteForce for comparison."""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

from abplatform.config.models import SimulationConfig, WorldConfig
from abplatform.domain import InteractionLog, RecRequest
from simulator.history import generate_history
from simulator.world import build_world
from strategies.two_tower import TwoTowerStrategy
from strategies.two_tower.data import UserFeatureEncoder, positive_sequences, user_inputs

START = 1_770_000_000


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident set size from /proc, in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so VmHWM measures what follows."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def simulated_log(users: int, items: int, interactions: int, seed: int) -> InteractionLog:
    """The simulator's organic history, its most recent `interactions` rows."""
    # About 0.5 to 0.6 clicks and purchases per organic session: ask for a little more.
    sessions = interactions / users / 0.45
    sim = SimulationConfig(
        users=users, items=items, seed=seed, world=WorldConfig(history_sessions_per_user=sessions)
    )
    world = build_world(sim)
    h = generate_history(world, START, np.random.default_rng(seed))
    keep = slice(max(len(h) - interactions, 0), len(h))
    return InteractionLog(
        catalog=world.catalog(),
        user_ids=world.user_ids[h.user[keep]],
        item_ids=world.item_ids[h.item[keep]],
        event_types=h.event_type[keep],
        values=h.value[keep],
        timestamps=h.ts[keep],
    )


def percentiles(seconds: list[float]) -> str:
    """p50 / p99 in microseconds."""
    p50, p99 = np.percentile(np.array(seconds) * 1e6, [50, 99])
    return f"p50 {p50:,.0f} us, p99 {p99:,.0f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-users", type=int, default=1_000)
    parser.add_argument("--single-calls", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    log = simulated_log(args.users, args.items, args.interactions, args.seed)
    n_users = np.unique(log.user_ids).size
    print(f"history: {len(log):,} interactions, {n_users:,} users, {len(log.catalog):,} items")
    rss_data = rss_mib()
    import strategies.two_tower.model  # noqa: F401 (TensorFlow's own footprint, apart)

    rss_before = rss_mib()
    reset = reset_peak_rss()

    # Every epoch runs (patience >= epochs); validation on 10% of users, as by default.
    params = {"epochs": args.epochs, "early_stopping_patience": args.epochs}
    strategy = TwoTowerStrategy(params, seed=args.seed)
    clock = time.perf_counter()
    strategy.fit(log)
    fit_seconds = time.perf_counter() - clock
    training = strategy.artifact.manifest["training"]
    print(
        f"fit: {fit_seconds:.1f} s in all (data preparation and embedding included); "
        f"Keras training {training['seconds']:.1f} s for {training['epochs_run']} epochs "
        f"of {training['examples']:,} examples (with per-epoch validation)"
    )
    peak = rss_mib("VmHWM") if reset else peak_rss_mib()
    print(
        f"RSS: {rss_data:,.0f} MiB with the history, {rss_before:,.0f} MiB once TensorFlow "
        f"and TFRS are imported (+{rss_before - rss_data:,.0f}); peak during fit "
        f"{peak:,.0f} MiB (+{peak - rss_before:,.0f} MiB for training)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = strategy.export(tmp, experiment="bench", variant="two_tower")
        served = TwoTowerStrategy.from_artifact(path)
        users = strategy.artifact.user_ids[: args.batch_users].tolist()
        requests = [RecRequest(u) for u in users]
        served.recommend_batch(requests[:10], 10)  # build the serving caches once
        runs, cpu = [], []
        for _ in range(20):
            clock, cpu_clock = time.perf_counter(), time.process_time()
            served.recommend_batch(requests, 10)
            runs.append(time.perf_counter() - clock)
            cpu.append(time.process_time() - cpu_clock)
        print(
            f"NumPy recommend_batch: {len(requests):,} users, top 10 of {len(log.catalog):,} "
            f"items: median {np.median(runs) * 1e3:.1f} ms, best {min(runs) * 1e3:.1f} ms "
            f"(CPU time median {np.median(cpu) * 1e3:.1f} ms; BLAS may use several threads)"
        )
        singles = []
        cpu_clock = time.process_time()
        for i in range(args.single_calls):
            request = requests[i % len(requests)]
            clock = time.perf_counter()
            served.recommend(request, 10)
            singles.append(time.perf_counter() - clock)
        cpu_each = (time.process_time() - cpu_clock) / args.single_calls
        print(
            f"NumPy recommend, one user, top 10: {percentiles(singles)} "
            f"(mean CPU time {cpu_each * 1e6:,.0f} us)"
        )

    import tensorflow as tf

    towers = strategy.towers
    sequences = positive_sequences(log, strategy.params.purchase_weight)
    inputs = user_inputs(
        sequences,
        np.array(users),
        UserFeatureEncoder(),
        {},
        strategy.params.history_length,
    )
    import tensorflow_recommenders as tfrs

    index = tfrs.layers.factorized_top_k.BruteForce(k=10)
    tokens = np.arange(1, len(log.catalog) + 1, dtype=np.int32)
    index.index(tf.constant(towers.item_embeddings()), tf.constant(tokens))
    queries = tf.constant(towers.user_embeddings(inputs))
    index(queries[:1])
    runs = []
    for _ in range(20):
        clock = time.perf_counter()
        index(queries)
        runs.append(time.perf_counter() - clock)
    print(
        f"TFRS BruteForce on query embeddings, {len(users):,} users: "
        f"median {np.median(runs) * 1e3:.1f} ms"
    )
    singles = []
    for i in range(args.single_calls):
        query = queries[i % len(users) : i % len(users) + 1]
        clock = time.perf_counter()
        index(query)
        singles.append(time.perf_counter() - clock)
    print(f"TFRS BruteForce on a query embedding, one user: {percentiles(singles)}")
    with_tower = tfrs.layers.factorized_top_k.BruteForce(towers.user_tower, k=10)
    with_tower.index(tf.constant(towers.item_embeddings()), tf.constant(tokens))
    one = inputs.take(np.arange(1))
    features = {"user_id": one.user_ids, "history": one.history}
    with_tower(features)
    singles = []
    for _ in range(min(args.single_calls, 500)):
        clock = time.perf_counter()
        with_tower(features)
        singles.append(time.perf_counter() - clock)
    print(f"TFRS BruteForce with the user tower, one user: {percentiles(singles)}")
    print(f"peak RSS at the end: {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()
