"""User x item features of the ranker: the user's past taste for the candidate, as counts.

Every feature is a ratio or log count of the interaction history's events strictly before
a time: the user's share of interactions (and of purchases) in the item's category and
brand, the user's past interactions with and purchases of the item, the item's interactions
and purchases in the last `window_days`, and the item's log price against the mean log
price of what the user interacted with. `PrefixTallies` answers "how many before t" for
every training row (each logged impression at its own exposure time, so nothing later
leaks in); `EndTallies` holds the same tallies at the fit's cut-off, which is what serving
looks candidates up in. One function, `personal_columns`, turns either into columns, so
training and serving compute the features the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from abplatform.domain import InteractionLog

PERSONAL_COLUMNS = (
    "category_share",
    "category_purchase_share",
    "brand_share",
    "item_interactions",
    "item_purchased",
    "item_popularity",
    "item_purchase_popularity",
    "price_gap",
)
"""The per-candidate columns `personal_columns` returns, in order."""
TALLIES = (
    "user",
    "user_purchase",
    "user_log_price",
    "user_category",
    "user_category_purchase",
    "user_brand",
    "user_item",
    "user_item_purchase",
    "item",
    "item_purchase",
)
"""Each tally counts (or for user_log_price sums) events by the key of its name."""
WINDOWED = ("item", "item_purchase")
"""Tallies counted over the last `window_days` only (item popularity)."""

Lookup = Callable[[str, npt.NDArray[np.int64]], npt.NDArray[np.float64]]
"""lookup(tally, keys) -> each key's tally (per row: at that row's time)."""


@dataclass(frozen=True)
class CatalogCodes:
    """Integer category and brand codes and log prices of the catalogue's items."""

    category: npt.NDArray[np.int64]
    brand: npt.NDArray[np.int64]
    log_price: npt.NDArray[np.float64]

    @classmethod
    def of(
        cls,
        categories: npt.NDArray[np.str_],
        brands: npt.NDArray[np.str_],
        prices: npt.NDArray[np.float64],
    ) -> CatalogCodes:
        """Codes in sorted-value order; a missing price counts as the median."""
        category = np.unique(categories.astype(str), return_inverse=True)[1].astype(np.int64)
        brand = np.unique(brands.astype(str), return_inverse=True)[1].astype(np.int64)
        price = prices.astype(np.float64)
        fill = float(np.nanmedian(price)) if np.isfinite(price).any() else 1.0
        log_price = np.log1p(np.maximum(np.nan_to_num(price, nan=fill), 0.0))
        return cls(category, brand, log_price)

    @property
    def n_items(self) -> int:
        return int(self.category.shape[0])

    @property
    def n_categories(self) -> int:
        return int(self.category.max()) + 1 if self.category.size else 1

    @property
    def n_brands(self) -> int:
        return int(self.brand.max()) + 1 if self.brand.size else 1


