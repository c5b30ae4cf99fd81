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
on (as in `reports.analysis`); for a unit in a scene or a request, over the events logged
against those exposures (``events.exposure_id``).

Everything per unit stays in SQL: one statement groups exposures into bandit units, joins
their rewards and returns, per (context, arm), the sums the estimators need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as scipy_stats
from sqlalchemy import Connection, text

from abplatform.assignment.thompson import (
    BetaPosterior,
    GaussianPosterior,
    Posterior,
    RewardStats,
    allocation_weights_many,
)
from abplatform.config.models import (
    ExperimentConfig,
    MeanMetric,
    ProportionMetric,
    ThompsonAssignmentConfig,
)
from reports.stats import SRM_ALPHA, MeanStats, estimate

__all__ = [
    "AllocationCheck",
    "ArmSums",
    "IpwEstimate",
    "allocation_check",
    "arm_sums",
    "bandit_analysis",
    "hajek",
    "horvitz_thompson",
    "is_bandit",
]

MAX_POINTS = 200
"""Most points of a time series (weight history, regret) in the result."""
NO_CONTEXT = ""
LOW_WEIGHT = 0.01
"""An arm whose weight fell below this gets a note: IPW rests on a few huge weights."""

UnitKind = Literal["unit", "unit and scene", "request"]


def is_bandit(config: ExperimentConfig) -> bool:
    """Whether the experiment allocates adaptively (Thompson sampling)."""
    return isinstance(config.assignment, ThompsonAssignmentConfig)


@dataclass(frozen=True)
class ArmSums:
    """Per (context, arm) sums over bandit units i with reward y_i and propensity p_i.

    ``inv_p = sum 1/p``, ``inv_p2 = sum 1/p^2``, ``y = sum y``, ``y2 = sum y^2``,
    ``y_p = sum y/p``, ``y_p2 = sum y/p^2``, ``y2_p2 = sum y^2/p^2``.
    """

    context: str
    arm: str
    units: int
    inv_p: float
    inv_p2: float
    y: float
    y2: float
    y_p: float
    y_p2: float
    y2_p2: float
    min_propensity: float

    @classmethod
    def from_values(
        cls, context: str, arm: str, rewards: Sequence[float], propensities: Sequence[float]
    ) -> ArmSums:
        """The sums of explicit rewards and propensities (tests, small data)."""
        y = np.asarray(rewards, dtype=np.float64)
        p = np.asarray(propensities, dtype=np.float64)
        return cls(
            context,
            arm,
            int(y.size),
            float(np.sum(1 / p)),
            float(np.sum(1 / p**2)),
            float(y.sum()),
            float(np.sum(y**2)),
            float(np.sum(y / p)),
            float(np.sum(y / p**2)),
            float(np.sum(y**2 / p**2)),
            float(p.min()) if p.size else math.nan,
        )


@dataclass(frozen=True)
class IpwEstimate:
    """An inverse-propensity-weighted mean with its standard error and confidence interval."""

    mean: float | None
    se: float | None
    ci: tuple[float, float] | None


def _interval(mean: float, se: float, alpha: float) -> tuple[float, float]:
    z = float(scipy_stats.norm.ppf(1.0 - alpha / 2.0))
    return (mean - z * se, mean + z * se)


def horvitz_thompson(sums: ArmSums, total_units: int, alpha: float = 0.05) -> IpwEstimate:
    """Horvitz-Thompson estimate of the arm's mean reward over all ``total_units`` units.

    Parameters
    ----------
    sums : ArmSums
        The arm's sums (units that got the arm).
    total_units : int
        Bandit units of the context, every arm included (N).
    alpha : float
        Two-sided level of the normal confidence interval.

    Notes
    -----
    ``mu = (1/N) sum_i D_i y_i / p_i`` over all N units, D_i = 1 when unit i got the arm.
    With ``z_i = D_i y_i / p_i`` the terms ``z_i - mu`` are martingale differences under
    adaptive allocation (p_i is fixed before unit i's draw), so
    ``Var = (1/N^2) sum_i (z_i - mu)^2``, which the sums give as
    ``(y2_p2 - 2 mu y_p + N mu^2) / N^2`` (the units of other arms have z_i = 0).
    """
    n = total_units
    if n < 2 or sums.units == 0:
        return IpwEstimate(None, None, None)
    mean = sums.y_p / n
    var = max(sums.y2_p2 - 2.0 * mean * sums.y_p + n * mean * mean, 0.0) / n**2
    se = math.sqrt(var)
    return IpwEstimate(mean, se, _interval(mean, se, alpha))


