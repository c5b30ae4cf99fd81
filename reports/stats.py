"""Estimates, A/B comparisons and SRM tests computed from per-variant sufficient statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from scipy import special  # type: ignore[import-untyped, unused-ignore]

from reports.sufficient import (
    MIN_UNITS,
    ROUNDING_RTOL,
    MeanStats,
    RatioStats,
    as_count,
    as_finite,
    finite_or_none,
    ratio_variance,
)

__all__ = [
    "SRM_ALPHA",
    "Comparison",
    "Estimate",
    "SrmResult",
    "compare",
    "estimate",
    "srm_test",
]

#: Default significance threshold of the sample-ratio-mismatch test.
SRM_ALPHA: float = 0.001

_NOTE_ZERO_VARIANCE = "zero variance"
_NOTE_OVERFLOW = "non-finite intermediate result (numerical overflow)"


# ---------------------------------------------------------------------------
# Small numerical helpers
# ---------------------------------------------------------------------------


def _join_notes(notes: Sequence[str | None]) -> str | None:
    kept = [note for note in notes if note]
    return "; ".join(dict.fromkeys(kept)) if kept else None


def _t_crit(df: float, alpha: float) -> float:
    """Two-sided critical value ``t_{1 - alpha/2, df}``.

    Computed from the lower tail, ``-t_{alpha/2}``, which stays accurate (and
    finite) for tiny ``alpha`` where ``1 - alpha/2`` would round to 1.
    """
    return -float(special.stdtrit(df, alpha / 2.0))


def _z_crit(alpha: float) -> float:
    """Two-sided critical value ``z_{1 - alpha/2}`` (see :func:`_t_crit`)."""
    return -float(special.ndtri(alpha / 2.0))


def _t_two_sided_p(stat: float, df: float) -> float:
    return min(1.0, 2.0 * float(special.stdtr(df, -abs(stat))))


def _z_two_sided_p(stat: float) -> float:
    return min(1.0, 2.0 * float(special.ndtr(-abs(stat))))


def _check_alpha(alpha: float) -> float:
    value = as_finite(alpha, "alpha")
    if not 0.0 < value < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return value


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Point estimate and confidence interval of one variant's metric.

    Parameters
    ----------
    value : float or None
        Mean (mean/proportion metrics) or ratio (ratio metrics); ``None``
        when undefined (no units, zero total denominator).
    se : float or None
        Standard error of ``value``; ``None`` with fewer than 2 units.
    ci : tuple of float or None
        Two-sided ``1 - alpha`` confidence interval.
    n : int
        Number of units.
    note : str or None
        Human-readable explanation when something is missing or degenerate.
    """

    value: float | None
    se: float | None
    ci: tuple[float, float] | None
    n: int
    note: str | None


@dataclass(frozen=True)
class Comparison:
    """Treatment-versus-baseline comparison of one metric.

    Parameters
    ----------
    diff : float or None
        ``treatment - baseline``.
    diff_ci : tuple of float or None
        Two-sided ``1 - alpha`` confidence interval of ``diff``.
    rel_lift : float or None
        ``treatment / baseline - 1``; ``None`` when the baseline is 0.
    rel_lift_ci : tuple of float or None
        Delta-method normal interval of ``rel_lift``.
    p_value : float or None
        Two-sided p-value for ``diff == 0``.
    note : str or None
        Human-readable explanation when something is missing or degenerate.
    se : float or None
        Standard error of ``diff`` (``None`` when it is undefined).
    rel_lift_se : float or None
        Delta-method standard error of ``rel_lift``.
    """

    diff: float | None
    diff_ci: tuple[float, float] | None
    rel_lift: float | None
    rel_lift_ci: tuple[float, float] | None
    p_value: float | None
    note: str | None
    # Derived from the intervals; left out of equality so results compare by what they report.
    se: float | None = field(default=None, compare=False)
    rel_lift_se: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SrmResult:
    """Result of a sample-ratio-mismatch (chi-square goodness-of-fit) test.

    Parameters
    ----------
    chi2 : float
        Pearson chi-square statistic.
    p_value : float
        Upper-tail p-value with ``k - 1`` degrees of freedom.
    expected : tuple of float
        Expected unit counts under the configured weights.
    mismatch : bool
        ``p_value < alpha`` (``SRM_ALPHA`` by default).
    note : str or None
        Explanation for degenerate input (no units at all).
    """

    chi2: float
    p_value: float
    expected: tuple[float, ...]
    mismatch: bool
    note: str | None = None


