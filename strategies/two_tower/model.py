"""The TensorFlow Recommenders two-tower model and its training: the only module importing TF.

Import it lazily (inside `fit`): `import strategies.two_tower` and serving stay TF-free.
"""

from __future__ import annotations

import os

# TFRS is written against Keras 2; tf.keras resolves to tf_keras only with this set before
# TensorFlow first resolves tf.keras.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf
import tensorflow_recommenders as tfrs

from abplatform.errors import AbplatformError
from strategies.two_tower.data import (
    ItemFeatures,
    TrainingExamples,
    UserInputs,
)
from strategies.two_tower.numpy_tower import UserTowerWeights
from strategies.two_tower.params import TwoTowerParams
from strategies.two_tower.serving import ItemIndex, quantize, served_offsets

if not tf.keras.__name__.startswith("tf_keras"):
    raise AbplatformError(
        f"tf.keras is {tf.keras.__name__}, but TensorFlow Recommenders needs Keras 2 (tf_keras)",
        hint="TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set; set it in the "
        "environment, or import strategies.two_tower.model before anything touches tf.keras",
    )

keras: Any = tf.keras
EMBED_BATCH = 8192
VALIDATION_K = 50


def side_dim(embedding_dim: int) -> int:
    """Width of the category, brand and profile-feature embeddings."""
    return max(4, embedding_dim // 2)


class UserTower(keras.Model):  # type: ignore[misc]
    """Query tower: user id (out-of-vocabulary row for unseen ids), behaviour sequence, profile."""

    def __init__(
        self,
        vocabulary: Sequence[str],
        item_tables: ItemTables,
        feature_sizes: Sequence[int],
        params: TwoTowerParams,
        seed: int,
    ) -> None:
        super().__init__(name="user_tower")
        regulariser = keras.regularizers.l2(params.l2) if params.l2 > 0 else None
        self.lookup = keras.layers.StringLookup(
            vocabulary=list(vocabulary), num_oov_indices=1, mask_token=None, name="user_lookup"
        )
        self.user_embedding = keras.layers.Embedding(
            len(vocabulary) + 1,
            params.embedding_dim,
            embeddings_regularizer=regulariser,
            name="user_embedding",
        )
        self.items = item_tables
        # `history_embeddings: own`: the behaviour sequence reads its own id table, not the
        # candidate tower's (as an autoencoder's encoder and decoder weights differ).
        self.history_embedding = (
            keras.layers.Embedding(
                int(item_tables.category_codes.shape[0]),
                params.embedding_dim,
                embeddings_regularizer=regulariser,
                name="history_embedding",
            )
            if params.history_embeddings == "own"
            else None
        )
        self.feature_embeddings = [
            keras.layers.Embedding(size + 1, side_dim(params.embedding_dim), name=f"feature_{j}")
            for j, size in enumerate(feature_sizes)
        ]
        self.hidden = [
            keras.layers.Dense(units, activation="relu", name=f"user_hidden_{i}")
            for i, units in enumerate(params.hidden_units)
        ]
        self.projection = keras.layers.Dense(params.embedding_dim, name="user_projection")
        self.id_dropout = params.user_id_dropout
        self.cold_start_dropout = params.cold_start_dropout
        self.history_dropout = params.history_dropout
        self.rng = tf.random.Generator.from_seed(seed)

    def call(self, inputs: dict[str, Any], training: bool = False) -> Any:
        rows = self.lookup(inputs["user_id"])
        if training and self.id_dropout > 0:
            hide = self.rng.uniform(tf.shape(rows)) < self.id_dropout
            rows = tf.where(hide, tf.zeros_like(rows), rows)
        history = tf.cast(inputs["history"], tf.int32)
        if training and self.history_dropout > 0:
            hidden = self.rng.uniform(tf.shape(history)) < self.history_dropout
            history = tf.where(hidden, tf.zeros_like(history), history)
        if training and self.cold_start_dropout > 0:
            # A user known only by their profile: no id row and no history.
            cold = self.rng.uniform(tf.shape(rows)) < self.cold_start_dropout
            rows = tf.where(cold, tf.zeros_like(rows), rows)
            history = tf.where(cold[:, None], tf.zeros_like(history), history)
        mask = tf.cast(history > 0, tf.float32)[..., None]
        count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        parts = [self.user_embedding(rows)]
        # The behaviour sequence: means of the history items' id, category and brand
        # embeddings, read from the tables the item tower uses.
        pooled_parts = self.items.embed_parts(history, with_ids=self.history_embedding is None)
        if self.history_embedding is not None:
            pooled_parts.insert(0, self.history_embedding(history))
        for pooled in pooled_parts:
            parts.append(tf.reduce_sum(pooled * mask, axis=1) / count)
        for j, embedding in enumerate(self.feature_embeddings):
            parts.append(embedding(inputs["feature_codes"][:, j]))
        if "numeric" in inputs:
            parts.append(inputs["numeric"])
        x = tf.concat(parts, axis=1)
        for layer in self.hidden:
            x = layer(x)
        return tf.math.l2_normalize(self.projection(x), axis=1)


class ItemTables(keras.layers.Layer):  # type: ignore[misc]
    """Item id, category, brand and tag embedding tables, shared by both towers."""

    def __init__(self, features: ItemFeatures, params: TwoTowerParams):
        super().__init__(name="item_tables")
        regulariser = keras.regularizers.l2(params.l2) if params.l2 > 0 else None
        self.category_codes = tf.constant(features.category_codes)
        self.brand_codes = tf.constant(features.brand_codes)
        self.item_embedding = keras.layers.Embedding(
            int(features.category_codes.shape[0]),
            params.embedding_dim,
            embeddings_regularizer=regulariser,
            name="item_embedding",
        )
        self.category_embedding = keras.layers.Embedding(
            len(features.categories), side_dim(params.embedding_dim), name="category_embedding"
        )
        self.brand_embedding = keras.layers.Embedding(
            len(features.brands), side_dim(params.embedding_dim), name="brand_embedding"
        )
        self.tag_codes = tf.constant(features.tag_codes)
        self.tag_embedding = (
            keras.layers.Embedding(
                len(features.tags) + 1, side_dim(params.embedding_dim), name="tag_embedding"
            )
            if features.tags
            else None
        )

    def embed_parts(self, tokens: Any, with_ids: bool = True) -> list[Any]:
        """[id, category, brand(, mean tag)] embeddings of item tokens (any shape); without
        the id embedding if not `with_ids`."""
        parts = [self.item_embedding(tokens)] if with_ids else []
        parts += [
            self.category_embedding(tf.gather(self.category_codes, tokens)),
            self.brand_embedding(tf.gather(self.brand_codes, tokens)),
        ]
        if self.tag_embedding is not None:
            codes = tf.gather(self.tag_codes, tokens)
            mask = tf.cast(codes > 0, tf.float32)[..., None]
            count = tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)
            parts.append(tf.reduce_sum(self.tag_embedding(codes) * mask, axis=-2) / count)
        return parts


