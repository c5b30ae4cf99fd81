"""Play a Thompson-sampling experiment: batched adaptive allocation with logged propensities.

Traffic is generated for the whole run first (sessions, scenes, contexts), then played in
arrival order in batches of ``update_every`` bandit units:

- a *bandit unit* is what one decision covers: with ``sticky: true`` the user (the user in
  one scene with ``context: scene``), which keeps its arm for all its sessions; with
  ``sticky: false`` one request (session);
- each batch's new units are drawn from the weights in force (version ``b`` for batch ``b``;
  version 0 = equal weights), their sessions are simulated exactly as for hashed
  experiments, and each unit's reward is the reward metric of the unit (0/1 for a proportion
  metric, the unit's count or sum for a mean metric);
- the policy then folds the batch's rewards in (one update per context) and the next
  version of the weights is in force for the next batch.

Feedback is delayed to the end of its batch: the reward of a sticky unit is its outcome over
the whole run, as the analysis defines it, so the policy learns the metric that is analysed.
Regret is pseudo-regret against the simulator's true per-arm values (per context):
``sum over units of (value of the best arm - value of the chosen arm)``, and beside it the
expected regret of a fixed equal split over the same units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

from abplatform.assignment.engine import build_thompson_policy
from abplatform.assignment.posteriors import RewardStats
from abplatform.assignment.thompson import ThompsonPolicy, choose_arms
from abplatform.bandit import (
    NO_CONTEXT,
    ArmTotals,
    StickyDecisions,
    WeightHistory,
    write_simulated_run,
)
from abplatform.config.models import (
    BanditSpec,
    ExperimentConfig,
    ProportionMetric,
    RewardMetric,
    SimulationConfig,
)
from abplatform.domain import SCENES
from abplatform.progress import Progress
from abplatform.storage.bulk import seconds_to_sql
from simulator.context import Contexts, draw_contexts, draw_scenes
from simulator.rows import SessionBlock, sample_sessions, write_sessions
from simulator.tally import VariantTally
from simulator.truth import SessionExpectations, SlateSource, combine
from simulator.world import World

SECONDS_PER_DAY = 86_400
FLUSH_SESSIONS = 50_000
"""Buffered sessions written in one set of bulk inserts."""


@dataclass(frozen=True)
class Traffic:
    """Every session of the run in arrival order: user, time, scene and context."""

    users: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    contexts: Contexts
    start: int
    """Unix seconds of the experiment's start."""


def draw_traffic(
    world: World,
    daily_rate: npt.NDArray[np.float64],
    sim: SimulationConfig,
    start: int,
    rng: np.random.Generator,
) -> Traffic:
    """Sessions of every day (Poisson per user and day), sorted by time."""
    users_by_day, ts_by_day = [], []
    for day in range(sim.days):
        counts = rng.poisson(daily_rate)
        users = np.repeat(np.arange(world.n_users, dtype=np.int64), counts)
        ts = start + day * SECONDS_PER_DAY + rng.integers(0, SECONDS_PER_DAY - 3600, users.size)
        order = np.argsort(ts, kind="stable")
        users_by_day.append(users[order])
        ts_by_day.append(ts[order])
    users = np.concatenate(users_by_day)
    ts = np.concatenate(ts_by_day).astype(np.int64)
    contexts = draw_contexts(world, users, draw_scenes(sim.scenes, users.size, rng), rng)
    return Traffic(users, ts, contexts, start)


def context_labels(spec: BanditSpec, shares: dict[str, float]) -> list[str]:
    """The bandit's contexts: one per scene with traffic, or the single empty context."""
    if spec.assignment.context is None:
        return [NO_CONTEXT]
    return [scene for scene in SCENES if shares.get(scene, 0.0) > 0]


