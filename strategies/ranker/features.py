"""The ranker's feature vectors: item, user, scene, user x item, source and position.

One encoder serves training and scoring so the two cannot drift: item rows come from the
catalogue (category, brand, log price), user rows from profiles and behaviour counts up to
a time, scenes are one-hot, the user x item columns from `strategies.ranker.personal`, the
retrieval source is one-hot, and position is log1p(position), fixed at 0 when serving.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from abplatform.domain import Catalog, InteractionLog
from strategies.ranker.personal import PERSONAL_COLUMNS, TrainingTallies

MAX_BRANDS = 30
"""Brands beyond the most frequent ones share one column."""
MAX_PROFILE_VALUES = 20
"""Values of a text profile feature beyond the most frequent share one column."""
SERVING_POSITION = 0
"""Position every candidate is scored at: the model ranks relevance, not slot."""


def item_matrix(catalog: Catalog) -> npt.NDArray[np.float32]:
    """(items, d_item): one-hot category, one-hot brand (top `MAX_BRANDS` + other), z-scored
    log price."""
    n = len(catalog)
    categories, cat_codes = np.unique(catalog.categories.astype(str), return_inverse=True)
    brands, brand_codes, counts = np.unique(
        catalog.brands.astype(str), return_inverse=True, return_counts=True
    )
    kept = np.argsort(-counts, kind="stable")[:MAX_BRANDS]
    brand_column = np.full(brands.size, MAX_BRANDS if brands.size > MAX_BRANDS else brands.size)
    brand_column[kept] = np.arange(kept.size)
    n_brand_cols = min(brands.size, MAX_BRANDS) + (1 if brands.size > MAX_BRANDS else 0)
    onehot_cat = np.zeros((n, categories.size), dtype=np.float32)
    onehot_cat[np.arange(n), cat_codes] = 1.0
    onehot_brand = np.zeros((n, n_brand_cols), dtype=np.float32)
    onehot_brand[np.arange(n), brand_column[brand_codes]] = 1.0
    prices = catalog.prices.astype(np.float64)
    fill = float(np.nanmedian(prices)) if np.isfinite(prices).any() else 1.0
    log_price = np.log1p(np.maximum(np.nan_to_num(prices, nan=fill), 0.0))
    spread = float(log_price.std()) or 1.0
    price = ((log_price - log_price.mean()) / spread).astype(np.float32)[:, None]
    return np.hstack([onehot_cat, onehot_brand, price]).astype(np.float32)


@dataclass(frozen=True)
class ProfileEncoding:
    """How a user profile becomes columns: numeric keys as-is, text keys one-hot."""

    numeric: tuple[str, ...]
    text: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def width(self) -> int:
        """Columns: numeric keys, then each text key's values plus one for 'other'."""
        return len(self.numeric) + sum(len(values) + 1 for _, values in self.text)

    def encode(self, profile: Mapping[str, Any]) -> npt.NDArray[np.float32]:
        """The profile's columns (missing numeric keys are 0, unknown text values 'other')."""
        out = np.zeros(self.width, dtype=np.float32)
        for i, key in enumerate(self.numeric):
            value = profile.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[i] = float(value) if np.isfinite(value) else 0.0
        offset = len(self.numeric)
        for key, values in self.text:
            value = profile.get(key)
            where = values.index(str(value)) if str(value) in values else len(values)
            out[offset + where] = 1.0
            offset += len(values) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        """The encoding as manifest JSON."""
        return {"numeric": list(self.numeric), "text": {k: list(v) for k, v in self.text}}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ProfileEncoding:
        """The encoding `to_json` wrote."""
        text = doc.get("text", {})
        return cls(tuple(doc.get("numeric", [])), tuple((k, tuple(v)) for k, v in text.items()))


