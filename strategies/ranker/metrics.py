"""Offline quality of click / purchase probabilities: AUC, log loss, calibration; and a
logistic-regression peer fitted on the same features (NumPy + scipy)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import rankdata

ECE_BINS = 10
EPS = 1e-7


@dataclass(frozen=True)
class HeadQuality:
    """One head's metrics on held-out rows (NaN AUC when only one class is present)."""

    rows: int
    positives: int
    auc: float
    log_loss: float
    ece: float


def finite_or_none(quality: HeadQuality) -> dict[str, float | int | None]:
    """The quality as strict-JSON values: an undefined metric (NaN) becomes None."""
    return {
        name: value if not isinstance(value, float) or np.isfinite(value) else None
        for name, value in asdict(quality).items()
    }


def auc(labels: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]) -> float:
    """Area under the ROC curve by the Mann-Whitney rank sum (ties get mid-ranks)."""
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: npt.NDArray[np.bool_], p: npt.NDArray[np.float64]) -> float:
    """Mean binary cross-entropy, probabilities clipped to [EPS, 1 - EPS]."""
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(np.where(labels, np.log(q), np.log1p(-q)))) if labels.size else np.nan


def expected_calibration_error(
    labels: npt.NDArray[np.bool_], p: npt.NDArray[np.float64], bins: int = ECE_BINS
) -> float:
    """Sum over equal-width probability bins of (bin share) x |mean label - mean p|."""
    if labels.size == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(labels[inside].mean() - p[inside].mean())
    return float(total)


def head_quality(labels: npt.NDArray[np.bool_], p: npt.NDArray[np.float64]) -> HeadQuality:
    """AUC, log loss and ECE of one head."""
    return HeadQuality(
        int(labels.size),
        int(labels.sum()),
        auc(labels, p),
        log_loss(labels, p),
        expected_calibration_error(labels, p),
    )


@dataclass(frozen=True)
class LogisticModel:
    """L2-regularised logistic regression on standardised features."""

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    coef: npt.NDArray[np.float64]
    intercept: float

    def probabilities(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        z = (x.astype(np.float64) - self.mean) / self.scale
        out: npt.NDArray[np.float64] = expit(z @ self.coef + self.intercept)
        return out


def fit_logistic(
    x: npt.NDArray[np.float32],
    labels: npt.NDArray[np.bool_],
    weights: npt.NDArray[np.float64] | None = None,
    l2: float = 1.0,
) -> LogisticModel:
    """Minimise weighted log loss + l2/2 |w|^2 (per weighted row) with L-BFGS."""
    xs = x.astype(np.float64)
    mean = xs.mean(axis=0)
    scale = xs.std(axis=0)
    scale[scale == 0] = 1.0
    z = (xs - mean) / scale
    y = labels.astype(np.float64)
    w = np.ones(y.size) if weights is None else weights.astype(np.float64)
    total = max(w.sum(), 1.0)

    def objective(theta: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        logit = z @ theta[:-1] + theta[-1]
        p = expit(logit)
        loss = np.sum(w * (np.logaddexp(0.0, logit) - y * logit)) / total
        loss += 0.5 * l2 * float(theta[:-1] @ theta[:-1]) / total
        residual = w * (p - y) / total
        grad = np.append(z.T @ residual + l2 * theta[:-1] / total, residual.sum())
        return float(loss), grad

    result = minimize(objective, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B")
    return LogisticModel(mean, scale, result.x[:-1], float(result.x[-1]))