class ItemTower(keras.Model):  # type: ignore[misc]
    """Candidate tower: item id, category, brand and standardised log price."""

    def __init__(self, item_tables: ItemTables, features: ItemFeatures, params: TwoTowerParams):
        super().__init__(name="item_tower")
        self.items = item_tables
        self.price = tf.constant(features.price)
        self.hidden = [
            keras.layers.Dense(units, activation="relu", name=f"item_hidden_{i}")
            for i, units in enumerate(params.hidden_units)
        ]
        self.projection = keras.layers.Dense(params.embedding_dim, name="item_projection")

    def call(self, tokens: Any, training: bool = False) -> Any:
        tokens = tf.cast(tokens, tf.int32)
        x = tf.concat([*self.items.embed_parts(tokens), tf.gather(self.price, tokens)], axis=1)
        for layer in self.hidden:
            x = layer(x)
        return tf.math.l2_normalize(self.projection(x), axis=1)


class ItemBias(keras.layers.Layer):  # type: ignore[misc]
    """A learned logit offset per item token, started at the centred log of its frequency."""

    def __init__(self, initial: npt.NDArray[np.float32]):
        super().__init__(name="item_bias")
        self.table = keras.layers.Embedding(
            int(initial.shape[0]),
            1,
            embeddings_initializer=keras.initializers.Constant(initial[:, None]),
            name="item_bias_table",
        )

    def call(self, tokens: Any) -> Any:
        return self.table(tf.cast(tokens, tf.int32))


