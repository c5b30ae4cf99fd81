"""Turn an interaction log into two-tower inputs with NumPy: sequences, examples, features.

Conventions shared with the TensorFlow model and the NumPy tower: an item *token* is its
dense catalogue index + 1, token 0 pads a short history; a user *row* is its position in
the user vocabulary + 1, row 0 is the out-of-vocabulary user.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from abplatform.domain import Catalog, InteractionLog
from strategies.evaluation import POSITIVE_EVENTS, item_indices

Int64Array = npt.NDArray[np.int64]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PositiveSequences:
    """Each user's clicked or bought items in time order, as compressed rows.

    A purchase right after a click on the same item (or any run of consecutive events on
    one item) is one step of the sequence whose weight is the largest of the run: a click
    weighs 1, a purchase `purchase_weight`. So a bought item is one example, weighted, and
    does not fill two history slots or teach the model to "predict" the item just clicked.
    """

    user_ids: npt.NDArray[np.str_]  # sorted; row i + 1 in the user vocabulary
    indptr: Int64Array  # (users + 1,)
    items: Int64Array  # dense catalogue indices
    weights: npt.NDArray[np.float64]
    purchased_indptr: Int64Array
    purchased_items: Int64Array  # sorted, distinct per user

    @property
    def n_users(self) -> int:
        """Number of users with at least one positive event."""
        return int(self.user_ids.shape[0])

    def __len__(self) -> int:
        return int(self.items.shape[0])


def positive_sequences(log: InteractionLog, purchase_weight: float) -> PositiveSequences:
    """Group a log's clicks and purchases of catalogue items into per-user sequences."""
    items = item_indices(log)
    positive = np.isin(log.event_types, POSITIVE_EVENTS) & (items >= 0)
    rows = np.flatnonzero(positive)
    users, codes = np.unique(log.user_ids[rows].astype(str), return_inverse=True)
    order = np.lexsort((rows, log.timestamps[rows], codes))
    rows, codes = rows[order], codes[order].astype(np.int64)
    seq_items = items[rows]
    bought = log.event_types[rows] == "purchase"
    weight = np.where(bought, purchase_weight, 1.0)
    repeat = np.zeros(rows.size, dtype=bool)
    repeat[1:] = (codes[1:] == codes[:-1]) & (seq_items[1:] == seq_items[:-1])
    step = np.cumsum(~repeat) - 1
    n_steps = int(step[-1]) + 1 if step.size else 0
    step_weight = np.zeros(n_steps, dtype=np.float64)
    np.maximum.at(step_weight, step, weight)
    heads = ~repeat
    counts = np.bincount(codes[heads], minlength=users.size)
    pkeys = np.unique(codes[bought] * max(len(log.catalog), 1) + seq_items[bought])
    powners = pkeys // max(len(log.catalog), 1)
    return PositiveSequences(
        user_ids=users.astype(str),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=seq_items[heads].astype(np.int64),
        weights=step_weight,
        purchased_indptr=np.searchsorted(powners, np.arange(users.size + 1)).astype(np.int64),
        purchased_items=(pkeys % max(len(log.catalog), 1)).astype(np.int64),
    )


def recent_history(
    seq: PositiveSequences, ends: Int64Array, users: Int64Array, length: int
) -> npt.NDArray[np.int32]:
    """Item tokens of the `length` steps before position `ends[j]` of user `users[j]`.

    Most recent first; 0 where the user has fewer steps. `ends` are absolute positions in
    `seq.items` (exclusive), `users` the sequence rows they belong to.
    """
    out = np.zeros((ends.size, length), dtype=np.int32)
    starts = seq.indptr[users]
    for back in range(length):
        position = ends - 1 - back
        valid = position >= starts
        out[valid, back] = seq.items[position[valid]] + 1
    return out


