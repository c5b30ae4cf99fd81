"""Analysis of a Thompson-sampling (adaptive) experiment: allocation, P(best), IPW, regret.

Naive per-arm means are biased when the allocation changes over time (an arm that got
lucky early is played more while its luck lasts, and the units of different periods differ).
The logged propensities fix that: the inverse-propensity-weighted estimates below are
unbiased (Horvitz-Thompson) or consistent (Hajek) for each arm's mean reward over the whole
population of bandit units, whatever the allocation did. See docs/statistics.md, section
"Bandit experiments", for the estimators and their variances.

A *bandit unit* is what one decision covers: the unit (sticky, no context), the unit in one
scene (sticky, ``context: scene``) or the request (``sticky: false``). Its reward is the
reward metric's per-unit value: for a whole unit, over its events from its first exposure
on; for a unit in a scene or a request, over the events logged against those exposures
(``events.exposure_id``): the per-unit values of `reports.aggregate.unit_values`.

Everything per unit stays in SQL: `reports.aggregate.arm_sums` returns, per (context, arm),
the sums the estimators of `reports.ipw` need; the ``bandit_*`` tables are read through
`abplatform.bandit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats as scipy_stats
from sqlalchemy import Connection

from abplatform.assignment.allocation import allocation_weights_many
from abplatform.assignment.posteriors import (
    BetaPosterior,
    GaussianPosterior,
    Posterior,
    RewardStats,
)
from abplatform.bandit import (
    NO_CONTEXT,
    ArmWeight,
    arm_totals,
    lowest_weights,
    stored_context,
    weight_rows,
)
from abplatform.config.models import ExperimentConfig, UnitKind
from reports.arm_sums import arm_sums, arm_version_counts
from reports.ipw import ArmSums, hajek, horvitz_thompson
from reports.results import (
    AllocationCheck,
    AllocationPoint,
    BanditArm,
    BanditResult,
    Regret,
)
from reports.stats import SRM_ALPHA, estimate
from reports.sufficient import MeanStats

__all__ = [
    "allocation_check",
    "bandit_analysis",
    "posterior_p_best",
    "weight_history",
]

MAX_POINTS = 200
"""Most points of a time series (weight history, regret) in the result."""
LOW_WEIGHT = 0.01
"""An arm whose weight fell below this gets a note: IPW rests on a few huge weights."""


def allocation_check(
    conn: Connection,
    experiment_id: int,
    arms: Sequence[str],
    kind: UnitKind,
    alpha: float = SRM_ALPHA,
) -> AllocationCheck:
    """Sample-ratio check of an adaptive design against the logged weights.

    Each bandit unit's arm was drawn from the weight vector ``w_i`` of its version and
    context, so ``O - E`` (observed minus ``E = sum_i w_i``) has mean 0 and covariance
    ``diag(E) - sum_i w_i w_i^T``; ``chi2 = (O - E)^T Cov^+ (O - E)`` is chi-square with
    rank(Cov) degrees of freedom. SQL groups the units into (context, version, arm) counts;
    units without a logged weight version are not checked and are counted.
    """
    index = {arm: i for i, arm in enumerate(arms)}
    vectors: dict[tuple[str, int], np.ndarray[Any, np.dtype[np.float64]]] = {}
    for row in weight_rows(conn, experiment_id):
        if row.arm in index:
            key = (stored_context(row.context), row.version)
            vectors.setdefault(key, np.zeros(len(arms)))[index[row.arm]] = row.weight
    counts: dict[tuple[str, int], np.ndarray[Any, np.dtype[np.float64]]] = {}
    unchecked = 0
    for context, version, arm, n in arm_version_counts(conn, experiment_id, kind):
        key = (context, -1 if version is None else version)
        if key not in vectors or arm not in index:
            unchecked += n
            continue
        counts.setdefault(key, np.zeros(len(arms)))[index[arm]] += n
    observed = np.zeros(len(arms))
    expected = np.zeros(len(arms))
    second = np.zeros((len(arms), len(arms)))
    for key, count in counts.items():
        n, w = count.sum(), vectors[key]
        observed += count
        expected += n * w
        second += n * np.outer(w, w)
    cov = np.diag(expected) - second
    gap = observed - expected
    df = int(np.linalg.matrix_rank(cov, tol=1e-9 * max(1.0, float(expected.sum()))))
    chi2 = float(gap @ np.linalg.pinv(cov, rcond=1e-10) @ gap) if df else 0.0
    p_value = float(scipy_stats.chi2.sf(chi2, df)) if df else 1.0
    return AllocationCheck(
        observed={arm: int(observed[i]) for arm, i in index.items()},
        expected={arm: float(expected[i]) for arm, i in index.items()},
        chi2=chi2,
        df=df,
        p_value=p_value,
        mismatch=p_value < alpha,
        units_checked=int(observed.sum()),
        units_unchecked=unchecked,
    )


def _posterior(reward: str, units: int, total: float, total_sq: float) -> Posterior:
    if reward == "binary":
        return BetaPosterior().updated(RewardStats.binary(units, round(total)))
    return GaussianPosterior().updated(RewardStats(units, total, total_sq))


def posterior_p_best(
    conn: Connection,
    experiment_id: int,
    arms: Sequence[str],
    reward: Literal["binary", "gaussian"],
    draws: int,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """{context: {arm: posterior probability of being best}} from the stored posterior sums."""
    state: dict[str, dict[str, Posterior]] = {}
    for row in arm_totals(conn, experiment_id):
        posterior = _posterior(reward, row.units, row.reward_sum, row.reward_sq_sum)
        state.setdefault(stored_context(row.context), {})[row.arm] = posterior
    if not state:
        return {}
    prior = _posterior(reward, 0, 0.0, 0.0)
    contexts = sorted(state)
    posteriors = [[state[c].get(arm, prior) for arm in arms] for c in contexts]
    method: Literal["monte_carlo", "quadrature"] = (
        "quadrature" if reward == "binary" else "monte_carlo"
    )
    p_best = allocation_weights_many(
        posteriors, draws=draws, rng=np.random.default_rng(seed), method=method
    )
    return {
        c: {arm: float(p) for arm, p in zip(arms, row, strict=True)}
        for c, row in zip(contexts, p_best, strict=True)
    }


def weight_history(
    conn: Connection, experiment_id: int, max_points: int = MAX_POINTS
) -> list[AllocationPoint]:
    """The allocation over time: per kept version and context, each arm's weight and P(best).

    At most about ``max_points`` versions are returned (every step-th, plus the last); the
    thinning happens in SQL.
    """
    groups: dict[tuple[int, str], list[ArmWeight]] = {}
    for row in weight_rows(conn, experiment_id, max_points):
        groups.setdefault((row.version, stored_context(row.context)), []).append(row)
    return [
        AllocationPoint(
            version,
            context,
            sum(row.units for row in rows),
            {row.arm: row.weight for row in rows},
            {row.arm: row.p_best for row in rows},
        )
        for (version, context), rows in groups.items()
    ]


def _thin(values: Sequence[Any], max_points: int) -> list[Any]:
    """Every step-th element and the last one, at most about ``max_points``."""
    if len(values) <= max_points:
        return list(values)
    step = math.ceil(len(values) / max_points)
    kept = list(values[::step])
    if (len(values) - 1) % step:
        kept.append(values[-1])
    return kept


def _regret(summary: Any, truth: Any) -> Regret | None:
    """Cumulative regret of the bandit and of a fixed equal split, from a simulated run."""
    if not isinstance(summary, Mapping) or not isinstance(truth, Mapping):
        return None
    bandit = summary.get("bandit")
    bandit_truth = truth.get("bandit")
    if not isinstance(bandit, Mapping) or not isinstance(bandit_truth, Mapping):
        return None
    series = bandit.get("regret")
    if not isinstance(series, Mapping) or not series.get("units"):
        return None
    units = [int(v) for v in series["units"]]
    regret = [float(v) for v in series["bandit"]]
    fixed = [float(v) for v in series["fixed"]]
    index = _thin(range(len(units)), MAX_POINTS)
    return Regret(
        units=tuple(units[i] for i in index),
        bandit=tuple(regret[i] for i in index),
        fixed=tuple(fixed[i] for i in index),
        total=regret[-1],
        fixed_total=fixed[-1],
        total_units=units[-1],
        best_arm={str(c): str(a) for c, a in dict(bandit_truth.get("best", {})).items()},
        true_values={
            str(c): {str(a): float(v) for a, v in values.items()}
            for c, values in dict(bandit_truth.get("arms", {})).items()
        },
        definition="sum over bandit units of (true value of the best arm - true value of "
        "the chosen arm), per context; fixed: the same for an equal split, in expectation",
    )


def _arm(
    s: ArmSums,
    total_units: int,
    alpha: float,
    weight: float | None,
    p_best: float | None,
    truth: float | None,
    low: float | None,
) -> BanditArm:
    """One arm's row: naive, Hajek and Horvitz-Thompson means of its bandit units."""
    naive = estimate(MeanStats(s.units, s.y, s.y2), alpha)
    hj = hajek(s, alpha)
    ht = horvitz_thompson(s, total_units, alpha)
    note = None
    if low is not None and low < LOW_WEIGHT:
        note = (
            f"its weight fell to {low:.2g}: the IPW estimates rest on few, heavily "
            "weighted units and their intervals may be too narrow; a min_weight floor "
            "keeps them honest"
        )
    return BanditArm(
        context=s.context,
        arm=s.arm,
        units=s.units,
        weight=weight,
        p_best=p_best,
        naive_mean=naive.value,
        naive_ci=naive.ci,
        ipw_mean=hj.mean,
        ipw_se=hj.se,
        ipw_ci=hj.ci,
        ht_mean=ht.mean,
        ht_se=ht.se,
        ht_ci=ht.ci,
        min_propensity=s.min_propensity,
        effective_units=s.inv_p**2 / s.inv_p2 if s.inv_p2 > 0 else None,
        truth=truth,
        lowest_weight=low,
        note=note,
    )


