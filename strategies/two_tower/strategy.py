"""The two-tower strategy: trained with TensorFlow Recommenders, served with NumPy."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Unpack

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from abplatform.domain import InteractionLog, RecRequest, Slate
from abplatform.errors import AbplatformError
from abplatform.registry import strategies
from strategies.base import ArtifactPlace, BaseStrategy, NotFittedError, check_k
from strategies.evaluation import time_split
from strategies.two_tower.artifact import (
    TwoTowerArtifact,
    compressed,
    export_artifact,
    load_artifact,
)
from strategies.two_tower.data import (
    ItemFeatures,
    PositiveSequences,
    UserFeatureEncoder,
    positive_sequences,
    purchases_by_row,
    training_examples,
    user_inputs,
)
from strategies.two_tower.holdout import held_users, random_holdout, time_holdout
from strategies.two_tower.params import TwoTowerParams
from strategies.two_tower.serving import FreshQueries, ItemIndex, quantize, served_offsets

if TYPE_CHECKING:
    from strategies.two_tower.data import TrainingExamples
    from strategies.two_tower.model import TrainedTowers, Validation

log = logging.getLogger(__name__)

MIN_TRAINING_STEPS = 10
"""Below this many click/purchase steps (or with fewer than 2 distinct items) `fit` falls
back to a popularity ranking instead of training a model (see `TwoTowerStrategy.fit`)."""


@strategies.register("two_tower")
class TwoTowerStrategy(BaseStrategy):
    """Two-tower retrieval: a user tower and an item tower meet in one embedding space.

    `fit` trains the towers with TensorFlow Recommenders (imported only then), embeds every
    catalogue item and every known user (from their latest `history_length` items), and keeps
    the result as a `TwoTowerArtifact`. Slates are an exact NumPy top-k over those embeddings;
    `export` writes the artifact and `from_artifact` serves it again without TensorFlow.

    The served space has one axis more than the model: the *popularity axis*. Item vectors
    carry their popularity rank there (a value in (0, 1]); known users' queries carry 0, so
    their scores are the model's cosine similarities. A user about whom nothing is known
    gets the default query, 1 on that axis and 0 elsewhere, and so the popularity ranking
    through the same exact top-k (and exclusions). A user without a stored embedding but
    with context in the request (current item, cart items) is embedded by the NumPy user
    tower from those items with the out-of-vocabulary id row (user-id dropout trains it).
    With `item_bias`, one more axis sits before the popularity axis: items carry
    ``temperature * b_item`` there and every model query a 1 (the default query a 0).

    Features used when the catalogue and profiles have them: item category, brand, price and
    tags (a bag of labels, e.g. genres) in the item tower and, averaged over the user's
    recent items, in the user tower; profile columns (`InteractionLog.user_features`) as
    categorical or numeric inputs of the user tower. A catalogue with ids only trains on
    the ids alone.
    """

    kind = "two_tower"
    Params: ClassVar[type[BaseModel]] = TwoTowerParams
    ONLINE_FEATURES = frozenset({"positive_items", "purchased"})

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, *, seed: int = 0):
        super().__init__(params, seed=seed)
        self._artifact: TwoTowerArtifact | None = None
        self.towers: Any = None
        """The trained Keras towers after `fit` (None after `from_artifact` or a fallback)."""

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, history: InteractionLog) -> None:
        """Train the towers on the clicks and purchases of `history`.

        Each user's clicks and purchases of catalogue items, in time order, form a sequence
        (consecutive events on one item collapse into one step, so a click followed by the
        purchase of the same item is one example). Every step is an example (user, the
        user's latest `history_length` other steps, or with ``example_history: before`` the
        steps before it, item), weighted 1 for a click and `purchase_weight` for a purchase;
        views and other events are not used. A seeded `validation_fraction` of the (user,
        item) pairs is held out to stop training early on hit@50 (`validation_holdout`
        picks other holdouts; with `refit` the towers are then trained again on everything
        for the best epoch count); the stored user embeddings are then computed from each
        user's latest items in the whole history.

        With fewer than `MIN_TRAINING_STEPS` click/purchase steps or fewer than two distinct
        items there is nothing for a retrieval model to learn: the strategy then falls back
        to ranking items by their weighted clicks and purchases (seeded tie-break), logs a
        warning and records the reason as ``manifest["training"]["fallback"]``.
        """
        super().fit(history)
        params: TwoTowerParams = self.params
        self.towers = None
        sequences = positive_sequences(history, params.purchase_weight)
        reason = _too_little(sequences)
        if reason is not None:
            log.warning("two_tower: %s; serving a popularity ranking instead", reason)
            self._artifact = compressed(
                self._fallback(history, sequences, reason), params.embedding_dtype
            )
            return
        encoder = UserFeatureEncoder.fit(history.user_features)
        # Users with clicks or purchases get an id embedding; users known only by their
        # profile are embedded from it with the out-of-vocabulary id row.
        vocabulary = sequences.user_ids.astype(str)
        known = np.union1d(vocabulary, np.array(sorted(history.user_features), dtype=str))
        train_sequences, validation = self._validation_split(history, sequences, encoder)
        if params.validation_holdout == "time":
            # Users first seen after the validation cut never train an id row: the
            # out-of-vocabulary row (trained by id dropout) serves them, not a random one.
            vocabulary = train_sequences.user_ids.astype(str)
        examples, towers = self._train(
            history, train_sequences, vocabulary.tolist(), encoder, params, validation
        )
        chosen_on = towers
        if params.refit and validation is not None and towers.best_epoch is not None:
            # The epoch count was chosen on the holdout; the served model also learns from it.
            examples, towers = self._train(
                history,
                sequences,
                sequences.user_ids.astype(str).tolist(),
                encoder,
                params.model_copy(update={"epochs": towers.best_epoch}),
                None,
            )
        self.towers = towers
        inputs = user_inputs(
            sequences, known.astype(str), encoder, history.user_features, params.history_length
        )
        tower = towers.numpy_user_tower()
        purchased_indptr, purchased_items = purchases_by_row(sequences, known.astype(str))
        popularity = _popularity_axis(sequences, len(history.catalog), self.seed)
        item_matrix = towers.item_embeddings().astype(np.float64)
        user_embeddings = towers.user_embeddings(inputs).astype(np.float64)
        offsets = towers.item_offsets()
        if offsets is not None:
            # The item bias is one more axis: temperature * b_item, and 1 in every query.
            item_matrix = np.column_stack([item_matrix, served_offsets(offsets)])
            user_embeddings = np.column_stack([user_embeddings, np.ones(len(user_embeddings))])
        training = {
            "fallback": None,
            "examples": len(examples),
            "validation_users": 0 if validation is None else len(validation.targets),
            "epochs_run": chosen_on.epochs_run,
            "best_epoch": chosen_on.best_epoch,
            "epochs": chosen_on.epochs,
            "refit_epochs": towers.epochs_run if towers is not chosen_on else None,
            "seconds": round(
                chosen_on.seconds + (towers.seconds if towers is not chosen_on else 0), 3
            ),
        }
        self._artifact = TwoTowerArtifact(
            catalog=history.catalog,
            item_embeddings=quantize(np.column_stack([item_matrix, popularity])),
            user_ids=known.astype(str),
            user_embeddings=quantize(
                _with_popularity(user_embeddings, 0.0)
                if params.cold_popularity_weight == 0
                else _cold_blend(user_embeddings, known, sequences, params.cold_popularity_weight)
            ),
            purchased_indptr=purchased_indptr,
            purchased_items=purchased_items,
            default_embedding=_popularity_query(item_matrix.shape[1]),
            user_tower=tower,
            feature_encoder=encoder,
            manifest=self._manifest(history, sequences, encoder, training),
        )
        self._artifact = compressed(self._artifact, params.embedding_dtype)

    def _train(
        self,
        history: InteractionLog,
        sequences: PositiveSequences,
        vocabulary: list[str],
        encoder: UserFeatureEncoder,
        params: TwoTowerParams,
        validation: Validation | None,
    ) -> tuple[TrainingExamples, TrainedTowers]:
        """The examples of `sequences` and the towers trained on them (TensorFlow)."""
        features = encoder.transform(sequences.user_ids.tolist(), history.user_features)
        examples = training_examples(
            sequences, params.history_length, features, params.example_history
        )
        towers: TrainedTowers = _model().train_two_tower(
            examples,
            ItemFeatures.from_catalog(history.catalog),
            vocabulary,
            [len(vocab) for _, vocab in encoder.categorical],
            params,
            self.seed,
            validation,
        )
        return examples, towers

    def _validation_split(
        self,
        history: InteractionLog,
        sequences: PositiveSequences,
        encoder: UserFeatureEncoder,
    ) -> tuple[PositiveSequences, Any]:
        """The training sequences and the validation set of `validation_holdout`, if any."""
        params: TwoTowerParams = self.params
        if params.validation_fraction == 0 or params.epochs == 1:
            return sequences, None
        if params.validation_holdout == "random":
            train_log, held = random_holdout(history, params.validation_fraction, self.seed)
        elif params.validation_holdout == "time":
            train_log, held = time_holdout(history, params.validation_fraction)
        else:
            train_log, held = time_split(
                history, 1, user_fraction=params.validation_fraction, seed=self.seed
            )
        if len(held) == 0:
            return sequences, None
        train_sequences = positive_sequences(train_log, params.purchase_weight)
        if _too_little(train_sequences) is not None:
            return sequences, None
        validation_type = _model().Validation
        known = np.isin(held.user_ids, train_sequences.user_ids)
        cold_users = params.validation_holdout == "time"
        if not known.all() and not cold_users:  # a random holdout can take all of a user's items
            held = held_users(held, known)
            known = known[known]
        if len(held) == 0:
            return sequences, None
        inputs = user_inputs(
            train_sequences, held.user_ids, encoder, history.user_features, params.history_length
        )
        if cold_users:
            # Users first seen after the cut have no id row in training: the OOV row serves them.
            inputs.user_ids[~known] = ""
        rows = np.searchsorted(train_sequences.user_ids, held.user_ids)
        nothing = np.zeros(0, dtype=np.int64)
        seen = [
            np.unique(
                train_sequences.items[train_sequences.indptr[row] : train_sequences.indptr[row + 1]]
            )
            if is_known
            else nothing
            for row, is_known in zip(rows.tolist(), known.tolist(), strict=True)
        ]
        targets = [held.items_of(i) for i in range(len(held))]
        return train_sequences, validation_type(
            inputs=inputs,
            targets=targets,
            seen=seen,
            pair_weighted=params.validation_holdout != "last",
        )

    def _fallback(
        self, history: InteractionLog, sequences: PositiveSequences, reason: str
    ) -> TwoTowerArtifact:
        """Only the popularity axis: every user's query is the default one."""
        value = _popularity_axis(sequences, len(history.catalog), self.seed)
        users = sequences.user_ids.astype(str)
        purchased_indptr, purchased_items = purchases_by_row(sequences, users)
        return TwoTowerArtifact(
            catalog=history.catalog,
            item_embeddings=quantize(value[:, None]),
            user_ids=users,
            user_embeddings=np.ones((users.size, 1), dtype=np.float32),
            purchased_indptr=purchased_indptr,
            purchased_items=purchased_items,
            default_embedding=_popularity_query(0),
            user_tower=None,
            feature_encoder=UserFeatureEncoder(),
            manifest=self._manifest(history, sequences, UserFeatureEncoder(), {"fallback": reason}),
        )

    def _manifest(
        self,
        history: InteractionLog,
        sequences: PositiveSequences,
        encoder: UserFeatureEncoder,
        training: dict[str, Any],
    ) -> dict[str, Any]:
        stamps = history.timestamps
        return {
            "kind": self.kind,
            "params": self.params.model_dump(mode="json"),
            "seed": self.seed,
            "data": {
                "interactions": len(history),
                "positive_steps": len(sequences),
                "users": sequences.n_users,
                "items": len(history.catalog),
                "start": _iso(int(stamps.min())) if len(history) else None,
                "end": _iso(int(stamps.max())) if len(history) else None,
            },
            "training": training,
            "user_features": encoder.to_json(),
            "metrics": {},
        }

    # -- serving ---------------------------------------------------------------------------

    def item_vectors(self) -> npt.NDArray[np.float64] | None:
        """Learned item embeddings (without the served popularity column) for similarity.

        None when `fit` fell back to popularity: there are no learned embeddings then, and
        similarity-based strategies use catalogue features instead.
        """
        if self.fallback_reason is not None:
            return None
        tower = self.artifact.user_tower
        width = tower.output_dim if tower is not None else self.artifact.dim - 1
        vectors: npt.NDArray[np.float64] = np.asarray(
            self.artifact.item_embeddings[:, :width], dtype=np.float64
        )
        return vectors

    @property
    def artifact(self) -> TwoTowerArtifact:
        """The fitted (or loaded) embeddings and weights."""
        if self._artifact is None:
            raise NotFittedError(
                f"strategy {self.kind!r} is not fitted",
                hint="call fit(history) first, or TwoTowerStrategy.from_artifact(path)",
            )
        return self._artifact

    @property
    def fallback_reason(self) -> str | None:
        """Why `fit` served popularity instead of a model (None when a model was trained)."""
        reason: str | None = self.artifact.manifest.get("training", {}).get("fallback")
        return reason

    def _prepare_serving(self) -> None:
        artifact = self.artifact
        if getattr(self, "_served_artifact", None) is artifact:
            return
        self._item_index = ItemIndex.build(artifact.item_embeddings)
        self._users = artifact.user_embeddings.astype(np.float64)
        self._rows = {user: i for i, user in enumerate(artifact.user_ids.tolist())}
        self._index = artifact.catalog.index()
        self._default = artifact.default_embedding.astype(np.float64)
        self._default_slates: dict[int, Slate] = {}  # by size: every unseen user's slate
        self._fresh = FreshQueries()  # user queries from online features, by their inputs
        self._served_artifact = artifact

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Exact top-k slates from the embeddings; identical to `recommend` one by one."""
        check_k(k)
        _ = self.catalog
        self._prepare_serving()
        params: TwoTowerParams = self.params
        artifact = self.artifact
        if not requests:
            return []
        size = min(k, len(artifact.catalog))
        out: list[Slate | None] = [None] * len(requests)
        searched: list[int] = []
        queries: list[npt.NDArray[np.float64]] = []
        excluded: list[npt.NDArray[np.int64]] | None = [] if params.exclude_purchased else None
        nothing = np.zeros(0, dtype=np.int64)
        fresh: set[int] = set()
        for i, request in enumerate(requests):
            row = self._rows.get(request.unit_id)
            online = self._online_query(request, row)
            if online is not None:
                # Clicks or purchases since the cut-off: the user tower embeds the fresh
                # sequence; online purchases are excluded like the stored ones.
                fresh.add(i)
                searched.append(i)
                queries.append(online[0])
                if excluded is not None:
                    excluded.append(online[1])
                continue
            if row is None and not self._context_items(request):
                # An unseen user without context items: the default query, nothing
                # excluded, so one slate for all of them (computed once per size).
                out[i] = self._default_slates.get(size)
                if out[i] is not None:
                    continue
            searched.append(i)
            if row is None:
                queries.append(self._cold_query(request))
                if excluded is not None:
                    excluded.append(nothing)
            else:
                queries.append(self._users[row])
                if excluded is not None:
                    excluded.append(artifact.purchased(row))
        if searched:
            indices, scores = self._item_index.search(np.stack(queries), size, excluded)
            ids = artifact.catalog.item_ids[indices].tolist()
            for i, row_ids, values in zip(searched, ids, scores.tolist(), strict=True):
                slate = out[i] = Slate(tuple(row_ids), tuple(values))
                request = requests[i]
                if (
                    i not in fresh
                    and request.unit_id not in self._rows
                    and not self._context_items(request)
                ):
                    self._default_slates[size] = slate
        return [slate for slate in out if slate is not None]

    def _context_items(self, request: RecRequest) -> list[str]:
        """The request's catalogue items an unseen user's query is built from."""
        context = [request.current_item, *reversed(request.cart_items)]
        return [item for item in context if item is not None and item in self._index]

    def score_items(
        self, requests: Sequence[RecRequest], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Each request's served query (as in `recommend_batch`) dotted with `items`' embeddings;
        exact (quantised), so batch-independent. Purchased items are scored, not excluded."""
        self._prepare_serving()
        indices = np.asarray(items, dtype=np.int64)
        queries = np.empty((len(requests), self.artifact.dim), dtype=np.float64)
        for i, request in enumerate(requests):
            row = self._rows.get(request.unit_id)
            online = self._online_query(request, row)
            if online is not None:
                queries[i] = online[0]
            else:
                queries[i] = self._cold_query(request) if row is None else self._users[row]
        vectors = self._item_index.items[indices]  # (requests, n, D)
        scores: npt.NDArray[np.float64] = np.einsum("bnd,bd->bn", vectors, queries)
        return scores

    def _online_query(
        self, request: RecRequest, row: int | None
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]] | None:
        """Query and exclusions from online clicks or purchases since the cut-off, or None."""
        features = request.features
        tower = self.artifact.user_tower
        if features is None or tower is None or features.online_positives == 0:
            return None
        key = self._fresh.key(request.unit_id, features)
        if (known := self._fresh.get(key)) is not None:
            return known
        query = self._served_query(
            self.embed_history(features.positive_items, request.unit_id, features.profile)
        )
        stored = self.artifact.purchased(row) if row is not None else np.zeros(0, np.int64)
        bought = [self._index[i] for i in features.purchased if i in self._index]
        exclude = np.union1d(stored, np.asarray(bought, dtype=np.int64)).astype(np.int64)
        return self._fresh.put(key, (query, exclude))

    def _served_query(self, embedded: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """A (1, D) user tower embedding as a served query (item-bias and popularity axes)."""
        offset_axes = self.artifact.dim - 1 - embedded.shape[1]  # 1 with an item bias
        query = _with_popularity(
            np.column_stack([embedded, np.ones((1, offset_axes))]) if offset_axes else embedded,
            0.0,
        )
        served: npt.NDArray[np.float64] = quantize(query)[0].astype(np.float64)
        return served

    def _cold_query(self, request: RecRequest) -> npt.NDArray[np.float64]:
        """An unseen user's query from the request's items (current item first) or the default."""
        items = self._context_items(request)
        if not items or self.artifact.user_tower is None:
            default: npt.NDArray[np.float64] = self._default
            return default
        # One user at a time, so the query does not depend on the batch it came in.
        return self._served_query(self.embed_history(items))

    def embed_history(
        self,
        item_ids: Sequence[str],
        user_id: str | None = None,
        features: Mapping[str, Any] | None = None,
    ) -> npt.NDArray[np.float64]:
        """The NumPy user tower's (1, D) embedding of a user from their items, newest first.

        D is the model's dimension; served queries append a 0 for the popularity axis.

        Parameters
        ----------
        item_ids
            The user's recent items, most recent first (unknown ids are skipped; only the
            first `history_length` are used).
        user_id
            A known user's id uses their id embedding; None or an unknown id uses the
            out-of-vocabulary row.
        features
            The user's profile (as in `InteractionLog.user_features`); missing ones are
            encoded as unknown.
        """
        artifact = self.artifact
        tower = artifact.user_tower
        if tower is None:
            raise AbplatformError(
                "this two-tower strategy fell back to popularity and has no user tower",
                hint=f"fit it on more history (reason: {self.fallback_reason})",
            )
        self._prepare_serving()
        length = int(artifact.manifest["params"]["history_length"])
        tokens = [self._index[i] + 1 for i in item_ids if i in self._index][:length]
        history = np.zeros((1, length), dtype=np.int32)
        history[0, : len(tokens)] = tokens
        codes, numbers = artifact.feature_encoder.transform([""], {"": features or {}})
        row = np.array([tower.row_of(user_id)], dtype=np.int64)
        return tower.embed(row, history, codes, numbers)

    # -- artifacts ---------------------------------------------------------------------------

    def export(self, root: str | Path, **place: Unpack[ArtifactPlace]) -> Path:
        """Write the fitted artifact as a new version under ``root/experiment/variant``
        (`ArtifactPlace`: experiment, variant and the metrics to record)."""
        return export_artifact(self.artifact, root, **place)

    @classmethod
    def from_artifact(cls, path: str | Path) -> TwoTowerStrategy:
        """A strategy serving an exported artifact (a version or variant directory), no TF."""
        artifact = load_artifact(path)
        manifest = artifact.manifest
        strategy = cls(manifest.get("params", {}), seed=int(manifest.get("seed", 0)))
        strategy._catalog = artifact.catalog
        strategy._artifact = artifact
        return strategy


def _model() -> Any:
    """The TensorFlow module, imported on first use, with a clear error if TF is missing."""
    try:
        from strategies.two_tower import model
    except ImportError as exc:
        raise AbplatformError(
            f"the two_tower strategy needs TensorFlow to train ({exc})",
            hint="install tensorflow, tf-keras and tensorflow-recommenders "
            "(pinned in requirements.lock); serving an exported artifact does not need them",
        ) from exc
    return model


def _popularity_axis(
    sequences: PositiveSequences, n_items: int, seed: int
) -> npt.NDArray[np.float64]:
    """Each item's popularity rank as a value in (0, 1]: 1 for the most clicked and bought.

    Steps weigh as in training (a purchase `purchase_weight`); ties break by a seeded shuffle.
    """
    counts = np.bincount(sequences.items, weights=sequences.weights, minlength=n_items)
    jitter = np.random.default_rng(seed).permutation(n_items)
    order = np.lexsort((jitter, -counts))
    value = np.empty(n_items, dtype=np.float64)
    value[order] = (n_items - np.arange(n_items)) / n_items
    return value


def _with_popularity(queries: npt.ArrayLike, weight: float) -> npt.NDArray[np.float64]:
    """Queries of the model's space extended by the popularity axis with `weight`."""
    array = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    return np.column_stack([array, np.full(array.shape[0], weight)])


def _cold_blend(
    queries: npt.NDArray[np.float64],
    users: npt.NDArray[np.str_],
    sequences: PositiveSequences,
    weight: float,
) -> npt.NDArray[np.float64]:
    """Queries with `weight` on the popularity axis for users without any sequence."""
    blended = _with_popularity(queries, 0.0)
    blended[~np.isin(users, sequences.user_ids), -1] = weight
    return blended


def _popularity_query(model_dim: int) -> npt.NDArray[np.float32]:
    """The default query: zero on the model's axes (and item-bias axis), one on popularity."""
    query = np.zeros(model_dim + 1, dtype=np.float32)
    query[-1] = 1.0
    return query


def _too_little(sequences: PositiveSequences) -> str | None:
    """Why a history is too small to train on, or None."""
    if len(sequences) < MIN_TRAINING_STEPS:
        return (
            f"the history has {len(sequences)} click/purchase steps on catalogue items "
            f"(at least {MIN_TRAINING_STEPS} are needed to train)"
        )
    if np.unique(sequences.items).size < 2:
        return "the history's clicks and purchases are all on one item"
    return None


def _iso(seconds: int) -> str:
    return str(np.datetime64(seconds, "s")) + "Z"