def initial_item_bias(examples: TrainingExamples, n_items: int) -> npt.NDArray[np.float32]:
    """log(1 + weighted examples of the item), centred on the trained items' mean."""
    counts = np.bincount(examples.items, weights=examples.weights, minlength=n_items + 1)
    logs = np.log1p(counts)
    logs -= logs[1:].mean() if n_items else 0.0
    logs[0] = 0.0
    out: npt.NDArray[np.float32] = logs.astype(np.float32)
    return out


class TwoTowerModel(tfrs.Model):  # type: ignore[misc]
    """Softmax retrieval over in-batch negatives (logQ-corrected) or the whole catalogue.

    With an `item_bias`, a candidate's logit is ``cos(query, item) / temperature + b_item``:
    the candidate vector gets ``temperature * b_item`` as one more component and the query
    a 1 there, so serving stays one dot product.
    """

    def __init__(
        self,
        user_tower: UserTower,
        item_tower: ItemTower,
        temperature: float,
        item_bias: ItemBias | None = None,
        full_softmax_items: int = 0,
    ):
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.item_bias = item_bias
        self.temperature = temperature
        # > 0: the softmax runs over these many catalogue tokens (1..n), not the batch.
        self.full_softmax_items = full_softmax_items
        # The logged "loss" is the last batch's; the mean over the epoch's batches is this one.
        self.epoch_loss = keras.metrics.Mean(name="epoch_loss")
        self.task = tfrs.tasks.Retrieval(
            temperature=temperature,
            remove_accidental_hits=True,
            loss_metrics=[self.epoch_loss],
        )

    def compute_loss(self, features: dict[str, Any], training: bool = False) -> Any:
        if self.full_softmax_items:
            return self._full_softmax_loss(features, training)
        queries = self.user_tower(features, training=training)
        candidates = self.item_tower(features["item"], training=training)
        if self.item_bias is not None:
            bias = self.item_bias(features["item"]) * self.temperature
            candidates = tf.concat([candidates, bias], axis=1)
            queries = tf.concat([queries, tf.ones_like(queries[:, :1])], axis=1)
        return self.task(
            queries,
            candidates,
            sample_weight=features["weight"],
            candidate_sampling_probability=features["sampling_probability"],
            candidate_ids=features["item"],
            compute_metrics=False,
            compute_batch_metrics=False,
        )

    def _full_softmax_loss(self, features: dict[str, Any], training: bool) -> Any:
        """Weighted cross-entropy of the true item among every catalogue item (summed)."""
        queries = self.user_tower(features, training=training)
        tokens = tf.range(1, self.full_softmax_items + 1, dtype=tf.int32)
        candidates = self.item_tower(tokens, training=training)
        logits = tf.matmul(queries, candidates, transpose_b=True) / self.temperature
        if self.item_bias is not None:
            logits += tf.transpose(self.item_bias(tokens))
        labels = tf.cast(features["item"], tf.int32) - 1
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        loss = tf.reduce_sum(losses * tf.cast(features["weight"], tf.float32))
        self.epoch_loss.update_state(loss)
        return loss


@dataclass(frozen=True)
class Validation:
    """Held-out next items of some users, to steer early stopping by recall@K."""

    inputs: UserInputs
    targets: list[npt.NDArray[np.int64]]  # dense item indices per user
    seen: list[npt.NDArray[np.int64]]  # items of the user's training sequence
    # True: score the share of held-out pairs found (hit@K), as a random split weighs them;
    # False: recall@K averaged over users.
    pair_weighted: bool = False