def tally_keys(
    name: str, codes: CatalogCodes, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """The key tally `name` counts (user, item) pairs under (user -1: no such user)."""
    u = users.astype(np.int64)
    if name in ("user", "user_purchase", "user_log_price"):
        return u
    if name.startswith("user_category"):
        return u * codes.n_categories + codes.category[items]
    if name == "user_brand":
        return u * codes.n_brands + codes.brand[items]
    if name.startswith("user_item"):
        return u * codes.n_items + items
    return items.astype(np.int64)  # item, item_purchase


def personal_columns(
    lookup: Lookup,
    codes: CatalogCodes,
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """(rows, len(PERSONAL_COLUMNS)) features of (user, item) rows from a tally lookup."""

    def tally(name: str) -> npt.NDArray[np.float64]:
        return lookup(name, tally_keys(name, codes, users, items))

    total, bought = tally("user"), tally("user_purchase")
    per_total, per_bought = np.maximum(total, 1.0), np.maximum(bought, 1.0)
    mean_log_price = tally("user_log_price") / per_total
    gap = np.where(total > 0, codes.log_price[items] - mean_log_price, 0.0)
    columns = [
        tally("user_category") / per_total,
        tally("user_category_purchase") / per_bought,
        tally("user_brand") / per_total,
        np.log1p(tally("user_item")),
        np.minimum(tally("user_item_purchase"), 1.0),
        np.log1p(tally("item")),
        np.log1p(tally("item_purchase")),
        gap,
    ]
    return np.stack(columns, axis=1).astype(np.float32)


@dataclass(frozen=True)
class HistoryEvents:
    """The history's interactions as codes: user index (into `user_ids`), item, time, kind."""

    user_ids: npt.NDArray[np.str_]
    users: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    purchase: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, history: InteractionLog, item_index: Mapping[str, int]) -> HistoryEvents:
        """Every event of the history on a catalogue item (all types count as interactions,
        purchases are also counted apart)."""
        items = np.array([item_index.get(i, -1) for i in history.item_ids.tolist()], np.int64)
        known = items >= 0
        names, users = np.unique(history.user_ids[known].astype(str), return_inverse=True)
        return cls(
            user_ids=names,
            users=users.astype(np.int64).reshape(-1),
            items=items[known],
            times=history.timestamps[known].astype(np.int64),
            purchase=history.event_types[known].astype(str) == "purchase",
        )

    def user_index(self, user_ids: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
        """Each id's user index; -1 for a user without history."""
        ids = np.asarray(user_ids).astype(str)
        if self.user_ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(self.user_ids, ids), self.user_ids.size - 1)
        return np.where(self.user_ids[where] == ids, where, -1).astype(np.int64)

    def tally_rows(
        self, name: str, codes: CatalogCodes
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Which events tally `name` counts, their keys and their weights."""
        rows = self.purchase if name.endswith("purchase") else np.ones(self.users.size, bool)
        keys = tally_keys(name, codes, self.users[rows], self.items[rows])
        weights = codes.log_price[self.items[rows]] if name == "user_log_price" else None
        return rows, keys, np.ones(keys.size) if weights is None else weights


@dataclass(frozen=True)
class EndTallies:
    """Every tally at the cut-off: sorted distinct keys and their totals (serving state)."""

    keys: Mapping[str, npt.NDArray[np.int64]]
    totals: Mapping[str, npt.NDArray[np.float64]]

    @classmethod
    def of(
        cls, events: HistoryEvents, codes: CatalogCodes, cutoff: int, window_s: int
    ) -> EndTallies:
        """Tallies of the events before `cutoff` (windowed ones: from cutoff - window_s)."""
        keys: dict[str, npt.NDArray[np.int64]] = {}
        totals: dict[str, npt.NDArray[np.float64]] = {}
        for name in TALLIES:
            rows, k, w = events.tally_rows(name, codes)
            times = events.times[rows]
            start = cutoff - window_s if name in WINDOWED else np.iinfo(np.int64).min
            inside = (times < cutoff) & (times >= start)
            keys[name], inverse = np.unique(k[inside], return_inverse=True)
            totals[name] = np.bincount(
                inverse.reshape(-1), weights=w[inside], minlength=keys[name].size
            ).astype(np.float64)
        return cls(keys, totals)

    def lookup(self, name: str, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Each key's total (0 for a key with no events)."""
        known, total = self.keys[name], self.totals[name]
        if known.size == 0:
            return np.zeros(keys.shape, dtype=np.float64)
        where = np.minimum(np.searchsorted(known, keys), known.size - 1)
        return np.where(known[where] == keys, total[where], 0.0)

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """The tallies as arrays of ``features.npz``."""
        out: dict[str, npt.NDArray[np.generic]] = {}
        for name in TALLIES:
            out[f"tally_{name}_keys"] = self.keys[name]
            out[f"tally_{name}_totals"] = self.totals[name]
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[np.generic]]) -> EndTallies:
        """The tallies `to_arrays` wrote."""
        return cls(
            {n: np.asarray(arrays[f"tally_{n}_keys"], np.int64) for n in TALLIES},
            {n: np.asarray(arrays[f"tally_{n}_totals"], np.float64) for n in TALLIES},
        )