def profile_encoding(profiles: Mapping[str, Mapping[str, Any]]) -> ProfileEncoding:
    """Numeric and text profile keys seen in `profiles` (text values capped by frequency)."""
    numeric: set[str] = set()
    text: dict[str, dict[str, int]] = {}
    for profile in profiles.values():
        for key, value in profile.items():
            if isinstance(value, bool | str):
                counts = text.setdefault(key, {})
                counts[str(value)] = counts.get(str(value), 0) + 1
            elif isinstance(value, int | float):
                numeric.add(key)
    numeric -= set(text)
    return ProfileEncoding(
        tuple(sorted(numeric)),
        tuple(
            (key, tuple(sorted(sorted(c, key=lambda v: -c[v])[:MAX_PROFILE_VALUES])))
            for key, c in sorted(text.items())
        ),
    )


@dataclass(frozen=True)
class BehaviourCounts:
    """Each user's click and purchase times in the history, to count them before a time."""

    users: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]

    @classmethod
    def of(cls, history: InteractionLog) -> BehaviourCounts:
        """Sorted click and purchase timestamps by user."""
        users: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        types = history.event_types.astype(str)
        for kind_index, kind in enumerate(("click", "purchase")):
            rows = types == kind
            uids = history.user_ids[rows].astype(str)
            stamps = history.timestamps[rows]
            order = np.lexsort((stamps, uids))
            uids, stamps = uids[order], stamps[order]
            names, starts = np.unique(uids, return_index=True)
            bounds = np.append(starts, uids.size)
            for j, name in enumerate(names.tolist()):
                pair = users.get(name, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
                times = stamps[bounds[j] : bounds[j + 1]].astype(np.int64)
                users[name] = (times, pair[1]) if kind_index == 0 else (pair[0], times)
        return cls(users)

    def before(self, user: str, timestamp: int) -> npt.NDArray[np.float32]:
        """log1p of the user's clicks and purchases strictly before `timestamp`."""
        pair = self.users.get(user)
        if pair is None:
            return np.zeros(2, dtype=np.float32)
        counts = [np.searchsorted(times, timestamp, side="left") for times in pair]
        return np.log1p(np.array(counts, dtype=np.float32))


@dataclass(frozen=True)
class FeatureSpace:
    """The column layout: item, user (profile + 2 counts + known flag), scene, personal
    (user x item, `PERSONAL_COLUMNS`, when `personal`), retrieval source, position."""

    items: npt.NDArray[np.float32]
    profile: ProfileEncoding
    scenes: tuple[str, ...]
    sources: tuple[str, ...] = ()
    personal: bool = False

    @property
    def user_width(self) -> int:
        return self.profile.width + 3

    @property
    def personal_width(self) -> int:
        return len(PERSONAL_COLUMNS) if self.personal else 0

    @property
    def width(self) -> int:
        """Columns of a row: item, user, scenes plus 'other', personal, sources, position."""
        return (
            int(self.items.shape[1])
            + self.user_width
            + len(self.scenes)
            + 1
            + self.personal_width
            + len(self.sources)
            + 1
        )

    def user_row(
        self, profile: Mapping[str, Any] | None, counts: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """A user's columns; an unknown user (no profile) has the known flag 0."""
        known = np.array([0.0 if profile is None else 1.0], dtype=np.float32)
        return np.concatenate([self.profile.encode(profile or {}), counts, known])

    def scene_row(self, scene: str | None) -> npt.NDArray[np.float32]:
        """One-hot scene, unknown scenes in the last column."""
        out = np.zeros(len(self.scenes) + 1, dtype=np.float32)
        name = scene or ""
        out[self.scenes.index(name) if name in self.scenes else len(self.scenes)] = 1.0
        return out

    def source_columns(
        self, labels: Sequence[str | None] | None, n: int
    ) -> npt.NDArray[np.float32]:
        """(n, sources) one-hot retrieval source; a source the log never showed (or none)
        is all zeros."""
        out = np.zeros((n, len(self.sources)), dtype=np.float32)
        if labels is None or not self.sources:
            return out
        for j, name in enumerate(self.sources):
            out[:, j] = np.asarray([label == name for label in labels], dtype=bool)
        return out

    def rows(
        self,
        items: npt.NDArray[np.int64],
        user: npt.NDArray[np.float32],
        scene: npt.NDArray[np.float32],
        positions: npt.NDArray[np.int64] | int,
        personal: npt.NDArray[np.float32] | None = None,
        sources: npt.NDArray[np.float32] | None = None,
    ) -> npt.NDArray[np.float32]:
        """(n, width): catalogue indices `items` for one user and scene at `positions`, with
        their personal and source columns (None: zeros)."""
        n = items.shape[0]
        position = np.broadcast_to(np.log1p(np.asarray(positions, dtype=np.float32)), (n,))
        if personal is None or not self.personal:
            personal = np.zeros((n, self.personal_width), dtype=np.float32)
        if sources is None:
            sources = np.zeros((n, len(self.sources)), dtype=np.float32)
        return np.hstack(
            [
                self.items[items],
                np.broadcast_to(user, (n, user.size)),
                np.broadcast_to(scene, (n, scene.size)),
                personal,
                sources,
                position[:, None],
            ]
        ).astype(np.float32)


def training_matrix(
    space: FeatureSpace,
    impressions: Any,
    history: InteractionLog,
    item_index: Mapping[str, int],
    *,
    with_position: bool,
    tallies: TrainingTallies | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """(rows, width) features of the impressions whose item is in the catalogue, and which
    impressions those are; counts and personal features use only the history strictly
    before each exposure."""
    counts = BehaviourCounts.of(history)
    known = np.array([item in item_index for item in impressions.item_ids.tolist()], dtype=bool)
    out = np.zeros((int(known.sum()), space.width), dtype=np.float32)
    rows = np.flatnonzero(known)
    all_items = np.array([item_index[i] for i in impressions.item_ids[rows].tolist()], np.int64)
    personal = None
    if space.personal and tallies is not None:
        personal = tallies.columns(
            impressions.unit_ids[rows], all_items, impressions.timestamps[rows]
        )
    sources = space.source_columns(impressions.sources[rows].tolist(), rows.size)
    cursor = 0
    exposure_ids = impressions.exposure_ids[rows]
    starts = np.flatnonzero(np.r_[True, exposure_ids[1:] != exposure_ids[:-1]])
    bounds = np.append(starts, rows.size)
    for a, b in itertools.pairwise(bounds.tolist()):
        chunk = rows[a:b]
        first = chunk[0]
        user_id = str(impressions.unit_ids[first])
        user = space.user_row(
            history.user_features.get(user_id),
            counts.before(user_id, int(impressions.timestamps[first])),
        )
        scene = space.scene_row(str(impressions.scenes[first]))
        positions = impressions.positions[chunk] if with_position else SERVING_POSITION
        out[cursor : cursor + chunk.size] = space.rows(
            all_items[a:b],
            user,
            scene,
            positions,
            None if personal is None else personal[a:b],
            sources[a:b],
        )
        cursor += chunk.size
    return out, known


def varying_sources(labels: npt.NDArray[np.str_]) -> tuple[str, ...]:
    """The retrieval sources worth a column: named, and neither absent from nor on every
    logged impression (a constant column would shift every candidate of another source)."""
    names, counts = np.unique(labels.astype(str), return_counts=True)
    return tuple(
        str(name)
        for name, c in zip(names.tolist(), counts.tolist(), strict=True)
        if name and 0 < c < labels.size
    )


def feature_space(
    catalog: Catalog,
    profiles: Mapping[str, Mapping[str, Any]],
    scenes: Sequence[str],
    sources: Sequence[str] = (),
    *,
    personal: bool = False,
) -> FeatureSpace:
    """The layout for a catalogue, its users' profiles, the scenes and retrieval sources
    seen in the log."""
    return FeatureSpace(
        item_matrix(catalog),
        profile_encoding(profiles),
        tuple(sorted(set(scenes) - {""})),
        tuple(sources),
        personal,
    )
