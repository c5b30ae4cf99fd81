"""The user model: position-biased clicks and price-sensitive purchases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulator.world import World


def sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class SlateOutcome:
    """Per-position click and purchase probabilities of slates shown to users."""

    click: npt.NDArray[np.float64]  # (sessions, k)
    purchase_given_click: npt.NDArray[np.float64]  # (sessions, k)

    @property
    def purchase(self) -> npt.NDArray[np.float64]:
        """Unconditional purchase probability per position."""
        return self.click * self.purchase_given_click


def position_bias(world: World, k: int) -> npt.NDArray[np.float64]:
    """Examination probability of each slate position: decay ** position."""
    return world.params.position_decay ** np.arange(k, dtype=np.float64)


def slate_probabilities(
    world: World,
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    examined: bool = True,
) -> SlateOutcome:
    """Click and purchase probabilities of item slates (users: (n,), items: (n, k)).

    P(click at p) = bias[p] * sigmoid(click_bias + scale * <u, v> + quality - price term);
    P(purchase | click) = sigmoid(purchase_bias - sensitivity * log(price / ref) + <u, v>).
    `examined=False` drops the position bias (organic browsing, where the user looks at all).
    With `satiation` > 0, an item's click logit falls by satiation * (its highest cosine
    similarity to an item shown above it), so repetitive slates lose appeal.
    """
    p = world.params
    u = world.user_vectors[users]  # (n, d)
    v = world.item_vectors[items]  # (n, k, d)
    taste = np.einsum("nd,nkd->nk", u, v)
    log_price = np.log(world.item_price[items] / world.reference_price)
    sensitivity = world.user_price_sensitivity[users][:, None]
    click_logit = (
        p.click_bias
        + p.affinity_scale * taste
        + world.item_quality[items]
        - p.price_weight * sensitivity * log_price
    )
    if p.satiation > 0 and items.shape[1] > 1:
        click_logit = click_logit - p.satiation * satiation_penalty(v)
    click = sigmoid(click_logit)
    if examined:
        click = click * position_bias(world, items.shape[1])[None, :]
    purchase = sigmoid(p.purchase_bias - sensitivity * log_price + taste)
    return SlateOutcome(click=click, purchase_given_click=purchase)


def satiation_penalty(vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per position, the highest (non-negative) similarity to any item above it (n, k)."""
    k = vectors.shape[1]
    similarity = np.einsum("nkd,njd->nkj", vectors, vectors)
    above = np.tril(np.ones((k, k), dtype=bool), -1)  # [p, q] is True where q is above p
    similarity = np.where(above[None, :, :], similarity, -np.inf)
    penalty = similarity.max(axis=2)
    penalty[:, 0] = 0.0
    clipped: npt.NDArray[np.float64] = np.maximum(penalty, 0.0)
    return clipped