@dataclass(frozen=True)
class PrefixTallies:
    """Every tally at any time: events sorted by (key, time) with running totals, so the
    tally of a key before t is a difference of two binary searches (training rows)."""

    distinct: Mapping[str, npt.NDArray[np.int64]]
    composite: Mapping[str, npt.NDArray[np.int64]]
    running: Mapping[str, npt.NDArray[np.float64]]
    first: int
    span: int
    window_s: int

    @classmethod
    def of(cls, events: HistoryEvents, codes: CatalogCodes, window_s: int) -> PrefixTallies:
        """Each tally's events as sorted (key rank, time) composites with the running sum of
        their weights."""
        first = int(events.times.min()) if events.times.size else 0
        span = (int(events.times.max()) - first + 2) if events.times.size else 2
        distinct: dict[str, npt.NDArray[np.int64]] = {}
        composite: dict[str, npt.NDArray[np.int64]] = {}
        running: dict[str, npt.NDArray[np.float64]] = {}
        for name in TALLIES:
            rows, k, w = events.tally_rows(name, codes)
            distinct[name], rank = np.unique(k, return_inverse=True)
            if distinct[name].size * span >= 2**62:
                raise ValueError(f"history too long to tally ({span} s x {k.size} events)")
            key = rank.reshape(-1).astype(np.int64) * span + (events.times[rows] - first)
            order = np.argsort(key, kind="stable")
            composite[name] = key[order]
            running[name] = np.concatenate([[0.0], np.cumsum(w[order])])
        return cls(distinct, composite, running, first, span, window_s)

    def lookup_at(self, at: npt.NDArray[np.int64]) -> Lookup:
        """The lookup of rows whose times are `at` (events strictly before each time)."""

        def lookup(name: str, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
            total = self._before(name, keys, at)
            if name in WINDOWED:
                total = total - self._before(name, keys, at - self.window_s)
            return total

        return lookup

    def _before(
        self, name: str, keys: npt.NDArray[np.int64], at: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        distinct, composite, running = self.distinct[name], self.composite[name], self.running[name]
        if distinct.size == 0:
            return np.zeros(keys.shape, dtype=np.float64)
        rank = np.minimum(np.searchsorted(distinct, keys), distinct.size - 1)
        found = distinct[rank] == keys
        base = rank * self.span
        offset = np.clip(at - self.first, 0, self.span - 1)
        lo = np.searchsorted(composite, base, side="left")
        hi = np.searchsorted(composite, base + offset, side="left")
        return np.where(found, running[hi] - running[lo], 0.0)


@dataclass(frozen=True)
class TrainingTallies:
    """The personal features of logged impressions, each at its own exposure time."""

    events: HistoryEvents
    codes: CatalogCodes
    prefix: PrefixTallies

    @classmethod
    def of(
        cls, history: InteractionLog, item_index: Mapping[str, int], window_s: int
    ) -> TrainingTallies:
        codes = catalog_codes(history)
        events = HistoryEvents.of(history, item_index)
        return cls(events, codes, PrefixTallies.of(events, codes, window_s))

    def columns(
        self,
        unit_ids: npt.NDArray[np.str_],
        items: npt.NDArray[np.int64],
        timestamps: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float32]:
        """(rows, len(PERSONAL_COLUMNS)) of (user, item) rows at their times."""
        users = self.events.user_index(unit_ids)
        lookup = self.prefix.lookup_at(timestamps.astype(np.int64))
        return personal_columns(lookup, self.codes, users, items)

    def at_cutoff(self, cutoff: int) -> ServingTallies:
        """The serving state: every tally of the events before `cutoff`."""
        end = EndTallies.of(self.events, self.codes, cutoff, self.prefix.window_s)
        return ServingTallies(self.events.user_ids, self.codes, end)


@dataclass(frozen=True)
class ServingTallies:
    """The personal features of a request's candidates, from the tallies at the cut-off."""

    user_ids: npt.NDArray[np.str_]
    codes: CatalogCodes
    end: EndTallies

    def user_index(self, unit_id: str) -> int:
        """The user's index in the tallies; -1 for a user without history."""
        where = int(np.searchsorted(self.user_ids, unit_id))
        if where < self.user_ids.size and self.user_ids[where] == unit_id:
            return where
        return -1

    def columns(self, unit_id: str, items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """(candidates, len(PERSONAL_COLUMNS)) of one user's candidates."""
        users = np.full(items.shape, self.user_index(unit_id), dtype=np.int64)
        return personal_columns(self.end.lookup, self.codes, users, items)


def catalog_codes(history: InteractionLog) -> CatalogCodes:
    """The catalogue codes of a history's catalogue."""
    catalog = history.catalog
    return CatalogCodes.of(catalog.categories, catalog.brands, catalog.prices)
