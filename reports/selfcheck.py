"""Monte Carlo self-check of the statistics: false-positive rates, coverage, peeking, CUPED, FWER.

Vectorised over replications: every replication is reduced to per-variant
sufficient statistics (counts, sums, sums of squares and cross-products) and
the tests are evaluated on whole arrays with the same formulas as
`reports.stats`, `reports.sequential`, `reports.cuped` and `reports.multiple`
(the tests pin the vectorised formulas to the scalar ones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special  # type: ignore[import-untyped, unused-ignore]

from reports.multiple import adjust_pvalues
from reports.selfcheck_methods import method_checks
from reports.sequential import DEFAULT_TUNING_UNITS, always_valid_arrays

__all__ = [
    "Check",
    "SelfCheckResult",
    "format_table",
    "ratio_arrays",
    "run_selfcheck",
    "welch_arrays",
]

Array = NDArray[Any]
ALPHA = 0.05
TOLERANCE_SE = 3.0
"""A check passes within this many Monte Carlo standard errors of its target."""
_CHUNK = 1000  # replications simulated at once: bounds memory to ~ _CHUNK * units floats


@dataclass(frozen=True)
class Check:
    """One measured rate (or mean) with its Monte Carlo standard error and target."""

    group: str
    name: str
    estimate: float
    mc_se: float
    target: float
    relation: str  # "=" (two-sided, within tolerance) or "<=" (at most target + tolerance)
    passed: bool | None  # None: shown for context, no target
    replications: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "group": self.group,
            "name": self.name,
            "estimate": self.estimate,
            "mc_se": self.mc_se,
            "target": self.target,
            "relation": self.relation,
            "passed": self.passed,
            "replications": self.replications,
        }


@dataclass(frozen=True)
class SelfCheckResult:
    """All checks of one self-check run."""

    replications: int
    seed: int
    units_per_variant: int
    tolerance_se: float
    seconds: float
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every check with a target passed."""
        return all(c.passed is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "replications": self.replications,
            "seed": self.seed,
            "units_per_variant": self.units_per_variant,
            "tolerance_se": self.tolerance_se,
            "seconds": self.seconds,
            "passed": self.passed,
            "checks": [c.to_dict() for c in self.checks],
        }


# ---------------------------------------------------------------------------
# Vectorised tests on sufficient statistics
# ---------------------------------------------------------------------------


def _mean_var(n: Array, s1: Array, s2: Array) -> tuple[Array, Array]:
    mean = s1 / n
    var = np.maximum(s2 - s1 * mean, 0.0) / (n - 1.0)
    return mean, var


def _lift(m_t: Array, v_t: Array, m_c: Array, v_c: Array) -> tuple[Array, Array]:
    """Relative lift and its delta-method standard error (as `stats._relative_lift`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = m_t / m_c
        se = np.sqrt((v_t + q * q * v_c) / (m_c * m_c))
    return q - 1.0, se


def welch_arrays(
    n_t: Array, s1_t: Array, s2_t: Array, n_c: Array, s1_c: Array, s2_c: Array, alpha: float
) -> dict[str, Array]:
    """Welch t-test of mean metrics from sums (the formulas of `stats.compare`)."""
    m_t, var_t = _mean_var(n_t, s1_t, s2_t)
    m_c, var_c = _mean_var(n_c, s1_c, s2_c)
    v_t, v_c = var_t / n_t, var_c / n_c
    total = v_t + v_c
    diff = m_t - m_c
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(total)
        w_t, w_c = v_t / total, v_c / total
        df = 1.0 / (w_t * w_t / (n_t - 1.0) + w_c * w_c / (n_c - 1.0))
        stat = diff / se
    p = np.minimum(1.0, 2.0 * special.stdtr(df, -np.abs(stat)))
    p = np.where(total > 0, p, np.where(diff == 0, 1.0, 0.0))
    crit = -special.stdtrit(np.where(total > 0, df, 1.0), alpha / 2.0)
    z = -float(special.ndtri(alpha / 2.0))
    return _two_sample(diff, se, p, crit, _lift(m_t, v_t, m_c, v_c), z)


def ratio_arrays(
    t: tuple[Array, Array, Array, Array, Array, Array],
    c: tuple[Array, Array, Array, Array, Array, Array],
    alpha: float,
) -> dict[str, Array]:
    """Delta-method z-test of ratio metrics from ``(n, x, y, xx, yy, xy)`` sums."""

    def arm(s: tuple[Array, Array, Array, Array, Array, Array]) -> tuple[Array, Array]:
        n, x, y, xx, yy, xy = s
        r = x / y
        sxx, syy, sxy = xx - x * x / n, yy - y * y / n, xy - x * y / n
        quad = np.maximum(sxx - 2.0 * r * sxy + r * r * syy, 0.0) / (n - 1.0)
        return r, quad * n / y / y

    r_t, v_t = arm(t)
    r_c, v_c = arm(c)
    diff, se = r_t - r_c, np.sqrt(v_t + v_c)
    z = -float(special.ndtri(alpha / 2.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, 2.0 * special.ndtr(-np.abs(diff / se)))
    return _two_sample(diff, se, p, z, _lift(r_t, v_t, r_c, v_c), z)


def _two_sample(
    diff: Array, se: Array, p: Array, crit: Array | float, lift: tuple[Array, Array], z: float
) -> dict[str, Array]:
    """A two-sample test's arrays: difference, SE, p, ``diff +- crit se``, lift +- z lift_se."""
    rel, rel_se = lift
    return {
        "diff": diff,
        "se": se,
        "p": p,
        "lo": diff - crit * se,
        "hi": diff + crit * se,
        "lift": rel,
        "lift_lo": rel - z * rel_se,
        "lift_hi": rel + z * rel_se,
    }


