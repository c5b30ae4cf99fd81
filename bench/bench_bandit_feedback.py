"""Cost of serving a bandit: decisions in process, and rewards counted by the buffered writer.

Prints, for SQLite (a temporary file) and PostgreSQL (a temporary database at
127.0.0.1:5432, skipped when unreachable):

- `/v1/events`-style throughput: batches of 100 events submitted by 8 concurrent callers to
  the `BufferedWriter`, each answered after its commit, for events of a hashed experiment
  (no bandit work) and for purchase events of a sticky and of a per-request bandit (each a
  reward: its trial's row locked, read and updated, the arm's counts incremented, all in
  the writer's transaction), over 20,000 trials each;
- the in-process decision: a per-request draw from the cached weights, a sticky unit this
  process already knows, and a new sticky unit (its first decision stored in SQL).

Run: .venv/bin/python bench/bench_bandit_feedback.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, create_engine, text

from abplatform.bandit import (
    NO_CONTEXT,
    BanditFeedback,
    BanditStore,
    PersistentThompsonPolicy,
    RewardRule,
    StickyDecisions,
    apply_bandit_feedback,
    delete_bandit_rows,
    write_sticky_decisions,
)
from abplatform.config import load_experiment_text
from abplatform.storage.bulk import seconds_to_sql
from abplatform.storage.db import make_engine, transaction, upgrade
from abplatform.storage.repository import save_experiment, utcnow
from abplatform.storage.rows import EventRow
from abplatform.writer import BufferedWriter

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UNITS = 20_000
BATCH = 100
CALLERS = 8

BANDIT = """
key: {key}
assignment: {{type: thompson, reward_metric: buy, update_every: 1000000, burn_in_units: 0,
              sticky: {sticky}}}
metrics: [{{name: buy, type: proportion, event: purchase}}]
variants: [{{key: a}}, {{key: b}}, {{key: c}}]
"""
HASHED = """
key: hashed
variants: [{key: a, weight: 0.5}, {key: b, weight: 0.5}]
metrics: [{name: buy, type: proportion, event: purchase}]
"""


def _save(engine: Engine, yaml: str) -> int:
    with transaction(engine) as session:
        return save_experiment(session, load_experiment_text(yaml), "default").id


@dataclass(frozen=True)
class _Exposure:
    """A per-request exposure as the bandit sees it (`ExposureFacts`)."""

    experiment_id: int
    variant: str
    scene: str | None = None
    weight_version: int | None = 0


def _seed_trials(engine: Engine, sticky: int, per_request: int) -> None:
    """UNITS sticky units and UNITS per-request exposures (trials), inserted in bulk: the
    bench measures rewards, not set-up."""
    arms = ["abc"[i % 3] for i in range(UNITS)]
    decisions = StickyDecisions(
        context=[NO_CONTEXT] * UNITS,
        unit_id=[f"u{i}" for i in range(UNITS)],
        arm=arms,
        propensity=[1 / 3] * UNITS,
        weight_version=[0] * UNITS,
        assigned_at=seconds_to_sql([int(time.time())] * UNITS),
    )
    rule = RewardRule(per_request, ("a", "b", "c"), "purchase", True, False, False, False)
    with engine.begin() as conn:
        delete_bandit_rows(conn, sticky)
        delete_bandit_rows(conn, per_request)
        write_sticky_decisions(conn, sticky, decisions)
        exposures = [_Exposure(per_request, arm) for arm in arms]
        apply_bandit_feedback(conn, {per_request: rule}, range(1, UNITS + 1), exposures, [])


async def _events_per_second(
    writer: BufferedWriter, make: Callable[[int, int], list[EventRow]], seconds: float
) -> float:
    """Events committed per second by CALLERS concurrent submitters of BATCH-event batches."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(c: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < stop:
            result = await writer.submit((), make(c, i))
            done += result.new_events
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(CALLERS)))
    return done / (time.perf_counter() - start)


def _event_maker(
    experiment_id: int, tag: str, by_exposure: bool = False
) -> Callable[[int, int], list[EventRow]]:
    rng = np.random.default_rng(0)
    now = utcnow()

    def make(caller: int, index: int) -> list[EventRow]:
        units = rng.integers(UNITS, size=BATCH)
        return [
            EventRow(
                f"{tag}-{caller}-{index}-{j}",
                experiment_id,
                int(u) + 1 if by_exposure else None,
                f"u{u}",
                "purchase",
                None,
                None,
                now,
            )
            for j, u in enumerate(units)
        ]

    return make


def _time_per_call(call: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n


def bench(url: str, label: str, seconds: float) -> None:
    engine = make_engine(url)
    upgrade(engine)
    sticky = _save(engine, BANDIT.format(key="sticky", sticky="true"))
    per_request = _save(engine, BANDIT.format(key="per_request", sticky="false"))
    hashed = _save(engine, HASHED)
    _seed_trials(engine, sticky, per_request)
    for experiment_id in (sticky, per_request):
        BanditStore(engine, experiment_id, ("a", "b", "c")).ensure_arms()

    async def writes() -> tuple[float, float, float]:
        writer = BufferedWriter(engine, bandit=BanditFeedback())
        writer.start()
        try:
            plain = await _events_per_second(writer, _event_maker(hashed, "h"), seconds)
            units = await _events_per_second(writer, _event_maker(sticky, "s"), seconds)
            exposures = await _events_per_second(
                writer, _event_maker(per_request, "r", by_exposure=True), seconds
            )
        finally:
            await writer.close()
        return plain, units, exposures

    plain, units, exposures = asyncio.run(writes())
    print(f"{label}: events of a hashed experiment               {plain:9,.0f} events/s")
    print(f"{label}: purchases, each a sticky unit's reward      {units:9,.0f} events/s")
    print(f"{label}: purchases, each a per-request trial's reward {exposures:8,.0f} events/s")

    config = load_experiment_text(BANDIT.format(key="per_request", sticky="false"))
    served = PersistentThompsonPolicy.from_config(
        engine, per_request, config, refresh_seconds=float("inf"), count_trials=True
    )
    draw = _time_per_call(lambda: served.draw("u1"), 20_000)
    config = load_experiment_text(BANDIT.format(key="sticky", sticky="true"))
    sticky_policy = PersistentThompsonPolicy.from_config(
        engine, sticky, config, refresh_seconds=float("inf"), count_trials=True
    )
    sticky_policy.settle("u1", None, sticky_policy.draw("u1"))
    known = _time_per_call(lambda: sticky_policy.known("u1"), 20_000)
    fresh = iter(range(10**9))

    def new_unit() -> None:
        unit = f"new{next(fresh)}"
        sticky_policy.settle(unit, None, sticky_policy.draw(unit))

    first = _time_per_call(new_unit, 300)
    print(
        f"{label}: decision per request {draw * 1e6:.1f} us, known sticky unit "
        f"{known * 1e6:.2f} us, new sticky unit {first * 1e3:.2f} ms (SQL, in a worker thread)"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bench(f"sqlite:///{Path(folder) / 'bench.db'}", "sqlite", args.seconds)
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            name = f"abp_bench_{uuid.uuid4().hex[:8]}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server: SQLite only
        print(f"postgresql: skipped ({type(exc).__name__})")
        return
    try:
        bench(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", "postgresql", args.seconds)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