def hajek(sums: ArmSums, alpha: float = 0.05) -> IpwEstimate:
    """Hajek (self-normalised IPW) estimate of the arm's mean reward.

    Notes
    -----
    ``mu = sum_i D_i y_i / p_i / sum_i D_i / p_i``. Linearising the ratio gives
    ``Var = sum_i D_i (y_i - mu)^2 / p_i^2 / (sum_i D_i / p_i)^2``, from the sums
    ``(y2_p2 - 2 mu y_p2 + mu^2 inv_p2) / inv_p^2``.
    """
    if sums.units < 2 or sums.inv_p <= 0:
        return IpwEstimate(None, None, None)
    mean = sums.y_p / sums.inv_p
    var = max(sums.y2_p2 - 2.0 * mean * sums.y_p2 + mean * mean * sums.inv_p2, 0.0)
    se = math.sqrt(var) / sums.inv_p
    return IpwEstimate(mean, se, _interval(mean, se, alpha))


def _unit_kind(assignment: ThompsonAssignmentConfig) -> UnitKind:
    if not assignment.sticky:
        return "request"
    return "unit" if assignment.context is None else "unit and scene"


def _reward_expression(metric: ProportionMetric | MeanMetric) -> str:
    """SQL of a bandit unit's reward from the joined columns r.n_events, r.total, u.slate."""
    if isinstance(metric, ProportionMetric):
        if metric.event == "impression":
            return "CASE WHEN u.slate > 0 THEN CAST(1 AS FLOAT) ELSE CAST(0 AS FLOAT) END"
        return (
            "CASE WHEN COALESCE(r.n_events, 0) > 0 THEN CAST(1 AS FLOAT) ELSE CAST(0 AS FLOAT) END"
        )
    if metric.event == "impression":
        return "u.slate"
    if metric.value == "count":
        return "CAST(COALESCE(r.n_events, 0) AS FLOAT)"
    return "CAST(COALESCE(r.total, 0) AS FLOAT)"


def _units_sql(kind: UnitKind) -> tuple[str, str]:
    """The bandit-units CTE and the rewards CTE (both keyed by unit_key, context)."""
    context = "COALESCE(x.scene, '')" if kind == "unit and scene" else "''"
    if kind == "request":
        units = f"""
            SELECT CAST(x.id AS VARCHAR(40)) AS unit_key, {context} AS context,
                   x.variant AS arm, x.variant AS arm_max, x.propensity AS propensity,
                   x.weight_version AS version,
                   x.ts AS first_ts, CAST(x.slate_size AS FLOAT) AS slate
            FROM exposures x WHERE x.experiment_id = :experiment"""
        rewards = """
            SELECT CAST(ev.exposure_id AS VARCHAR(40)) AS unit_key, '' AS context,
                   COUNT(*) AS n_events, SUM(COALESCE(ev.value, 0)) AS total
            FROM events ev
            WHERE ev.experiment_id = :experiment AND ev.type = :event
              AND ev.exposure_id IS NOT NULL
            GROUP BY ev.exposure_id"""
        return units, rewards
    # PostgreSQL refuses a constant in GROUP BY: group by the scene only when it is a key.
    group = "x.unit_id, COALESCE(x.scene, '')" if kind == "unit and scene" else "x.unit_id"
    units = f"""
        SELECT x.unit_id AS unit_key, {context} AS context,
               MIN(x.variant) AS arm, MAX(x.variant) AS arm_max,
               MIN(x.propensity) AS propensity, MIN(x.ts) AS first_ts,
               MIN(x.weight_version) AS version,
               CAST(SUM(x.slate_size) AS FLOAT) AS slate
        FROM exposures x WHERE x.experiment_id = :experiment
        GROUP BY {group}"""
    if kind == "unit":
        # As in reports.analysis: the unit's events from its first exposure on.
        rewards = """
            SELECT ev.unit_id AS unit_key, '' AS context,
                   COUNT(*) AS n_events, SUM(COALESCE(ev.value, 0)) AS total
            FROM events ev JOIN units fu ON fu.unit_key = ev.unit_id
            WHERE ev.experiment_id = :experiment AND ev.type = :event
              AND ev.ts >= fu.first_ts
            GROUP BY ev.unit_id"""
    else:
        rewards = f"""
            SELECT x.unit_id AS unit_key, {context} AS context,
                   COUNT(*) AS n_events, SUM(COALESCE(ev.value, 0)) AS total
            FROM events ev JOIN exposures x ON x.id = ev.exposure_id
            WHERE ev.experiment_id = :experiment AND ev.type = :event
              AND x.experiment_id = :experiment
            GROUP BY {group}"""
    return units, rewards