# ---------------------------------------------------------------------------
# Simulated worlds (per replication -> sufficient statistics)
# ---------------------------------------------------------------------------

P_CONTROL, P_TREATMENT = 0.10, 0.11
CONVERSION, LOG_MU, LOG_SIGMA, REVENUE_LIFT = 0.3, 3.0, 1.0, 1.05
CTR_CONTROL, CTR_TREATMENT, IMPRESSIONS_MEAN = 0.05, 0.055, 9.0
RHO = 0.7
REVENUE_SCALE_UP = 4
"""The skewed revenue lift is also checked at this many times the units (see below)."""


def _chunks(total: int) -> Iterator[int]:
    done = 0
    while done < total:
        size = min(_CHUNK, total - done)
        yield size
        done += size


def _proportion_sums(
    rng: np.random.Generator, reps: int, n: int, p: float
) -> tuple[Array, Array, Array]:
    s = rng.binomial(n, p, size=reps).astype(np.float64)
    return np.full(reps, float(n)), s, s  # a 0/1 value is its own square


def _revenue_sums(
    rng: np.random.Generator, reps: int, n: int, scale: float
) -> tuple[Array, Array, Array]:
    # Zero-inflated lognormal revenue per user: heavy right skew.
    y = rng.lognormal(LOG_MU, LOG_SIGMA, size=(reps, n)) * scale
    y *= rng.random((reps, n)) < CONVERSION
    return np.full(reps, float(n)), y.sum(axis=1), np.einsum("ij,ij->i", y, y)


def _ratio_sums(
    rng: np.random.Generator, reps: int, n: int, ctr: float
) -> tuple[Array, Array, Array, Array, Array, Array]:
    y = 1.0 + rng.poisson(IMPRESSIONS_MEAN, size=(reps, n))  # impressions
    x = rng.binomial(y.astype(np.int64), ctr).astype(np.float64)  # clicks
    return (
        np.full(reps, float(n)),
        x.sum(1),
        y.sum(1),
        np.einsum("ij,ij->i", x, x),
        np.einsum("ij,ij->i", y, y),
        np.einsum("ij,ij->i", x, y),
    )


def _cuped_sums(rng: np.random.Generator, reps: int, n: int, effect: float) -> tuple[Array, ...]:
    x = rng.standard_normal((reps, n))
    y = RHO * x + math.sqrt(1.0 - RHO * RHO) * rng.standard_normal((reps, n)) + effect

    def dot(a: Array, b: Array) -> Array:
        out: Array = np.einsum("ij,ij->i", a, b)
        return out

    return np.full(reps, float(n)), y.sum(1), dot(y, y), x.sum(1), dot(x, x), dot(x, y)