# ---------------------------------------------------------------------------
# Estimation and comparison
# ---------------------------------------------------------------------------


def _units_note(n: int, who: str | None = None) -> str:
    prefix = f"{who} " if who else ""
    return f"{prefix}needs at least {MIN_UNITS} units (got {n})"


def _point_and_var(
    stats: MeanStats | RatioStats, who: str | None = None
) -> tuple[float | None, float | None, str | None]:
    """Return ``(value, variance of value, note)`` for one arm."""
    if isinstance(stats, MeanStats):
        value = stats.mean
        if stats.n < MIN_UNITS:
            return value, None, _units_note(stats.n, who)
        variance = stats.variance
        if variance is None:  # overflow
            return value, None, _NOTE_OVERFLOW
        return value, variance / stats.n, None
    prefix = f"{who} " if who else ""
    if stats.n == 0:
        return None, None, _units_note(stats.n, who)
    if stats.den == 0:
        return None, None, f"{prefix}ratio undefined: total denominator is 0"
    value = stats.ratio
    if value is None:
        return None, None, _NOTE_OVERFLOW
    if stats.n < MIN_UNITS:
        return value, None, _units_note(stats.n, who)
    ratio_var = ratio_variance(stats)
    if ratio_var is None:
        return value, None, _NOTE_OVERFLOW
    return value, ratio_var, None


def _check_stats(stats: object, name: str) -> None:
    if not isinstance(stats, MeanStats | RatioStats):
        raise TypeError(f"{name} must be MeanStats or RatioStats, got {type(stats).__name__}")


def estimate(stats: MeanStats | RatioStats, alpha: float = 0.05) -> Estimate:
    """Estimate one variant's metric with a ``1 - alpha`` confidence interval.

    Parameters
    ----------
    stats : MeanStats or RatioStats
        Sufficient statistics of the variant.
    alpha : float, default 0.05
        Two-sided significance level, ``0 < alpha < 1``.

    Returns
    -------
    Estimate
        Degenerate inputs never raise: with 0 units everything but ``n`` is
        ``None``; with 1 unit only ``value`` is set; a ratio with a zero
        total denominator has ``value=None``. ``note`` says why. Zero
        variance gives ``ci == (value, value)`` and ``note="zero variance"``.

    Raises
    ------
    TypeError
        If ``stats`` is neither :class:`MeanStats` nor :class:`RatioStats`.
    ValueError
        If ``alpha`` is not in ``(0, 1)``.

    Notes
    -----
    Mean / proportion: Student-t interval
    :math:`\\bar v \\pm t_{1-\\alpha/2,\\,n-1}\\, s/\\sqrt n`.

    Ratio: normal interval :math:`R \\pm z_{1-\\alpha/2}\\,
    \\widehat{\\mathrm{se}}(R)` with the delta-method standard error
    described in :class:`RatioStats`.
    """
    _check_stats(stats, "stats")
    alpha = _check_alpha(alpha)
    value, variance, note = _point_and_var(stats)
    if value is None or variance is None:
        return Estimate(value=value, se=None, ci=None, n=stats.n, note=note)
    se = math.sqrt(variance)
    if se == 0.0:
        return Estimate(value=value, se=0.0, ci=(value, value), n=stats.n, note=_NOTE_ZERO_VARIANCE)
    crit = _t_crit(stats.n - 1, alpha) if isinstance(stats, MeanStats) else _z_crit(alpha)
    lo, hi = value - crit * se, value + crit * se
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return Estimate(value=value, se=se, ci=None, n=stats.n, note=_NOTE_OVERFLOW)
    return Estimate(value=value, se=se, ci=(lo, hi), n=stats.n, note=None)


def _relative_lift(
    value_t: float,
    var_t: float | None,
    value_c: float,
    var_c: float | None,
    z_crit: float,
) -> tuple[float | None, tuple[float, float] | None, str | None]:
    """Relative lift ``value_t / value_c - 1`` and its delta-method CI."""
    if value_c == 0.0:
        return None, None, "baseline value is 0: relative lift undefined"
    lift = finite_or_none(value_t / value_c - 1.0)
    if lift is None:
        return None, None, _NOTE_OVERFLOW
    if var_t is None or var_c is None:
        return lift, None, None
    # var_t/m_c^2 + m_t^2 var_c/m_c^4 == (var_t + q^2 var_c) / m_c^2, q = m_t/m_c;
    # the factored form avoids 4th powers (and float ** OverflowError).
    q = value_t / value_c
    lift_var = finite_or_none((var_t + q * q * var_c) / value_c / value_c)
    if lift_var is None:
        return lift, None, _NOTE_OVERFLOW
    half = z_crit * math.sqrt(lift_var)
    lo, hi = lift - half, lift + half
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return lift, None, _NOTE_OVERFLOW
    return lift, (lo, hi), None