def arm_sums(
    conn: Connection,
    experiment_id: int,
    metric: ProportionMetric | MeanMetric,
    kind: UnitKind,
) -> tuple[list[ArmSums], int]:
    """Per (context, arm) IPW sums of the bandit units, and the units excluded.

    Units whose exposures carry more than one arm (only possible with logs from elsewhere)
    are excluded and counted.
    """
    units, rewards = _units_sql(kind)
    reward = _reward_expression(metric)
    # Computed once each: right after a bulk load the planner's row estimates are stale,
    # and an inlined CTE under a nested loop would be re-run for every unit.
    materialized = "MATERIALIZED " if conn.dialect.name == "postgresql" else ""
    statement = text(
        f"""
        WITH units AS {materialized}({units}),
        rewards AS {materialized}({rewards}),
        scored AS (
            SELECT u.context AS context, u.arm AS arm, u.propensity AS p, {reward} AS y
            FROM units u LEFT JOIN rewards r
              ON r.unit_key = u.unit_key AND r.context = u.context
            WHERE u.arm = u.arm_max AND u.propensity > 0)
        SELECT context, arm, COUNT(*), SUM(1.0 / p), SUM(1.0 / (p * p)), SUM(y), SUM(y * y),
               SUM(y / p), SUM(y / (p * p)), SUM(y * y / (p * p)), MIN(p)
        FROM scored GROUP BY context, arm ORDER BY context, arm
        """
    )
    params = {"experiment": experiment_id, "event": metric.event}
    rows = conn.execute(statement, params).all()
    out = []
    for row in rows:
        values = [float(v) for v in row[3:11]]
        out.append(ArmSums(str(row[0]), str(row[1]), int(row[2]), *_seven(values), values[7]))
    excluded_statement = text(
        f"""
        WITH units AS ({units})
        SELECT COUNT(*) FROM units u WHERE u.arm <> u.arm_max OR u.propensity <= 0
        """
    )
    excluded = int(conn.execute(excluded_statement, {"experiment": experiment_id}).scalar_one())
    return out, excluded


@dataclass(frozen=True)
class AllocationCheck:
    """Do the units per arm match the logged weights they were drawn from?"""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    df: int
    p_value: float
    mismatch: bool
    units_checked: int
    units_unchecked: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "observed": self.observed,
            "expected": {arm: _clean(e) for arm, e in self.expected.items()},
            "chi2": _clean(self.chi2),
            "df": self.df,
            "p_value": _clean(self.p_value),
            "mismatch": self.mismatch,
            "units_checked": self.units_checked,
            "units_unchecked": self.units_unchecked,
        }


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
    units, _ = _units_sql(kind)
    cells = conn.execute(
        text(
            f"""
            WITH units AS ({units})
            SELECT context, version, arm, COUNT(*) FROM units
            WHERE arm = arm_max GROUP BY context, version, arm
            """
        ),
        {"experiment": experiment_id},
    ).all()
    weights = conn.execute(
        text(
            "SELECT context, version, arm, weight FROM bandit_weights "
            "WHERE experiment_id = :experiment"
        ),
        {"experiment": experiment_id},
    ).all()
    index = {arm: i for i, arm in enumerate(arms)}
    vectors: dict[tuple[str, int], np.ndarray[Any, np.dtype[np.float64]]] = {}
    for context, version, arm, weight in weights:
        if str(arm) in index:
            vector = vectors.setdefault((str(context), int(version)), np.zeros(len(arms)))
            vector[index[str(arm)]] = float(weight)
    counts: dict[tuple[str, int], np.ndarray[Any, np.dtype[np.float64]]] = {}
    unchecked = 0
    for context, version, arm, n in cells:
        key = (str(context), -1 if version is None else int(version))
        if key not in vectors or str(arm) not in index:
            unchecked += int(n)
            continue
        counts.setdefault(key, np.zeros(len(arms)))[index[str(arm)]] += int(n)
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