def _cuped_arrays(t: tuple[Array, ...], c: tuple[Array, ...], alpha: float) -> dict[str, Array]:
    """Pooled-theta CUPED on arrays (the formulas of `reports.cuped.cuped_adjust`) + Welch."""
    out_raw_ss = []
    kxx, kxy, kyy = [], [], []
    for n, y, yy, x, xx, xy in (t, c):
        kxx.append(xx - x * x / n)
        kxy.append(xy - x * y / n)
        kyy.append(yy - y * y / n)
        out_raw_ss.append(kyy[-1])
    theta = (kxy[0] + kxy[1]) / (kxx[0] + kxx[1])
    x_bar = (t[3] + c[3]) / (t[0] + c[0])
    sums = []
    adj_ss_total = np.zeros_like(theta)
    for (n, y, _yy, x, _xx, _xy), a, b, d in zip((t, c), kxx, kxy, kyy, strict=True):
        ss = np.maximum(d - 2.0 * theta * b + theta * theta * a, 0.0)
        adj_ss_total += ss
        mean = y / n - theta * (x / n - x_bar)
        sums.append((n, mean * n, ss + n * mean * mean))
    result = welch_arrays(*sums[0], *sums[1], alpha)
    result["reduction"] = 1.0 - adj_ss_total / (out_raw_ss[0] + out_raw_ss[1])
    return result


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


def _rate_check(group: str, name: str, hits: Array, target: float, relation: str) -> Check:
    reps = int(hits.size)
    rate = float(np.mean(hits))
    # SE of a rate at its target (the null of "the method is calibrated").
    se = math.sqrt(target * (1.0 - target) / reps)
    if relation == "=":
        passed: bool | None = abs(rate - target) <= TOLERANCE_SE * se
    elif relation == "<=":
        passed = rate <= target + TOLERANCE_SE * se
    elif relation == ">=":
        passed = rate >= target - TOLERANCE_SE * se
    else:
        passed = None
    if relation == "info":  # no target: the SE of the observed rate itself
        se = math.sqrt(max(rate * (1.0 - rate), 1e-12) / reps)
    return Check(group, name, rate, se, target, relation, passed, reps)


def _collect(reps: int, draw: Callable[[int], dict[str, Array]]) -> dict[str, Array]:
    parts: dict[str, list[Array]] = {}
    for size in _chunks(reps):
        for key, value in draw(size).items():
            parts.setdefault(key, []).append(np.asarray(value, dtype=np.float64))
    return {key: np.concatenate(value) for key, value in parts.items()}


