"""Session scenes and their context: the product being viewed, the items in the cart."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from abplatform.domain import SCENES, RecRequest
from simulator.history import browse_items, choose_categories
from simulator.world import World

HOME, DETAIL, CART = (SCENES.index(s) for s in ("home_page", "product_detail", "cart_page"))


@dataclass(frozen=True)
class Contexts:
    """Per session: scene index, current item (-1 = none), cart items (-1 = empty slot)."""

    scene: npt.NDArray[np.int64]
    current: npt.NDArray[np.int64]
    cart: npt.NDArray[np.int64]

    def requests(self, world: World, users: npt.NDArray[np.int64]) -> list[RecRequest]:
        """The recommendation requests these sessions make."""
        ids = world.item_ids
        out = []
        for user, scene, current, cart in zip(
            users.tolist(),
            self.scene.tolist(),
            self.current.tolist(),
            self.cart.tolist(),
            strict=True,
        ):
            out.append(
                RecRequest(
                    str(world.user_ids[user]),
                    scene=SCENES[scene],
                    current_item=str(ids[current]) if current >= 0 else None,
                    cart_items=tuple(str(ids[i]) for i in cart if i >= 0),
                )
            )
        return out

    def as_json(self, world: World) -> list[str | None]:
        """The context column of exposures: JSON text, or None for the home page."""
        import json

        out: list[str | None] = []
        for current, cart in zip(self.current.tolist(), self.cart.tolist(), strict=True):
            items = [str(world.item_ids[i]) for i in cart if i >= 0]
            if current < 0 and not items:
                out.append(None)
            else:
                context: dict[str, object] = {}
                if current >= 0:
                    context["current_item"] = str(world.item_ids[current])
                if items:
                    context["cart_items"] = items
                out.append(json.dumps(context))
        return out


def draw_scenes(
    shares: dict[str, float], n: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Scene index of each of `n` sessions, drawn by the configured shares."""
    p = np.array([shares.get(scene, 0.0) for scene in SCENES], dtype=np.float64)
    return rng.choice(len(SCENES), size=n, p=p / p.sum()).astype(np.int64)


def draw_contexts(
    world: World,
    users: npt.NDArray[np.int64],
    scenes: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> Contexts:
    """Context of each session from the user's tastes: viewed item, cart contents."""
    n = users.size
    cart_max = world.params.cart_size_max
    current = np.full(n, -1, dtype=np.int64)
    cart = np.full((n, cart_max), -1, dtype=np.int64)
    detail = np.flatnonzero(scenes == DETAIL)
    if detail.size:
        pages = browse_items(world, choose_categories(world, users[detail], rng), rng)
        current[detail] = pages[:, 0]
    in_cart = np.flatnonzero(scenes == CART)
    if in_cart.size:
        pages = browse_items(world, choose_categories(world, users[in_cart], rng), rng)
        sizes = rng.integers(1, cart_max + 1, size=in_cart.size)
        filled = np.arange(cart_max)[None, :] < sizes[:, None]
        cart[in_cart] = np.where(filled, pages[:, :cart_max], -1)
    return Contexts(scene=scenes, current=current, cart=cart)