def _seven(
    values: Sequence[float],
) -> tuple[float, float, float, float, float, float, float]:
    return (values[0], values[1], values[2], values[3], values[4], values[5], values[6])


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
    """{context: {arm: posterior probability of being best}} from ``bandit_state``."""
    rows = conn.execute(
        text(
            "SELECT context, arm, units, reward_sum, reward_sq_sum FROM bandit_state "
            "WHERE experiment_id = :experiment ORDER BY context, arm"
        ),
        {"experiment": experiment_id},
    ).all()
    state: dict[str, dict[str, Posterior]] = {}
    for context, arm, units, total, total_sq in rows:
        posterior = _posterior(reward, int(units), float(total), float(total_sq))
        state.setdefault(str(context), {})[str(arm)] = posterior
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
) -> list[dict[str, Any]]:
    """The allocation over time: per kept version and context, each arm's weight and P(best).

    At most about ``max_points`` versions are returned (every step-th, plus the last); the
    thinning happens in SQL.
    """
    last = conn.execute(
        text("SELECT MAX(version) FROM bandit_weights WHERE experiment_id = :experiment"),
        {"experiment": experiment_id},
    ).scalar_one()
    if last is None:
        return []
    step = max(1, math.ceil((int(last) + 1) / max_points))
    rows = conn.execute(
        text(
            "SELECT version, context, arm, weight, p_best, units FROM bandit_weights "
            "WHERE experiment_id = :experiment AND (version % :step = 0 OR version = :last) "
            "ORDER BY version, context, arm"
        ),
        {"experiment": experiment_id, "step": step, "last": int(last)},
    ).all()
    points: dict[tuple[int, str], dict[str, Any]] = {}
    for version, context, arm, weight, p_best, units in rows:
        point = points.setdefault(
            (int(version), str(context)),
            {"version": int(version), "context": str(context), "units": 0, "weights": {}},
        )
        point["weights"][str(arm)] = float(weight)
        point.setdefault("p_best", {})[str(arm)] = float(p_best)
        point["units"] += int(units)
    return list(points.values())


def _thin(values: Sequence[Any], max_points: int) -> list[Any]:
    """Every step-th element and the last one, at most about ``max_points``."""
    if len(values) <= max_points:
        return list(values)
    step = math.ceil(len(values) / max_points)
    kept = list(values[::step])
    if (len(values) - 1) % step:
        kept.append(values[-1])
    return kept


def _regret(summary: Any, truth: Any) -> dict[str, Any] | None:
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
    return {
        "units": [units[i] for i in index],
        "bandit": [regret[i] for i in index],
        "fixed": [fixed[i] for i in index],
        "total": regret[-1],
        "fixed_total": fixed[-1],
        "total_units": units[-1],
        "best_arm": dict(bandit_truth.get("best", {})),
        "true_values": {
            str(c): {str(a): float(v) for a, v in values.items()}
            for c, values in dict(bandit_truth.get("arms", {})).items()
        },
        "definition": "sum over bandit units of (true value of the best arm - true value of "
        "the chosen arm), per context; fixed: the same for an equal split, in expectation",
    }