def run_selfcheck(
    replications: int = 10_000,
    seed: int = 2026,
    units_per_variant: int = 2000,
    looks: int = 10,
    metrics_in_family: int = 20,
    tuning_units: float = DEFAULT_TUNING_UNITS,
) -> SelfCheckResult:
    """Measure the platform's tests by Monte Carlo on synthetic per-unit data.

    Parameters
    ----------
    replications : int
        Replications of every scenario (>= 10,000 for the documented table).
    seed : int
        Seed of the ``numpy`` generator; the run is reproducible.
    units_per_variant : int
        Units in each of the two variants per replication.
    looks : int
        Equally spaced interim analyses in the peeking scenario.
    metrics_in_family : int
        Independent A/A metrics in the family-wise-error scenario.

    Returns
    -------
    SelfCheckResult
        Each check has its estimate, Monte Carlo SE (of a rate at its target:
        ``sqrt(target (1 - target) / R)``) and whether it is within
        `TOLERANCE_SE` of it.
    """
    if replications < 10:
        raise ValueError(f"replications must be >= 10, got {replications}")
    if units_per_variant < 20 or units_per_variant % looks:
        raise ValueError(f"units_per_variant must be >= 20 and a multiple of looks ({looks})")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = units_per_variant
    reps = replications
    checks: list[Check] = []
    nominal = 1.0 - ALPHA

    def seq_p(res: dict[str, Array], units: float) -> Array:
        return always_valid_arrays(res["diff"], res["se"], units, ALPHA, tuning_units)[0]

    # 1. A/A false-positive rates -----------------------------------------
    def aa(size: int) -> dict[str, Array]:
        prop = welch_arrays(
            *_proportion_sums(rng, size, n, P_CONTROL),
            *_proportion_sums(rng, size, n, P_CONTROL),
            ALPHA,
        )
        rev = welch_arrays(
            *_revenue_sums(rng, size, n, 1.0), *_revenue_sums(rng, size, n, 1.0), ALPHA
        )
        rat = ratio_arrays(
            _ratio_sums(rng, size, n, CTR_CONTROL), _ratio_sums(rng, size, n, CTR_CONTROL), ALPHA
        )
        cup = _cuped_arrays(_cuped_sums(rng, size, n, 0.0), _cuped_sums(rng, size, n, 0.0), ALPHA)
        chance = special.ndtr(prop["diff"] / prop["se"])
        return {
            "prop": prop["p"] < ALPHA,
            "prop_seq": seq_p(prop, n) < ALPHA,
            "prop_bayes": (chance > 1 - ALPHA / 2) | (chance < ALPHA / 2),
            "rev": rev["p"] < ALPHA,
            "rev_seq": seq_p(rev, n) < ALPHA,
            "ratio": rat["p"] < ALPHA,
            "ratio_seq": seq_p(rat, n) < ALPHA,
            "cuped": cup["p"] < ALPHA,
        }

    res = _collect(reps, aa)
    names = {
        "prop": ("proportion", "Welch t"),
        "prop_seq": ("proportion", "sequential (mSPRT), one look"),
        "prop_bayes": ("proportion", "Bayes: chance to beat > 97.5% or < 2.5%"),
        "rev": ("revenue (lognormal)", "Welch t"),
        "rev_seq": ("revenue (lognormal)", "sequential (mSPRT), one look"),
        "ratio": ("ratio (CTR)", "delta-method z"),
        "ratio_seq": ("ratio (CTR)", "sequential (mSPRT), one look"),
        "cuped": ("normal, rho=0.7", "CUPED + Welch t"),
    }
    for key, (metric, test) in names.items():
        # The always-valid test is conservative by design at a single look: at most alpha.
        relation = "<=" if key.endswith("_seq") else "="
        checks.append(
            _rate_check("A/A false-positive rate", f"{metric}: {test}", res[key], ALPHA, relation)
        )

    # 2. Coverage with a known effect ----------------------------------------
    true_prop = (P_TREATMENT - P_CONTROL, P_TREATMENT / P_CONTROL - 1.0)
    rev_mean = CONVERSION * math.exp(LOG_MU + LOG_SIGMA**2 / 2.0)
    true_rev = (rev_mean * (REVENUE_LIFT - 1.0), REVENUE_LIFT - 1.0)
    true_ratio = (CTR_TREATMENT - CTR_CONTROL, CTR_TREATMENT / CTR_CONTROL - 1.0)
    cuped_effect = 0.05

    def covers(r: dict[str, Array], truth: tuple[float, float]) -> tuple[Array, Array]:
        return (r["lo"] <= truth[0]) & (truth[0] <= r["hi"]), (r["lift_lo"] <= truth[1]) & (
            truth[1] <= r["lift_hi"]
        )

    def ab(size: int) -> dict[str, Array]:
        prop = welch_arrays(
            *_proportion_sums(rng, size, n, P_TREATMENT),
            *_proportion_sums(rng, size, n, P_CONTROL),
            ALPHA,
        )
        rev = welch_arrays(
            *_revenue_sums(rng, size, n, REVENUE_LIFT), *_revenue_sums(rng, size, n, 1.0), ALPHA
        )
        big = REVENUE_SCALE_UP * n
        rev_big = welch_arrays(
            *_revenue_sums(rng, size, big, REVENUE_LIFT),
            *_revenue_sums(rng, size, big, 1.0),
            ALPHA,
        )
        rat = ratio_arrays(
            _ratio_sums(rng, size, n, CTR_TREATMENT), _ratio_sums(rng, size, n, CTR_CONTROL), ALPHA
        )
        cup = _cuped_arrays(
            _cuped_sums(rng, size, n, cuped_effect), _cuped_sums(rng, size, n, 0.0), ALPHA
        )
        out: dict[str, Array] = {}
        for key, r, truth in (
            ("prop", prop, true_prop),
            ("rev", rev, true_rev),
            ("rev_big", rev_big, true_rev),
            ("ratio", rat, true_ratio),
        ):
            out[key + "_diff"], out[key + "_lift"] = covers(r, truth)
        out["cuped_diff"] = (cup["lo"] <= cuped_effect) & (cuped_effect <= cup["hi"])
        out["cuped_reduction"] = cup["reduction"]
        return out

    res = _collect(reps, ab)
    labels = {
        "prop": f"proportion 10% -> 11%, n={n}",
        "rev": f"revenue (lognormal) +5%, n={n}",
        "rev_big": f"revenue (lognormal) +5%, n={REVENUE_SCALE_UP * n}",
        "ratio": f"ratio (CTR) 5% -> 5.5%, n={n}",
    }
    for key, label in labels.items():
        checks.append(
            _rate_check("95% CI coverage", f"{label}: difference", res[key + "_diff"], nominal, "=")
        )
        # The delta-method lift interval of a heavily skewed mean under-covers by a few
        # tenths of a percent at 2,000 units per variant (an O(1/n) effect, measured in
        # docs/statistics.md); it is shown there for context and checked at 4x the units.
        relation = "info" if key == "rev" else "="
        checks.append(
            _rate_check(
                "95% CI coverage", f"{label}: relative lift", res[key + "_lift"], nominal, relation
            )
        )
    checks.append(
        _rate_check(
            "95% CI coverage", "CUPED (rho=0.7) +0.05: difference", res["cuped_diff"], nominal, "="
        )
    )
    reduction = res["cuped_reduction"]
    # E[1 - SS_res/SS_y] = rho^2 + (1 - rho^2)/(N - 2) to first order: the slope costs one d.f.
    target = RHO**2 + (1.0 - RHO**2) / (2 * n - 2)
    se = float(np.std(reduction, ddof=1) / math.sqrt(reduction.size))
    mean_red = float(np.mean(reduction))
    checks.append(
        Check(
            "CUPED",
            f"variance reduction (rho^2 = {RHO**2:.2f})",
            mean_red,
            se,
            target,
            "=",
            abs(mean_red - target) <= TOLERANCE_SE * se,
            reps,
        )
    )

    # 3. Peeking after every 1/looks of the data (A/A proportions) ----------------
    step = n // looks

    def peek(size: int) -> dict[str, Array]:
        t = np.cumsum(rng.binomial(step, P_CONTROL, size=(size, looks)), axis=1).astype(np.float64)
        c = np.cumsum(rng.binomial(step, P_CONTROL, size=(size, looks)), axis=1).astype(np.float64)
        units = np.broadcast_to(step * np.arange(1, looks + 1, dtype=np.float64), t.shape)
        w = welch_arrays(units, t, t, units, c, c, ALPHA)
        seq, half = always_valid_arrays(w["diff"], w["se"], units, ALPHA, tuning_units)
        return {
            "naive": np.any(w["p"] < ALPHA, axis=1),
            "seq": np.any(seq < ALPHA, axis=1),
            "cs_cover": np.all(np.abs(w["diff"]) <= half, axis=1),
        }

    # 4. Family-wise error with many metrics (A/A) ------------------------------
    def family(size: int) -> dict[str, Array]:
        t = rng.binomial(n, P_CONTROL, size=(size, metrics_in_family)).astype(np.float64)
        c = rng.binomial(n, P_CONTROL, size=(size, metrics_in_family)).astype(np.float64)
        units = np.full(t.shape, float(n))
        p = welch_arrays(units, t, t, units, c, c, ALPHA)["p"]
        return {
            "none": np.any(p < ALPHA, axis=1),
            "holm": np.any(adjust_pvalues(p, "holm") < ALPHA, axis=1),
            "bh": np.any(adjust_pvalues(p, "bh") < ALPHA, axis=1),
        }

    peeking = [
        ("naive", "naive Welch (expected ~19%)", ALPHA, "info"),
        ("seq", "sequential (mSPRT)", ALPHA, "<="),
        ("cs_cover", "confidence sequence covers at every look", nominal, ">="),
    ]
    family_wise = [
        ("none", "no correction", ALPHA, "info"),
        ("holm", "Holm", ALPHA, "<="),
        ("bh", "Benjamini-Hochberg (global null)", ALPHA, "<="),
    ]
    for group, label, draw, rows in (
        ("peeking", f"{looks} looks, A/A proportion", peek, peeking),
        ("family-wise error", f"{metrics_in_family} A/A metrics", family, family_wise),
    ):
        res = _collect(reps, draw)
        checks += [
            _rate_check(group, f"{label}: {what}", res[key], target, relation)
            for key, what, target, relation in rows
        ]

    # 5. Capping and CUPED for ratios (reports/selfcheck_methods.py, own generator) ----
    checks += method_checks(seed, reps, n, ALPHA, _collect, _rate_check)

    return SelfCheckResult(
        replications=reps,
        seed=seed,
        units_per_variant=n,
        tolerance_se=TOLERANCE_SE,
        seconds=time.perf_counter() - started,
        checks=checks,
    )


def format_table(result: SelfCheckResult) -> str:
    """Plain-text (Markdown) table of a self-check run."""
    lines = [
        f"replications={result.replications} seed={result.seed} "
        f"units/variant={result.units_per_variant} tolerance={result.tolerance_se:g} MC SE "
        f"({result.seconds:.1f} s)",
        "",
        "| group | check | estimate | MC SE | target | pass |",
        "|---|---|---:|---:|---:|---|",
    ]
    for c in result.checks:
        verdict = {True: "yes", False: "**NO**", None: "(context)"}[c.passed]
        target = f"{c.relation} {c.target:.4f}" if c.passed is not None else "-"
        lines.append(
            f"| {c.group} | {c.name} | {c.estimate:.4f} | {c.mc_se:.4f} | {target} | {verdict} |"
        )
    return "\n".join(lines)