def compare(
    treatment: MeanStats | RatioStats,
    baseline: MeanStats | RatioStats,
    alpha: float = 0.05,
) -> Comparison:
    """Compare a treatment variant with the baseline variant.

    Parameters
    ----------
    treatment, baseline : MeanStats or RatioStats
        Sufficient statistics of the two (independent) arms; both must be of
        the same type.
    alpha : float, default 0.05
        Two-sided significance level, ``0 < alpha < 1``.

    Returns
    -------
    Comparison
        Degenerate inputs never raise and never produce NaN/inf: an arm with
        fewer than 2 units gives point values only (or ``None`` when
        undefined) and a note such as ``"treatment needs at least 2 units
        (got 1)"``; zero variance in both arms gives the exact difference,
        ``diff_ci == (diff, diff)``, ``p_value`` 1.0 if ``diff == 0`` else
        0.0 and the note ``"zero variance"``; a baseline value of 0 leaves
        ``rel_lift`` and its CI ``None`` with a note.

    Raises
    ------
    TypeError
        If the arms are not both :class:`MeanStats` or both
        :class:`RatioStats`.
    ValueError
        If ``alpha`` is not in ``(0, 1)``.

    Notes
    -----
    Mean / proportion (Welch): with :math:`v_k = s_k^2 / n_k`,

    .. math::

        \\Delta = \\bar v_t - \\bar v_c,\\quad
        \\mathrm{se} = \\sqrt{v_t + v_c},\\quad
        \\nu = \\frac{(v_t + v_c)^2}{v_t^2/(n_t-1) + v_c^2/(n_c-1)},

    :math:`T = \\Delta/\\mathrm{se}` is referred to Student's t with
    :math:`\\nu` (Welch–Satterthwaite) degrees of freedom, and the interval
    is :math:`\\Delta \\pm t_{1-\\alpha/2,\\nu}\\,\\mathrm{se}`.

    Ratio: :math:`\\Delta = R_t - R_c` with
    :math:`\\operatorname{Var}(\\Delta) = \\operatorname{Var}(R_t) +
    \\operatorname{Var}(R_c)` (delta-method variances, independent arms);
    z-test and normal interval.

    Relative lift :math:`L = m_t/m_c - 1` (delta method, normal interval):

    .. math::

        \\operatorname{Var}(L) \\approx \\frac{\\operatorname{Var}(m_t)}{m_c^2}
            + \\frac{m_t^2 \\operatorname{Var}(m_c)}{m_c^4}.
    """
    _check_stats(treatment, "treatment")
    _check_stats(baseline, "baseline")
    if type(treatment) is not type(baseline):
        raise TypeError(
            "compare() expects treatment and baseline of the same type "
            "(both MeanStats or both RatioStats), got "
            f"treatment={type(treatment).__name__}, "
            f"baseline={type(baseline).__name__}"
        )
    alpha = _check_alpha(alpha)
    z_crit = _z_crit(alpha)

    value_t, var_t, note_t = _point_and_var(treatment, "treatment")
    value_c, var_c, note_c = _point_and_var(baseline, "baseline")
    notes: list[str | None] = [note_t, note_c]

    if value_t is None or value_c is None:
        return Comparison(None, None, None, None, None, _join_notes(notes))

    diff = finite_or_none(value_t - value_c)
    lift, lift_ci, lift_note = _relative_lift(value_t, var_t, value_c, var_c, z_crit)
    if diff is None:
        notes.append(_NOTE_OVERFLOW)
    if diff is None or var_t is None or var_c is None:
        notes.append(lift_note)
        return Comparison(diff, None, lift, lift_ci, None, _join_notes(notes))

    total_var = var_t + var_c
    if total_var == 0.0:
        if abs(diff) <= ROUNDING_RTOL * max(abs(value_t), abs(value_c)):
            # e.g. 3 x 0.1 vs 4 x 0.1: the means differ only by summation rounding.
            diff = 0.0
            if lift is not None:
                lift, lift_ci = 0.0, (0.0, 0.0)
        notes += [_NOTE_ZERO_VARIANCE, lift_note]
        return Comparison(
            diff=diff,
            diff_ci=(diff, diff),
            rel_lift=lift,
            rel_lift_ci=lift_ci,
            p_value=1.0 if diff == 0.0 else 0.0,
            note=_join_notes(notes),
            se=0.0,
            rel_lift_se=0.0 if lift_ci is not None else None,
        )

    if not math.isfinite(total_var):
        notes += [_NOTE_OVERFLOW, lift_note]
        return Comparison(diff, None, lift, lift_ci, None, _join_notes(notes))
    se = math.sqrt(total_var)
    stat = diff / se
    if isinstance(treatment, MeanStats):
        # Welch–Satterthwaite df, written with weights w_k = v_k / (v_t + v_c)
        # so that tiny variances cannot underflow to 0/0.
        w_t, w_c = var_t / total_var, var_c / total_var
        df = 1.0 / (w_t * w_t / (treatment.n - 1) + w_c * w_c / (baseline.n - 1))
        crit = _t_crit(df, alpha)
        p_value = _t_two_sided_p(stat, df)
    else:
        crit = z_crit
        p_value = _z_two_sided_p(stat)
    lo, hi = diff - crit * se, diff + crit * se
    diff_ci: tuple[float, float] | None = (lo, hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        diff_ci = None
        notes.append(_NOTE_OVERFLOW)
    notes.append(lift_note)
    lift_se = None if lift_ci is None else (lift_ci[1] - lift_ci[0]) / (2.0 * z_crit)
    return Comparison(diff, diff_ci, lift, lift_ci, p_value, _join_notes(notes), se, lift_se)


# ---------------------------------------------------------------------------
# Sample ratio mismatch
# ---------------------------------------------------------------------------


def srm_test(
    observed: Sequence[int],
    weights: Sequence[float],
    alpha: float = SRM_ALPHA,
) -> SrmResult:
    """Chi-square goodness-of-fit test of the traffic split (SRM check).

    Parameters
    ----------
    observed : sequence of int
        Units observed in each variant.
    weights : sequence of float
        Configured allocation weights, same length as ``observed``; they are
        normalised, so ``[1, 1]`` and ``[0.5, 0.5]`` are equivalent.
    alpha : float, default SRM_ALPHA (0.001)
        A mismatch is flagged when ``p_value < alpha``.

    Returns
    -------
    SrmResult
        With no units at all there is nothing to test: ``chi2 == 0``,
        ``p_value == 1``, ``mismatch`` False and a note.

    Raises
    ------
    ValueError
        If fewer than two variants are given, the lengths differ, a count is
        negative or a weight is not strictly positive and finite.
    TypeError
        If a count is not an integer.

    Notes
    -----
    With :math:`N = \\sum_k O_k` and :math:`E_k = N w_k / \\sum_j w_j`,

    .. math::

        \\chi^2 = \\sum_k \\frac{(O_k - E_k)^2}{E_k}
        \\sim \\chi^2_{K-1} \\text{ under the configured split.}
    """
    counts = [as_count(o, "observed count") for o in observed]
    ws = [as_finite(w, "weight") for w in weights]
    alpha = _check_alpha(alpha)
    if len(counts) != len(ws):
        raise ValueError(f"observed and weights differ in length ({len(counts)} vs {len(ws)})")
    if len(counts) < 2:
        raise ValueError(f"need at least 2 variants, got {len(counts)}")
    if any(w <= 0 for w in ws):
        raise ValueError(f"weights must be > 0, got {ws}")
    total = sum(counts)
    weight_sum = math.fsum(ws)
    expected = tuple(total * (w / weight_sum) for w in ws)
    if total == 0:
        return SrmResult(0.0, 1.0, expected, False, "no units observed")
    if any(e <= 0.0 for e in expected):
        raise ValueError(f"weights too unequal: an expected count underflows to 0 ({ws})")
    chi2 = math.fsum((o - e) * (o - e) / e for o, e in zip(counts, expected, strict=True))
    p_value = float(special.chdtrc(len(counts) - 1, chi2))
    return SrmResult(chi2, p_value, expected, p_value < alpha)
