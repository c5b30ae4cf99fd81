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
    click = sigmoid(click_logit)
    if examined:
        click = click * position_bias(world, items.shape[1])[None, :]
    purchase = sigmoid(p.purchase_bias - sensitivity * log_price + taste)
    return SlateOutcome(click=click, purchase_given_click=purchase)