def _reward_per_session(
    metric: RewardMetric,
    k: int,
    clicked: npt.NDArray[np.bool_],
    bought: npt.NDArray[np.bool_],
    revenue: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Each session's count (or value sum) of the reward metric's event."""
    n = clicked.shape[0]
    value = "count" if isinstance(metric, ProportionMetric) else metric.value
    if metric.event == "impression":
        return np.full(n, float(k))
    if metric.event == "click":
        return clicked.sum(axis=1).astype(np.float64) if value == "count" else np.zeros(n)
    if metric.event == "purchase":
        if value == "count":
            counts: npt.NDArray[np.float64] = bought.sum(axis=1).astype(np.float64)
            return counts
        return revenue
    return np.zeros(n)  # the simulator produces no other event types


def arm_values(
    spec: BanditSpec,
    per_scene: dict[str, dict[str, SessionExpectations]],
    rate: npt.NDArray[np.float64],
    shares: dict[str, float],
) -> dict[str, dict[str, float]]:
    """True expected reward of one bandit unit per context and arm.

    Sticky units (users, or users in one scene): the reward metric's population value over
    the units with at least one session (see `simulator.truth`), with ``rate`` (times the
    scene's share in a context). Per request: the expected reward of one session,
    weighted by the users' session rates.
    """
    metric = spec.reward_metric
    out: dict[str, dict[str, float]] = {}
    for label in context_labels(spec, shares):
        out[label] = {}
        for arm, scenes in per_scene.items():
            if label == NO_CONTEXT:
                expected = combine([(shares[s], values) for s, values in scenes.items()])
                unit_rate = rate
            else:
                expected = scenes[label]
                unit_rate = rate * shares[label]
            if isinstance(metric, ProportionMetric):
                per_session = expected.any[metric.event]
            else:
                table = expected.count if metric.value == "count" else expected.total
                per_session = table[metric.event]
            if spec.assignment.sticky:
                exposed = float(np.sum(-np.expm1(-unit_rate)))
                if isinstance(metric, ProportionMetric):
                    total = float(np.sum(-np.expm1(-unit_rate * per_session)))
                else:
                    total = float(np.sum(unit_rate * per_session))
                out[label][arm] = total / exposed
            else:
                out[label][arm] = float(np.sum(unit_rate * per_session) / np.sum(unit_rate))
    return out


@dataclass
class _Buffer:
    """Rows of simulated sessions waiting for one set of bulk inserts."""

    parts: list[dict[str, Any]] = field(default_factory=list)
    sessions: int = 0


@dataclass
class BanditRun:
    """What the bandit run produced: tallies, regret series and the rows' bookkeeping."""

    tallies: dict[str, VariantTally]
    summary: dict[str, Any]
    truth: dict[str, Any]
    notes: tuple[str, ...] = ()


def play_bandit(
    conn: Connection,
    config: ExperimentConfig,
    spec: BanditSpec,
    experiment_id: int,
    run_id: int,
    world: World,
    sources: dict[str, SlateSource],
    traffic: Traffic,
    values: dict[str, dict[str, float]],
    rng: np.random.Generator,
    run_seed: int,
    progress: Progress,
    model_ids: list[int | None] | None = None,
) -> BanditRun:
    """Play the traffic batch by batch with the Thompson policy and write every row."""
    sim = config.simulation or SimulationConfig()
    keys = [v.key for v in config.variants]
    arms = len(keys)
    k = sim.slate_size
    policy = build_thompson_policy(spec)
    labels = context_labels(spec, sim.scenes)
    label_index = {label: i for i, label in enumerate(labels)}
    n_sessions = traffic.users.size
    if spec.assignment.context is None:
        session_context = np.zeros(n_sessions, dtype=np.int64)
    else:
        lookup = np.array([label_index.get(s, -1) for s in SCENES], dtype=np.int64)
        session_context = lookup[traffic.contexts.scene]

    unit_of, unit_first = _bandit_units(traffic.users, session_context, len(labels), spec)
    n_units = unit_first.size
    unit_user = traffic.users[unit_first]
    unit_context = session_context[unit_first]
    unit_arm = np.full(n_units, -1, dtype=np.int64)
    unit_propensity = np.zeros(n_units)
    unit_version = np.zeros(n_units, dtype=np.int64)
    batch_of_unit = np.arange(n_units) // spec.assignment.update_every
    n_batches = int(batch_of_unit[-1]) + 1 if n_units else 0
    session_batch = batch_of_unit[unit_of]
    # Sessions grouped by batch, arrival order kept within a batch.
    session_order = np.argsort(session_batch, kind="stable")
    bounds = np.searchsorted(session_batch[session_order], np.arange(n_batches + 1))

    truth = np.array([[values[label][key_] for key_ in keys] for label in labels])
    best = truth.max(axis=1)
    regret_per_unit = best[:, None] - truth  # (contexts, arms)
    fixed_per_unit = best - truth.mean(axis=1)

    assign_rng = np.random.default_rng([run_seed, 3])
    tallies = {key_: VariantTally() for key_ in keys}
    reward_stats = np.zeros((len(labels), arms, 3))  # units, sum, sum of squares
    history = WeightHistory()
    _record_weights(history, policy, spec, labels, 0, np.array([traffic.start]))
    series: dict[str, list[float]] = {"units": [], "bandit": [], "fixed": [], "version": []}
    cumulative = np.zeros(3)
    buffer = _Buffer()
    seen = np.zeros((world.n_users, arms), dtype=bool)
    event_seq = 0

    for b in range(n_batches):
        progress("bandit batches", b, n_batches)
        lo_unit = b * spec.assignment.update_every
        hi_unit = min(lo_unit + spec.assignment.update_every, n_units)
        new = np.arange(lo_unit, hi_unit)
        u = assign_rng.random(new.size)
        for c in range(len(labels)):
            in_c = unit_context[new] == c
            if in_c.any():
                weights = policy.weights(_policy_context(spec, labels[c]))
                chosen = choose_arms(weights, u[in_c])
                unit_arm[new[in_c]] = chosen
                unit_propensity[new[in_c]] = weights[chosen]
        unit_version[new] = b

        rows = session_order[bounds[b] : bounds[b + 1]]
        users = traffic.users[rows]
        session_arm = unit_arm[unit_of[rows]]
        contexts = Contexts(
            traffic.contexts.scene[rows],
            traffic.contexts.current[rows],
            traffic.contexts.cart[rows],
        )
        items, item_sources, clicked, bought = sample_sessions(
            world, sources, keys, users, contexts, session_arm, k, rng
        )
        revenue = (bought * world.item_price[items]).sum(axis=1)

        # Rewards of the batch's units, per context and arm.
        per_session = _reward_per_session(spec.reward_metric, k, clicked, bought, revenue)
        local = unit_of[rows] - lo_unit
        reward = np.bincount(local, weights=per_session, minlength=new.size)
        if isinstance(spec.reward_metric, ProportionMetric):
            reward = (reward > 0).astype(np.float64)
        feedback_by_context: dict[str | None, dict[str, RewardStats]] = {}
        for c, label in enumerate(labels):
            feedback: dict[str, RewardStats] = {}
            for a, key_ in enumerate(keys):
                mask = (unit_context[new] == c) & (unit_arm[new] == a)
                n = int(mask.sum())
                if n:
                    r = reward[mask]
                    stats = RewardStats(n, float(r.sum()), float((r * r).sum()))
                    feedback[key_] = stats
                    reward_stats[c, a] += (stats.n, stats.total, stats.total_sq)
            if feedback:
                feedback_by_context[_policy_context(spec, label)] = feedback
        # One update of every context with feedback: they share the new version.
        policy.update_many(feedback_by_context)
        # The new version is in force from the arrival of the batch's last unit on.
        stamp = traffic.ts[unit_first[hi_unit - 1 : hi_unit]]
        _record_weights(history, policy, spec, labels, b + 1, stamp)

        batch_regret = float(regret_per_unit[unit_context[new], unit_arm[new]].sum())
        batch_fixed = float(fixed_per_unit[unit_context[new]].sum())
        cumulative += (new.size, batch_regret, batch_fixed)
        series["units"].append(int(cumulative[0]))
        series["bandit"].append(float(cumulative[1]))
        series["fixed"].append(float(cumulative[2]))
        series["version"].append(b)

        seen[users, session_arm] = True
        for a, key_ in enumerate(keys):
            in_arm = session_arm == a
            tally = tallies[key_]
            tally.exposures += int(in_arm.sum())
            tally.impressions += int(in_arm.sum()) * k
            tally.clicks += int(clicked[in_arm].sum())
            tally.purchases += int(bought[in_arm].sum())
            tally.revenue += float(revenue[in_arm].sum())
        buffer.parts.append(
            {
                "rows": rows,
                "items": items,
                "item_sources": item_sources,
                "clicked": clicked,
                "bought": bought,
                "arm": session_arm,
                "propensity": unit_propensity[unit_of[rows]],
                "version": unit_version[unit_of[rows]],
            }
        )
        buffer.sessions += rows.size
        if buffer.sessions >= FLUSH_SESSIONS or b == n_batches - 1:
            event_seq = _flush(
                conn,
                buffer,
                traffic,
                world,
                keys,
                k,
                experiment_id,
                run_id,
                event_seq,
                model_ids or [],
            )
    progress("bandit batches", n_batches, n_batches)
    for a, key_ in enumerate(keys):
        tallies[key_].units = int(seen[:, a].sum())

    totals = [
        ArmTotals(_policy_context(spec, label), key_, int(n), float(total), float(total_sq))
        for c, label in enumerate(labels)
        for a, key_ in enumerate(keys)
        for n, total, total_sq in [reward_stats[c, a]]
    ]
    sticky = None
    if spec.assignment.sticky and n_units:
        sticky = StickyDecisions(
            context=np.asarray(labels)[unit_context],
            unit_id=world.user_ids[unit_user],
            arm=np.asarray(keys)[unit_arm],
            propensity=unit_propensity,
            weight_version=unit_version,
            assigned_at=seconds_to_sql(traffic.ts[unit_first]),
        )
    updated_at = seconds_to_sql([int(traffic.ts[-1]) if n_sessions else traffic.start])[0]
    write_simulated_run(conn, experiment_id, history, totals, updated_at, sticky)
    summary = {
        "reward_metric": spec.reward_metric.name,
        "reward": spec.reward,
        "context": spec.assignment.context,
        "sticky": spec.assignment.sticky,
        "update_every": spec.assignment.update_every,
        "units": n_units,
        "versions": n_batches + 1,
        "regret": series,
    }
    truth_doc = {
        "reward_metric": spec.reward_metric.name,
        "unit": "unit" if spec.assignment.sticky else "request",
        "arms": values,
        "best": {label: keys[int(np.argmax(truth[c]))] for c, label in enumerate(labels)},
    }
    return BanditRun(tallies, summary, truth_doc, _notes(policy, spec, labels, series))


def _notes(
    policy: ThompsonPolicy,
    spec: BanditSpec,
    labels: list[str],
    series: dict[str, list[float]],
) -> tuple[str, ...]:
    """The final allocation per context and the regret beside a fixed equal split."""
    lines = []
    for label in labels:
        weights = policy.weights(_policy_context(spec, label))
        shares = ", ".join(
            f"{arm} {w:.1%}" for arm, w in zip(policy.variant_keys, weights, strict=True)
        )
        where = f" ({label})" if label else ""
        lines.append(f"Thompson sampling: final allocation{where}: {shares}")
    if series["units"]:
        regret, fixed = series["bandit"][-1], series["fixed"][-1]
        less = f", {1 - regret / fixed:.0%} less" if fixed > 0 else ""
        lines.append(
            f"cumulative regret over {series['units'][-1]:,} units: {regret:,.1f} "
            f"(fixed equal split: {fixed:,.1f}{less})"
        )
    return tuple(lines)


def _bandit_units(
    users: npt.NDArray[np.int64],
    session_context: npt.NDArray[np.int64],
    n_contexts: int,
    spec: BanditSpec,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Bandit units in arrival order: (unit of each session, first session of each unit).

    Sticky: a unit is a user (in one context); otherwise every session is its own unit.
    """
    if not spec.assignment.sticky:
        every = np.arange(users.size, dtype=np.int64)
        return every, every.copy()
    key = users * n_contexts + session_context
    _, first, unit_of = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[unit_of].astype(np.int64), first[order].astype(np.int64)


def _policy_context(spec: BanditSpec, label: str) -> str | None:
    return None if spec.assignment.context is None else label


def _record_weights(
    history: WeightHistory,
    policy: ThompsonPolicy,
    spec: BanditSpec,
    labels: list[str],
    version: int,
    stamp: npt.NDArray[np.int64],
) -> None:
    """Append one weight version (every context): weights in force, P(best), units."""
    computed_at = seconds_to_sql(stamp)[0]
    for label in labels:
        context = _policy_context(spec, label)
        history.add(
            version,
            context,
            policy.variant_keys,
            policy.weights(context).tolist(),
            policy.p_best(context).tolist(),
            [p.n for p in policy.posteriors(context)],
            computed_at,
        )


def _flush(
    conn: Connection,
    buffer: _Buffer,
    traffic: Traffic,
    world: World,
    keys: list[str],
    k: int,
    experiment_id: int,
    run_id: int,
    event_seq: int,
    model_ids: list[int | None],
) -> int:
    """Write the buffered sessions' exposures, impressions and events; return the event seq."""
    if not buffer.parts:
        return event_seq
    rows = np.concatenate([p["rows"] for p in buffer.parts])
    items = np.concatenate([p["items"] for p in buffer.parts])
    item_sources = None
    if any(p["item_sources"] is not None for p in buffer.parts):
        item_sources = np.concatenate(
            [
                np.full(p["items"].shape, None, dtype=object)
                if p["item_sources"] is None
                else p["item_sources"]
                for p in buffer.parts
            ]
        )
    clicked = np.concatenate([p["clicked"] for p in buffer.parts])
    bought = np.concatenate([p["bought"] for p in buffer.parts])
    arm = np.concatenate([p["arm"] for p in buffer.parts])
    propensity = np.concatenate([p["propensity"] for p in buffer.parts])
    version = np.concatenate([p["version"] for p in buffer.parts])
    buffer.parts.clear()
    buffer.sessions = 0
    users = traffic.users[rows]
    ts = traffic.ts[rows]
    n = rows.size
    contexts = Contexts(
        traffic.contexts.scene[rows], traffic.contexts.current[rows], traffic.contexts.cart[rows]
    )
    block = SessionBlock(
        users,
        ts,
        contexts,
        arm,
        propensity,
        [None] * n,
        items,
        clicked,
        bought,
        weight_version=version,
        item_sources=item_sources,
    )
    return write_sessions(
        conn,
        world,
        block,
        keys,
        experiment_id=experiment_id,
        run_id=run_id,
        event_seq=event_seq,
        model_ids=model_ids,
    )