def _clean(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _pair(pair: tuple[float, float] | None) -> list[float] | None:
    if pair is None or not all(math.isfinite(v) for v in pair):
        return None
    return [float(pair[0]), float(pair[1])]


def bandit_analysis(
    conn: Connection,
    experiment_id: int,
    config: ExperimentConfig,
    alpha: float,
    run_summary: Any = None,
    run_truth: Any = None,
) -> dict[str, Any]:
    """The ``bandit`` block of ``analyze --json`` (JSON-able; no NaN or infinity).

    Per (context, arm): units, the weight in force now, the posterior P(best) (from
    ``bandit_state``), the naive mean with its t interval, the Hajek IPW mean (headline)
    and the Horvitz-Thompson mean with their normal intervals, the smallest propensity and
    the effective number of units ``(sum 1/p)^2 / sum 1/p^2``; the weight history; and for
    simulated runs the true values and the cumulative regret beside a fixed equal split.
    """
    assignment = config.assignment
    if not isinstance(assignment, ThompsonAssignmentConfig):
        raise ValueError(f"not a bandit experiment (assignment type {assignment.type!r})")
    metric = next((mc for mc in config.metrics if mc.name == assignment.reward_metric), None)
    if not isinstance(metric, ProportionMetric | MeanMetric):
        raise ValueError(
            f"assignment.reward_metric must name a proportion or mean metric of the "
            f"experiment, got {assignment.reward_metric!r}"
        )
    reward: Literal["binary", "gaussian"] = (
        "binary" if isinstance(metric, ProportionMetric) else "gaussian"
    )
    keys = [v.key for v in config.variants]
    kind = _unit_kind(assignment)
    sums, excluded = arm_sums(conn, experiment_id, metric, kind)
    p_best = posterior_p_best(
        conn, experiment_id, keys, reward, assignment.draws, seed=assignment.seed
    )
    history = weight_history(conn, experiment_id)
    lowest = {
        (str(c), str(a)): float(w)
        for c, a, w in conn.execute(
            text(
                "SELECT context, arm, MIN(weight) FROM bandit_weights "
                "WHERE experiment_id = :experiment GROUP BY context, arm"
            ),
            {"experiment": experiment_id},
        ).all()
    }
    current: dict[str, dict[str, float]] = {}
    for point in history:
        current[point["context"]] = point["weights"]
    regret = _regret(run_summary, run_truth)
    truth = regret["true_values"] if regret else {}
    by_key = {(s.context, s.arm): s for s in sums}
    contexts = sorted({s.context for s in sums} | set(current) | set(p_best)) or [NO_CONTEXT]
    arms_out = []
    for context in contexts:
        total_units = sum(s.units for s in sums if s.context == context)
        for arm in keys:
            s = by_key.get((context, arm)) or ArmSums(
                context, arm, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, math.nan
            )
            naive = estimate(MeanStats(s.units, s.y, s.y2), alpha)
            hj = hajek(s, alpha)
            ht = horvitz_thompson(s, total_units, alpha)
            low = lowest.get((context, arm))
            note = None
            if low is not None and low < LOW_WEIGHT:
                note = (
                    f"its weight fell to {low:.2g}: the IPW estimates rest on few, heavily "
                    "weighted units and their intervals may be too narrow; a min_weight floor "
                    "keeps them honest"
                )
            arms_out.append(
                {
                    "context": context,
                    "arm": arm,
                    "units": s.units,
                    "weight": _clean(current.get(context, {}).get(arm)),
                    "p_best": _clean(p_best.get(context, {}).get(arm)),
                    "naive_mean": _clean(naive.value),
                    "naive_ci": _pair(naive.ci),
                    "ipw_mean": _clean(hj.mean),
                    "ipw_se": _clean(hj.se),
                    "ipw_ci": _pair(hj.ci),
                    "ht_mean": _clean(ht.mean),
                    "ht_se": _clean(ht.se),
                    "ht_ci": _pair(ht.ci),
                    "min_propensity": _clean(s.min_propensity),
                    "effective_units": _clean(s.inv_p**2 / s.inv_p2) if s.inv_p2 > 0 else None,
                    "truth": _clean(truth.get(context, {}).get(arm)),
                    "lowest_weight": _clean(low),
                    "note": note,
                }
            )
    versions = max((p["version"] for p in history), default=-1) + 1
    check = allocation_check(conn, experiment_id, keys, kind)
    return {
        "reward_metric": metric.name,
        "reward": reward,
        "context": assignment.context,
        "sticky": assignment.sticky,
        "unit": kind,
        "update_every": assignment.update_every,
        "min_weight": assignment.min_weight,
        "alpha": alpha,
        "versions": versions,
        "excluded_units": excluded,
        "estimator": "ipw_* is the Hajek (self-normalised) inverse-propensity-weighted mean, "
        "ht_* the Horvitz-Thompson one; naive_* ignores the propensities and is biased under "
        "adaptive allocation (docs/statistics.md, Bandit experiments)",
        "arms": arms_out,
        "allocation": history,
        "allocation_check": check.to_dict(),
        "regret": regret,
    }
