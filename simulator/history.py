"""Organic pre-period history: users browse categories they like and click and buy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulator.behaviour import slate_probabilities
from simulator.world import World

BROWSE_PAGE = 20  # items a user looks at in one organic browsing session
BROWSE_ATTENTION = 0.5  # organic pages get less attention than a recommendation slate
CATEGORY_CHOICE_SHARPNESS = 4.0


@dataclass(frozen=True)
class History:
    """Organic interactions as parallel columns."""

    user: npt.NDArray[np.int64]
    item: npt.NDArray[np.int64]
    event_type: npt.NDArray[np.str_]
    value: npt.NDArray[np.float64]
    ts: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.user.shape[0])


def choose_categories(
    world: World, users: npt.NDArray[np.int64], rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Each session's category, by softmax of taste plus the category's traffic share."""
    logits = CATEGORY_CHOICE_SHARPNESS * world.user_vectors[users] @ world.category_vectors.T
    logits += np.log(world.category_share)[None, :]
    gumbel = -np.log(-np.log(rng.random(logits.shape)))
    chosen: npt.NDArray[np.int64] = np.argmax(logits + gumbel, axis=1).astype(np.int64)
    return chosen


def browse_items(
    world: World, categories: npt.NDArray[np.int64], rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """A page of items per session from its category, drawn by browse weight."""
    pages = np.empty((categories.shape[0], BROWSE_PAGE), dtype=np.int64)
    for category in np.unique(categories):
        members = np.flatnonzero(world.item_category == category)
        rows = np.flatnonzero(categories == category)
        if members.size == 0:  # an empty category: browse the whole shop instead
            members = np.arange(world.n_items)
        cumulative = np.cumsum(world.item_browse_weight[members])
        draws = rng.random((rows.size, BROWSE_PAGE)) * cumulative[-1]
        picks = np.minimum(np.searchsorted(cumulative, draws, side="right"), members.size - 1)
        pages[rows] = members[picks]
    return pages


def generate_history(world: World, start: int, rng: np.random.Generator) -> History:
    """Simulate `history_days` of organic browsing before `start` (Unix seconds)."""
    p = world.params
    rate = p.history_sessions_per_user * world.user_activity
    sessions_per_user = rng.poisson(rate)
    users = np.repeat(np.arange(world.n_users, dtype=np.int64), sessions_per_user)
    if users.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return History(empty, empty, np.zeros(0, dtype=str), np.zeros(0), empty)
    window = p.history_days * 86_400
    session_ts = start - window + rng.integers(0, window, size=users.size)
    pages = browse_items(world, choose_categories(world, users, rng), rng)
    outcome = slate_probabilities(world, users, pages, examined=False)
    clicked = rng.random(pages.shape) < BROWSE_ATTENTION * outcome.click
    bought = clicked & (rng.random(pages.shape) < outcome.purchase_given_click)
    rows, cols = np.nonzero(clicked)
    brows, bcols = np.nonzero(bought)
    click_items = pages[rows, cols]
    buy_items = pages[brows, bcols]
    user = np.concatenate([users[rows], users[brows]])
    item = np.concatenate([click_items, buy_items])
    event_type = np.array(["click"] * rows.size + ["purchase"] * brows.size, dtype=str)
    value = np.concatenate([np.full(rows.size, np.nan), world.item_price[buy_items]])
    ts = np.concatenate([session_ts[rows] + cols, session_ts[brows] + bcols + 60])
    ts = np.minimum(ts, start - 1)
    order = np.argsort(ts, kind="stable")
    return History(user[order], item[order], event_type[order], value[order], ts[order])