def other_history(
    seq: PositiveSequences, positions: Int64Array, users: Int64Array, length: int
) -> npt.NDArray[np.int32]:
    """Item tokens of user `users[j]`'s `length` latest steps other than step `positions[j]`.

    Most recent first, 0 where the user has fewer other steps: what serving embeds the user
    from (their latest items), less the example's own item, whether before or after it.
    """
    out = np.zeros((positions.size, length), dtype=np.int32)
    starts, ends = seq.indptr[users], seq.indptr[users + 1]
    for back in range(length):
        position = ends - 1 - back
        position = np.where(position <= positions, position - 1, position)
        valid = position >= starts
        out[valid, back] = seq.items[position[valid]] + 1
    return out


def last_history(seq: PositiveSequences, length: int) -> npt.NDArray[np.int32]:
    """Every user's `length` most recent item tokens (what serving embeds them from)."""
    users = np.arange(seq.n_users, dtype=np.int64)
    return recent_history(seq, seq.indptr[1:], users, length)


@dataclass(frozen=True)
class TrainingExamples:
    """(user, history before the interaction, item) examples with loss weights."""

    user_ids: npt.NDArray[np.str_]
    history: npt.NDArray[np.int32]  # (n, history_length) item tokens
    items: npt.NDArray[np.int32]  # item tokens
    weights: Float32Array
    sampling_probability: Float32Array  # of each example's item among all examples
    feature_codes: npt.NDArray[np.int32]  # (n, categorical profile features)
    numeric: Float32Array  # (n, numeric profile features)

    def __len__(self) -> int:
        return int(self.items.shape[0])


def training_examples(
    seq: PositiveSequences,
    history_length: int,
    profiles: tuple[npt.NDArray[np.int32], Float32Array] | None = None,
    context: str = "before",
) -> TrainingExamples:
    """One example per sequence step; its history is the user's steps before it (`context`
    ``before``: next-item prediction) or their latest other steps (``others``, `other_history`).

    `profiles` are the encoded profile features of the sequence's users (row i = user i).
    The logQ correction needs each candidate's probability of appearing in a batch: with
    uniform shuffling that is proportional to the item's share of the examples.
    """
    users = np.repeat(np.arange(seq.n_users, dtype=np.int64), np.diff(seq.indptr))
    ends = np.arange(len(seq), dtype=np.int64)
    counts = np.bincount(seq.items, minlength=int(seq.items.max()) + 1 if len(seq) else 0)
    frequency = counts / max(len(seq), 1)
    if profiles is None:
        profiles = (
            np.zeros((seq.n_users, 0), dtype=np.int32),
            np.zeros((seq.n_users, 0), dtype=np.float32),
        )
    return TrainingExamples(
        user_ids=seq.user_ids[users],
        history=(
            other_history(seq, ends, users, history_length)
            if context == "others"
            else recent_history(seq, ends, users, history_length)
        ),
        items=(seq.items + 1).astype(np.int32),
        weights=seq.weights.astype(np.float32),
        sampling_probability=frequency[seq.items].astype(np.float32),
        feature_codes=profiles[0][users],
        numeric=profiles[1][users],
    )


MAX_TAGS_PER_ITEM = 32
"""An item's labels beyond this many (in catalogue order) are ignored by the towers."""