@dataclass
class TrainedTowers:
    """The trained Keras towers and how training went."""

    user_tower: Any
    item_tower: Any
    n_items: int
    item_bias: Any = None
    temperature: float = 1.0
    epochs_run: int = 0
    best_epoch: int | None = None
    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def item_embeddings(self) -> npt.NDArray[np.float32]:
        """(items, D) candidate embeddings in catalogue order."""
        tokens = np.arange(1, self.n_items + 1, dtype=np.int32)
        chunks = [
            self.item_tower(tokens[lo : lo + EMBED_BATCH], training=False).numpy()
            for lo in range(0, tokens.size, EMBED_BATCH)
        ]
        return np.concatenate(chunks).astype(np.float32)

    def item_offsets(self) -> npt.NDArray[np.float64] | None:
        """(items,) ``temperature * b_item`` in catalogue order, or None without an item bias."""
        if self.item_bias is None:
            return None
        tokens = np.arange(1, self.n_items + 1, dtype=np.int32)
        bias = self.item_bias(tokens).numpy()[:, 0].astype(np.float64)
        out: npt.NDArray[np.float64] = bias * self.temperature
        return out

    def user_embeddings(self, inputs: UserInputs) -> npt.NDArray[np.float32]:
        """(users, D) query embeddings of the given user inputs."""
        chunks = []
        for lo in range(0, len(inputs), EMBED_BATCH):
            rows = np.arange(lo, min(lo + EMBED_BATCH, len(inputs)))
            chunks.append(
                self.user_tower(_user_features(inputs.take(rows)), training=False).numpy()
            )
        if not chunks:
            return np.zeros((0, self.item_tower.projection.units), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32)

    def numpy_user_tower(self) -> UserTowerWeights:
        """The user tower's weights as arrays for the NumPy forward pass."""
        tower = self.user_tower
        layers = [*tower.hidden, tower.projection]
        items = tower.items
        vocabulary = tower.lookup.get_vocabulary()[1:]  # index 0 is the OOV token
        return UserTowerWeights(
            vocabulary=np.array(vocabulary, dtype=str),
            user_table=tower.user_embedding.embeddings.numpy(),
            item_table=(
                tower.history_embedding or items.item_embedding
            ).embeddings.numpy(),  # the table the behaviour sequence reads
            category_table=items.category_embedding.embeddings.numpy(),
            brand_table=items.brand_embedding.embeddings.numpy(),
            item_categories=items.category_codes.numpy(),
            item_brands=items.brand_codes.numpy(),
            tag_table=(
                items.tag_embedding.embeddings.numpy()
                if items.tag_embedding is not None
                else np.zeros((1, 0), dtype=np.float32)
            ),
            item_tags=items.tag_codes.numpy(),
            feature_tables=tuple(e.embeddings.numpy() for e in tower.feature_embeddings),
            kernels=tuple(layer.kernel.numpy() for layer in layers),
            biases=tuple(layer.bias.numpy() for layer in layers),
        )


def _user_features(inputs: UserInputs) -> dict[str, Any]:
    features: dict[str, Any] = {"user_id": inputs.user_ids, "history": inputs.history}
    if inputs.feature_codes.shape[1]:
        features["feature_codes"] = inputs.feature_codes
    if inputs.numeric.shape[1]:
        features["numeric"] = inputs.numeric
    return features


def validation_recall(towers: TrainedTowers, validation: Validation, k: int) -> float:
    """Recall@k of the held-out items (user mean, or pair-weighted), training items excluded."""
    items = towers.item_embeddings().astype(np.float64)
    queries = towers.user_embeddings(validation.inputs).astype(np.float64)
    offsets = towers.item_offsets()
    if offsets is not None:
        items = np.column_stack([items, served_offsets(offsets)])
        queries = np.column_stack([queries, np.ones(len(queries))])
    index = ItemIndex.build(quantize(items))
    queries = quantize(queries).astype(np.float64)
    ranked, _ = index.search(queries, min(k, index.n_items), excluded=validation.seen)
    found = [
        int(np.isin(target, row).sum())
        for target, row in zip(validation.targets, ranked, strict=True)
    ]
    if not found:
        return float("nan")
    sizes = [target.size for target in validation.targets]
    if validation.pair_weighted:
        return sum(found) / sum(sizes)
    return float(np.mean([n / size for n, size in zip(found, sizes, strict=True)]))


