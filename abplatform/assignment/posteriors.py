"""Conjugate posteriors of arm rewards and the batched reward statistics that update them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RewardStats:
    """Batched sufficient statistics of one arm's rewards: count, sum and sum of squares.

    Parameters
    ----------
    n : int
        Number of units (rewards) in the batch.
    total : float
        Sum of the rewards (the number of successes for binary rewards).
    total_sq : float
        Sum of the squared rewards (equal to ``total`` for binary rewards).
    """

    n: int
    total: float
    total_sq: float = 0.0

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"RewardStats.n must be >= 0, got {self.n}")
        if self.n and self.total_sq * self.n < self.total**2 * (1 - 1e-9) - 1e-9:
            raise ValueError(
                f"RewardStats inconsistent: total_sq={self.total_sq} < total**2/n="
                f"{self.total**2 / self.n} (sum of squares must be at least sum**2 / n)"
            )

    @classmethod
    def binary(cls, n: int, successes: int) -> RewardStats:
        """Statistics of ``n`` binary rewards of which ``successes`` are 1."""
        return cls(n, float(successes), float(successes))


@dataclass(frozen=True)
class BetaPosterior:
    """Beta posterior of a Bernoulli arm's success probability (Beta(1, 1) prior by default).

    Parameters
    ----------
    alpha, beta : float
        Beta parameters: prior plus successes, prior plus failures.
    n : int
        Units seen so far (used for burn-in).
    """

    alpha: float = 1.0
    beta: float = 1.0
    n: int = 0

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"BetaPosterior needs alpha > 0 and beta > 0, got {self}")

    def updated(self, stats: RewardStats) -> BetaPosterior:
        """The posterior after a batch of binary rewards.

        Raises
        ------
        ValueError
            If the batch has more successes than units or a negative count.
        """
        if not 0 <= stats.total <= stats.n:
            raise ValueError(
                f"binary rewards need 0 <= successes <= n, got successes={stats.total}, n={stats.n}"
            )
        return BetaPosterior(
            self.alpha + stats.total, self.beta + stats.n - stats.total, self.n + stats.n
        )

    @property
    def mean(self) -> float:
        """Posterior mean of the success probability."""
        return self.alpha / (self.alpha + self.beta)


@dataclass(frozen=True)
class GaussianPosterior:
    """Normal-Inverse-Gamma posterior of a continuous arm's mean reward (unknown variance).

    The model is ``x ~ N(mu, sigma^2)``, ``mu | sigma^2 ~ N(mu0, sigma^2 / kappa)``,
    ``sigma^2 ~ InvGamma(a, b)``. It is fully conjugate (no plug-in variance), so a
    sequence of batched updates equals one update with the pooled statistics.

    Parameters
    ----------
    mu : float
        Posterior location of the mean.
    kappa : float
        Pseudo-count of the mean (prior default 0.01: nearly flat).
    a, b : float
        Inverse-gamma shape and scale of the variance (prior default 1, 1).
    n : int
        Units seen so far (used for burn-in).

    Notes
    -----
    For a batch with ``n`` units, sample mean ``m`` and ``S = sum_sq - sum**2 / n``::

        kappa' = kappa + n
        mu'    = (kappa * mu + sum) / kappa'
        a'     = a + n / 2
        b'     = b + S / 2 + kappa * n * (m - mu)**2 / (2 * kappa')

    The marginal posterior of the mean is Student-t with ``2 a`` degrees of freedom,
    location ``mu`` and scale ``sqrt(b / (a * kappa))``; draws use that form.
    """

    mu: float = 0.0
    kappa: float = 0.01
    a: float = 1.0
    b: float = 1.0
    n: int = 0

    def __post_init__(self) -> None:
        if not (self.kappa > 0 and self.a > 0 and self.b > 0):
            raise ValueError(f"GaussianPosterior needs kappa, a, b > 0, got {self}")

    def updated(self, stats: RewardStats) -> GaussianPosterior:
        """The posterior after a batch of continuous rewards (see Notes of the class)."""
        if stats.n == 0:
            return self
        mean = stats.total / stats.n
        scatter = max(stats.total_sq - stats.total**2 / stats.n, 0.0)
        kappa = self.kappa + stats.n
        return GaussianPosterior(
            mu=(self.kappa * self.mu + stats.total) / kappa,
            kappa=kappa,
            a=self.a + stats.n / 2,
            b=self.b + scatter / 2 + self.kappa * stats.n * (mean - self.mu) ** 2 / (2 * kappa),
            n=self.n + stats.n,
        )

    @property
    def mean(self) -> float:
        """Posterior mean of the arm's mean reward."""
        return self.mu


Posterior = BetaPosterior | GaussianPosterior

ArmRewards = Mapping[str, RewardStats]
ContextRewards = (
    Mapping[str, ArmRewards] | Mapping[None, ArmRewards] | Mapping[str | None, ArmRewards]
)
"""Reward statistics by context (None for a policy without contexts), then by arm."""
ArmPosteriors = Sequence[Posterior]
ContextPosteriors = (
    Mapping[str, ArmPosteriors] | Mapping[None, ArmPosteriors] | Mapping[str | None, ArmPosteriors]
)
"""Posteriors in arm order by context."""