@dataclass(frozen=True)
class ItemFeatures:
    """Catalogue side features indexed by item token (row 0 is the padding token).

    Tags (``Catalog.tags``, labels separated by ``|``) are a bag of labels: `tag_codes` holds
    each item's label codes (1-based, 0 pads), and the towers average the labels'
    embeddings. A catalogue without tags has no label column (``tag_codes.shape[1] == 0``);
    one with only ids has a single (empty) category and brand, so only the id embedding and
    the price flag carry information.
    """

    categories: list[str]
    brands: list[str]
    category_codes: npt.NDArray[np.int32]  # (items + 1,)
    brand_codes: npt.NDArray[np.int32]
    price: Float32Array  # (items + 1, 2): standardised log(1 + price), price missing flag
    tags: list[str] = field(default_factory=list)
    tag_codes: npt.NDArray[np.int32] = field(
        default_factory=lambda: np.zeros((1, 0), dtype=np.int32)
    )  # (items + 1, labels per item), code i + 1 is tags[i], 0 pads

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> ItemFeatures:
        """Encode a catalogue's categories, brands, prices and tags."""
        categories, category_codes = np.unique(catalog.categories.astype(str), return_inverse=True)
        brands, brand_codes = np.unique(catalog.brands.astype(str), return_inverse=True)
        prices = catalog.prices.astype(np.float64)
        missing = ~np.isfinite(prices) | (prices < 0)
        log_price = np.log1p(np.where(missing, 0.0, prices))
        known = log_price[~missing]
        mean = float(known.mean()) if known.size else 0.0
        std = float(known.std()) if known.size > 1 else 1.0
        z = np.where(missing, 0.0, (log_price - mean) / (std if std > 0 else 1.0))
        price = np.zeros((len(catalog) + 1, 2), dtype=np.float32)
        price[1:, 0] = z
        price[1:, 1] = missing
        pad = np.zeros(1, dtype=np.int32)
        tags, tag_codes = encode_tags(catalog)
        return cls(
            categories=[str(c) for c in categories.tolist()],
            brands=[str(b) for b in brands.tolist()],
            category_codes=np.concatenate([pad, category_codes.astype(np.int32)]),
            brand_codes=np.concatenate([pad, brand_codes.astype(np.int32)]),
            price=price,
            tags=tags,
            tag_codes=tag_codes,
        )


def split_tags(value: str) -> list[str]:
    """The distinct labels of one ``|``-separated tags value, in order, blanks dropped."""
    labels = (label.strip() for label in value.split("|"))
    return list(dict.fromkeys(label for label in labels if label))[:MAX_TAGS_PER_ITEM]


def encode_tags(catalog: Catalog) -> tuple[list[str], npt.NDArray[np.int32]]:
    """The sorted label vocabulary and the (items + 1, width) label codes of every item token."""
    if catalog.tags is None:
        return [], np.zeros((len(catalog) + 1, 0), dtype=np.int32)
    per_item = [split_tags(str(value)) for value in catalog.tags.tolist()]
    vocabulary = sorted({label for labels in per_item for label in labels})
    code = {label: i + 1 for i, label in enumerate(vocabulary)}
    width = max((len(labels) for labels in per_item), default=0)
    codes = np.zeros((len(catalog) + 1, width), dtype=np.int32)
    for row, labels in enumerate(per_item, start=1):
        codes[row, : len(labels)] = [code[label] for label in labels]
    return vocabulary, codes


