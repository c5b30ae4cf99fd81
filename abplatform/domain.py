"""Domain objects: frozen dataclasses free of storage and web concerns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

FeedbackType = Literal["view", "click", "add_to_cart", "purchase", "rating"]
"""Event types a client sends back (and history interactions have)."""
EventType = Literal["impression", FeedbackType]
"""Event types the platform knows; `impression` is recorded by the platform itself."""
FEEDBACK_TYPES: tuple[FeedbackType, ...] = get_args(FeedbackType)
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)

SCENES: tuple[str, ...] = ("home_page", "product_detail", "cart_page")
"""Scenes (page types) a recommendation request may come from."""


@dataclass(frozen=True)
class Decision:
    """An assignment: the variant chosen, its propensity, and the unit's hash bucket."""

    variant: str
    propensity: float
    bucket: float | None = None

    @property
    def weight_version(self) -> int | None:
        """The bandit weight version the decision was drawn from; None for hashing."""
        return None


@dataclass(frozen=True)
class RecentInteraction:
    """One item interaction of a unit: the item, the event type and its Unix seconds."""

    item_id: str
    type: str
    ts: int


@dataclass(frozen=True)
class OnlineFeatures:
    """A unit's online features as the feature store holds them (events it acknowledged).

    `version` grows by one with each acknowledged event batch touching the unit; `recent`
    holds the latest interactions, newest first; `cart` the items added to the cart and not
    bought since (oldest first); `categories` the interactions per item category.
    """

    version: int
    recent: tuple[RecentInteraction, ...] = ()
    cart: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitFeatures:
    """What a strategy sees of a unit: offline features at the cut-off merged with the
    online events since (`abplatform.features.merge_features`).

    `positive_items` are the unit's clicked or bought items, newest first, a run of
    consecutive events on one item counted once (the two-tower's sequence steps).
    """

    version: int
    positive_items: tuple[str, ...]
    favourite_category: str | None
    cart: tuple[str, ...]
    last_viewed: str | None
    purchased: tuple[str, ...]
    """Items bought in the online events (offline purchases are the strategy's own)."""
    online_positives: int = 0
    """How many of `positive_items` come from the online events (the newest ones)."""
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecRequest:
    """A request for a slate: who asks, from which scene, with which context.

    `features` carries the unit's merged offline and online features when it has online
    events since the model's cut-off and the variant serves real-time features; None
    otherwise (the strategy then serves from what it learned at fit time).
    """

    unit_id: str
    scene: str | None = None
    current_item: str | None = None
    cart_items: tuple[str, ...] = ()
    features: UnitFeatures | None = None


@dataclass(frozen=True)
class Slate:
    """An ordered list of recommended item ids with their scores (and, from a pipeline, the
    retrieval source that found each item; None for strategies without sources)."""

    items: tuple[str, ...]
    scores: tuple[float, ...]
    sources: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.items) != len(self.scores):
            raise ValueError(f"slate has {len(self.items)} items but {len(self.scores)} scores")
        if self.sources is not None and len(self.sources) != len(self.items):
            raise ValueError(f"slate has {len(self.items)} items but {len(self.sources)} sources")


@dataclass(frozen=True)
class Catalog:
    """Item catalogue as parallel columns; the row index is the item's dense index."""

    item_ids: npt.NDArray[np.str_]
    categories: npt.NDArray[np.str_]
    brands: npt.NDArray[np.str_]
    prices: npt.NDArray[np.float64]
    tags: npt.NDArray[np.str_] | None = None
    """Each item's labels joined by ``|`` (e.g. genres), ``""`` for none; None if unknown."""

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def index(self) -> dict[str, int]:
        """Map item id -> dense index."""
        return {str(item): i for i, item in enumerate(self.item_ids.tolist())}


@dataclass(frozen=True)
class InteractionLog:
    """Interaction history as parallel columns; timestamps are Unix seconds (int64)."""

    catalog: Catalog
    user_ids: npt.NDArray[np.str_]
    item_ids: npt.NDArray[np.str_]
    event_types: npt.NDArray[np.str_]
    values: npt.NDArray[np.float64]
    timestamps: npt.NDArray[np.int64]
    user_features: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def end_timestamp(self) -> int:
        """The latest timestamp in the log (0 for an empty log)."""
        return int(self.timestamps.max()) if len(self) else 0