def bandit_analysis(
    conn: Connection,
    experiment_id: int,
    config: ExperimentConfig,
    alpha: float,
    run_summary: Any = None,
    run_truth: Any = None,
) -> BanditResult:
    """The ``bandit`` block of ``analyze --json``.

    Per (context, arm): units, the weight in force now, the posterior P(best) (from
    stored posterior sums), the naive mean with its t interval, the Hajek IPW mean (headline)
    and the Horvitz-Thompson mean with their normal intervals, the smallest propensity and
    the effective number of units ``(sum 1/p)^2 / sum 1/p^2``; the weight history; and for
    simulated runs the true values and the cumulative regret beside a fixed equal split.
    """
    spec = config.require_bandit()
    assignment, metric, reward, kind = (
        spec.assignment,
        spec.reward_metric,
        spec.reward,
        spec.unit_kind,
    )
    keys = list(spec.arms)
    sums, excluded = arm_sums(conn, experiment_id, metric, kind)
    p_best = posterior_p_best(
        conn, experiment_id, keys, reward, assignment.draws, seed=assignment.seed
    )
    history = weight_history(conn, experiment_id)
    lowest = {
        (stored_context(c), a): w for (c, a), w in lowest_weights(conn, experiment_id).items()
    }
    current: dict[str, Mapping[str, float]] = {}
    for point in history:
        current[point.context] = point.weights
    regret = _regret(run_summary, run_truth)
    truth = regret.true_values if regret else {}
    by_key = {(s.context, s.arm): s for s in sums}
    contexts = sorted({s.context for s in sums} | set(current) | set(p_best)) or [NO_CONTEXT]
    arms_out = []
    for context in contexts:
        total_units = sum(s.units for s in sums if s.context == context)
        for arm in keys:
            arms_out.append(
                _arm(
                    by_key.get((context, arm)) or ArmSums.empty(context, arm),
                    total_units,
                    alpha,
                    weight=current.get(context, {}).get(arm),
                    p_best=p_best.get(context, {}).get(arm),
                    truth=truth.get(context, {}).get(arm),
                    low=lowest.get((context, arm)),
                )
            )
    return BanditResult(
        reward_metric=metric.name,
        reward=reward,
        context=assignment.context,
        sticky=assignment.sticky,
        unit=kind,
        update_every=assignment.update_every,
        min_weight=assignment.min_weight,
        alpha=alpha,
        versions=max((p.version for p in history), default=-1) + 1,
        excluded_units=excluded,
        estimator="ipw_* is the Hajek (self-normalised) inverse-propensity-weighted mean, "
        "ht_* the Horvitz-Thompson one; naive_* ignores the propensities and is biased under "
        "adaptive allocation (docs/statistics.md, Bandit experiments)",
        arms=tuple(arms_out),
        allocation=tuple(history),
        allocation_check=allocation_check(conn, experiment_id, keys, kind),
        regret=regret,
    )