@dataclass(frozen=True)
class UserFeatureEncoder:
    """Profile features of users: categorical ones by vocabulary, numeric ones standardised.

    A feature is categorical if any user's value is a string or a bool, numeric otherwise.
    Code 0 of a categorical feature is "missing or unseen"; a missing numeric value is 0
    (the mean). With no profile features both lists are empty and the towers skip them.
    """

    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()
    numeric: tuple[tuple[str, float, float], ...] = ()

    @classmethod
    def fit(cls, features: Mapping[str, Mapping[str, Any]]) -> UserFeatureEncoder:
        """Learn vocabularies and means/standard deviations from `user_features`."""
        names: dict[str, bool] = {}
        for profile in features.values():
            for name, value in profile.items():
                if value is None:
                    names.setdefault(name, False)
                    continue
                categorical = isinstance(value, str | bool) or not isinstance(value, int | float)
                names[name] = names.get(name, False) or categorical
        categorical_features = []
        numeric_features = []
        for name in sorted(names):
            values: list[Any] = [p[name] for p in features.values() if p.get(name) is not None]
            if names[name]:
                vocabulary = tuple(sorted({str(v) for v in values}))
                categorical_features.append((name, vocabulary))
            else:
                array = np.array([float(v) for v in values], dtype=np.float64)
                array = array[np.isfinite(array)]
                mean = float(array.mean()) if array.size else 0.0
                std = float(array.std()) if array.size > 1 else 1.0
                numeric_features.append((name, mean, std if std > 0 else 1.0))
        return cls(tuple(categorical_features), tuple(numeric_features))

    def transform(
        self, user_ids: Sequence[str], features: Mapping[str, Mapping[str, Any]]
    ) -> tuple[npt.NDArray[np.int32], Float32Array]:
        """(users, categorical) codes and (users, numeric) standardised values."""
        codes = np.zeros((len(user_ids), len(self.categorical)), dtype=np.int32)
        numbers = np.zeros((len(user_ids), len(self.numeric)), dtype=np.float32)
        lookups = [{v: i + 1 for i, v in enumerate(vocab)} for _, vocab in self.categorical]
        for row, user in enumerate(user_ids):
            profile = features.get(user)
            if not profile:
                continue
            for j, (name, _) in enumerate(self.categorical):
                value = profile.get(name)
                if value is not None:
                    codes[row, j] = lookups[j].get(str(value), 0)
            for j, (name, mean, std) in enumerate(self.numeric):
                value = profile.get(name)
                if isinstance(value, int | float) and math.isfinite(float(value)):
                    numbers[row, j] = (float(value) - mean) / std
        return codes, numbers

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description (stored in the artifact manifest)."""
        return {
            "categorical": [{"name": n, "vocabulary": list(v)} for n, v in self.categorical],
            "numeric": [{"name": n, "mean": m, "std": s} for n, m, s in self.numeric],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UserFeatureEncoder:
        """The inverse of `to_json`."""
        return cls(
            tuple((c["name"], tuple(c["vocabulary"])) for c in data.get("categorical", [])),
            tuple((n["name"], float(n["mean"]), float(n["std"])) for n in data.get("numeric", [])),
        )


@dataclass(frozen=True)
class UserInputs:
    """What the user tower reads, one row per user."""

    user_ids: npt.NDArray[np.str_]
    history: npt.NDArray[np.int32]
    feature_codes: npt.NDArray[np.int32]
    numeric: Float32Array

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def take(self, rows: Int64Array) -> UserInputs:
        """The inputs of a subset of users."""
        return UserInputs(
            self.user_ids[rows], self.history[rows], self.feature_codes[rows], self.numeric[rows]
        )


def user_inputs(
    sequences: PositiveSequences,
    user_ids: npt.NDArray[np.str_],
    encoder: UserFeatureEncoder,
    features: Mapping[str, Mapping[str, Any]],
    length: int,
) -> UserInputs:
    """Tower inputs of `user_ids` (sorted or not) from their latest items in `sequences`.

    Users without a sequence get an empty history; `features` are the log's profiles.
    """
    latest = last_history(sequences, length)
    rows = np.searchsorted(sequences.user_ids, user_ids)
    rows = np.minimum(rows, max(sequences.n_users - 1, 0))
    found = (
        sequences.user_ids[rows] == user_ids
        if sequences.n_users
        else np.zeros(len(user_ids), dtype=bool)
    )
    recent = np.zeros((len(user_ids), length), dtype=np.int32)
    recent[found] = latest[rows[found]]
    codes, numbers = encoder.transform(user_ids.tolist(), features)
    return UserInputs(user_ids.astype(str), recent, codes, numbers)


def purchases_by_row(
    sequences: PositiveSequences, user_ids: npt.NDArray[np.str_]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The sequences' purchases re-indexed to the rows of `user_ids` (a sorted superset)."""
    counts = np.zeros(len(user_ids), dtype=np.int64)
    rows = np.searchsorted(user_ids, sequences.user_ids)
    counts[rows] = np.diff(sequences.purchased_indptr)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, sequences.purchased_items.astype(np.int64)