class _EarlyStopping(keras.callbacks.Callback):  # type: ignore[misc]
    """Validation recall after each epoch; stop after `patience` epochs without a better one."""

    def __init__(self, towers: TrainedTowers, validation: Validation | None, patience: int):
        super().__init__()
        self.towers = towers
        self.validation = validation
        self.patience = patience
        self.best = -np.inf
        self.best_weights: list[Any] | None = None
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        # Keras logs the last batch's loss as "loss"; record the epoch's mean instead.
        record = {"epoch": float(epoch + 1)}
        if "epoch_loss" in logs:
            record["loss"] = float(logs["epoch_loss"])
        if "regularization_loss" in logs:
            record["regularization_loss"] = float(logs["regularization_loss"])
        self.towers.epochs_run = epoch + 1
        if self.validation is not None:
            recall = validation_recall(self.towers, self.validation, VALIDATION_K)
            name = "val_hit" if self.validation.pair_weighted else "val_recall"
            record[f"{name}@{VALIDATION_K}"] = recall
            if recall > self.best:
                self.best = recall
                self.best_weights = self.model.get_weights()
                self.towers.best_epoch = epoch + 1
                self.wait = 0
            else:
                self.wait += 1
                if self.wait >= max(self.patience, 1):
                    self.model.stop_training = True
        self.towers.epochs.append(record)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def train_two_tower(
    examples: TrainingExamples,
    items: ItemFeatures,
    vocabulary: Sequence[str],
    feature_sizes: Sequence[int],
    params: TwoTowerParams,
    seed: int,
    validation: Validation | None = None,
) -> TrainedTowers:
    """Train the towers on the examples; early-stop on `validation` recall if given.

    Parameters
    ----------
    examples
        (user, history, item) examples with loss weights and sampling probabilities.
    items
        The catalogue's encoded side features (category, brand, price) by item token.
    vocabulary
        User ids that get an id embedding (the rest share the out-of-vocabulary row).
    feature_sizes
        Vocabulary size of each categorical profile feature.
    params
        The strategy's parameters.
    seed
        Seed of initialisation, shuffling and user-id dropout.
    validation
        Held-out next items; without it training runs `params.epochs` epochs.

    Returns
    -------
    TrainedTowers
        The towers, with the best epoch's weights when validating, and a record per epoch.

    Notes
    -----
    With ``negatives: in_batch`` the loss is TFRS's in-batch softmax (`tfrs.tasks.Retrieval`):
    the other positives of a batch are the negatives, their logits corrected by
    -log(sampling probability) (logQ) so that frequent items are not over-penalised, and a
    batch's duplicates of the positive item are masked (accidental hits). With ``full`` every
    catalogue item is a negative of every example (exact softmax, no correction needed).
    Scores are cosines divided by `temperature` (plus the item bias if any); example losses
    are weighted and summed over the batch in both cases.

    Seeds Python, NumPy and TensorFlow with `seed` and turns on TensorFlow's op determinism
    (a process-wide setting), so two runs in one environment give the same weights; across
    TensorFlow versions, CPU instruction sets or thread counts the last bits may differ.
    """
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    n_items = int(items.category_codes.shape[0]) - 1
    tables = ItemTables(items, params)
    user_tower = UserTower(vocabulary, tables, feature_sizes, params, seed)
    item_tower = ItemTower(tables, items, params)
    bias = ItemBias(initial_item_bias(examples, n_items)) if params.item_bias else None
    full = n_items if params.negatives == "full" else 0
    model = TwoTowerModel(user_tower, item_tower, params.temperature, bias, full)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=params.learning_rate))
    features = {
        "user_id": examples.user_ids,
        "history": examples.history,
        "item": examples.items,
        "weight": examples.weights,
        "sampling_probability": examples.sampling_probability,
    }
    if examples.feature_codes.shape[1]:
        features["feature_codes"] = examples.feature_codes
    if examples.numeric.shape[1]:
        features["numeric"] = examples.numeric
    # Shuffle and batch row indices, then gather whole batches: far cheaper than slicing a
    # dict of string and integer columns element by element.
    columns = {name: tf.constant(values) for name, values in features.items()}
    dataset = (
        tf.data.Dataset.range(len(examples))
        .shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
        .batch(params.batch_size)
        .map(lambda rows: {name: tf.gather(column, rows) for name, column in columns.items()})
        .prefetch(2)
    )
    towers = TrainedTowers(user_tower, item_tower, n_items, bias, params.temperature)
    callback = _EarlyStopping(towers, validation, params.early_stopping_patience)
    model.fit(dataset, epochs=params.epochs, callbacks=[callback], verbose=0)
    towers.seconds = time.perf_counter() - started
    return towers


def brute_force_top_k(towers: TrainedTowers, inputs: UserInputs, k: int) -> npt.NDArray[np.int64]:
    """TFRS `BruteForce` top-k catalogue indices for the users (the parity reference)."""
    index = tfrs.layers.factorized_top_k.BruteForce(towers.user_tower, k=k)
    tokens = np.arange(1, towers.n_items + 1, dtype=np.int32)
    index.index(tf.constant(towers.item_embeddings()), tf.constant(tokens))
    _, found = index(_user_features(inputs))
    out: npt.NDArray[np.int64] = found.numpy().astype(np.int64) - 1
    return out
