"""Worker processes for the bandit concurrency tests (importable by spawned children)."""

from __future__ import annotations

from typing import Any

import numpy as np

from abplatform.assignment.posteriors import RewardStats
from abplatform.assignment.thompson import ThompsonDecision, ThompsonPolicy
from abplatform.bandit import BanditStore, PersistentThompsonPolicy
from abplatform.storage.db import make_engine

ARMS = ("a", "b", "c")


def _store(url: str, experiment_id: int) -> BanditStore:
    return BanditStore(make_engine(url), experiment_id, ARMS)


def reward_batches(worker: int, batches: int) -> list[dict[str | None, dict[str, RewardStats]]]:
    """The deterministic reward batches a worker records (the parent sums them too)."""
    rng = np.random.default_rng(worker)
    out: list[dict[str | None, dict[str, RewardStats]]] = []
    for _ in range(batches):
        batch: dict[str | None, dict[str, RewardStats]] = {}
        for context in ("home_page", "cart_page"):
            n = rng.integers(1, 20, size=len(ARMS))
            s = rng.integers(0, n + 1)
            batch[context] = {
                arm: RewardStats.binary(int(k), int(j))
                for arm, k, j in zip(ARMS, n, s, strict=True)
            }
        out.append(batch)
    return out


def record(url: str, experiment_id: int, worker: int, batches: int, start: Any) -> int:
    """Record a worker's batches as fast as possible once every worker is ready."""
    store = _store(url, experiment_id)
    plan = reward_batches(worker, batches)
    start.wait()
    for batch in plan:
        store.record_rewards(batch)
    store.engine.dispose()
    return len(plan)


def publish(url: str, experiment_id: int, worker: int, versions: int, start: Any) -> list[int]:
    """Publish weight versions tagged with the worker (p_best = worker / 100 everywhere)."""
    store = _store(url, experiment_id)
    start.wait()
    got = []
    for i in range(versions):
        share = np.full(len(ARMS), 1 / len(ARMS))
        tag = np.full(len(ARMS), worker / 100 + i / 10_000)
        contexts = ("home_page", "cart_page", "product_detail")
        got.append(
            store.publish_weights(
                {c: list(share) for c in contexts},
                {c: list(tag) for c in contexts},
                {c: [worker] * len(ARMS) for c in contexts},
            )
        )
    store.engine.dispose()
    return got


def sticky(url: str, experiment_id: int, worker: int, units: int, start: Any) -> dict[str, str]:
    """Assign the same units from every worker, each drawing its own arm first."""
    store = _store(url, experiment_id)
    rng = np.random.default_rng(1000 + worker)
    start.wait()
    got = {}
    for i in range(units):
        arm = ARMS[int(rng.integers(len(ARMS)))]
        decision = store.get_or_assign(f"u{i}", None, ThompsonDecision(arm, 1 / 3, None, worker))
        got[f"u{i}"] = decision.variant
    store.engine.dispose()
    return got


def serve(url: str, experiment_id: int, worker: int, batches: int, start: Any) -> list[int]:
    """A server process: records binary rewards through the persistent policy."""
    policy = ThompsonPolicy(ARMS, burn_in_units=0, seed=worker)
    persistent = PersistentThompsonPolicy(_store(url, experiment_id), policy, update_every=50)
    rng = np.random.default_rng(worker)
    start.wait()
    published = []
    for _ in range(batches):
        n = int(rng.integers(1, 10))
        version = persistent.record_rewards({None: {"a": RewardStats.binary(n, n // 2)}})
        if version is not None:
            published.append(version)
    persistent.store.engine.dispose()
    return published


PHASES = {"record": record, "publish": publish, "sticky": sticky, "serve": serve}


def child(
    queue: Any,
    url: str,
    experiments: dict[str, int],
    worker: int,
    sizes: dict[str, int],
    start: Any,
) -> None:
    """A spawned child: run every phase on its own experiment, all workers starting together.

    Puts (worker, {phase: result}, error) on the queue; an error aborts the barrier so the
    other workers stop too instead of hanging.
    """
    results: dict[str, Any] = {}
    try:
        for name, phase in PHASES.items():
            results[name] = phase(url, experiments[name], worker, sizes[name], start)
        queue.put((worker, results, None))
    except BaseException as exc:  # report, don't hang the parent
        start.abort()
        queue.put((worker, results, f"{type(exc).__name__}: {exc}"))
