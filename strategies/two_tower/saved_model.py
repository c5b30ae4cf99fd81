"""Export a two-tower artifact as a TensorFlow SavedModel that TensorFlow Serving can load.

The SavedModel rebuilds, in TensorFlow ops and float64, exactly what the NumPy serving path
(`TwoTowerStrategy.recommend`) computes: the user tower's forward pass
(`UserTowerWeights.embed`), the served query (item-bias axis, popularity axis, quantisation),
the default popularity query for a user about whom nothing is known, purchased-item
exclusion for known users, and a brute-force top-k over the item embeddings (ties broken by
the lower item index, as `ItemIndex.search`). TensorFlow is imported inside
`export_saved_model` only.

Layout (TensorFlow Serving's): ``<out_dir>/<model_name>/<version>/saved_model.pb`` plus
``variables/`` and ``assets.extra/abplatform.json`` (the source artifact and the signature),
``version`` a positive integer one above the highest already there. A version is written
into a hidden temporary directory and renamed into place, so a server polling the model
directory never loads half of one.

Signature ``serving_default`` (one row per user; every input is required):

``user_id``
    string ``[batch]``: the user's id ("" if unknown). A known user (one the artifact stores
    an embedding for) has their purchases ranked last (with ``exclude_purchased``), and their
    id embedding when the tower has one.
``history``
    string ``[batch, any width]``: the user's recent item ids, most recent first, padded
    with "". Ids not in the catalogue are ignored and the first ``history_length`` known
    ones are used (as `TwoTowerStrategy.embed_history`). A user with no known item in it who
    is not a known user gets the default (popularity) query; a known one is embedded from
    the id and profile alone, with ``cold_popularity_weight`` on the popularity axis.
    (`recommend` reads a known user's embedding stored at training, from their latest
    items; the SavedModel embeds what it is sent, so send those items to get that slate.)
``feature_<name>``
    one per profile feature of the artifact's encoder (``manifest.json`` "user_features"),
    ``<name>`` with characters other than letters, digits and "_" replaced by "_":
    categorical ones string ``[batch]`` ("" when missing; unseen values count as missing;
    booleans as "True"/"False"), numeric ones float64 ``[batch]`` (NaN when missing).
    (`recommend` embeds an unknown user's context items without a profile: send missing
    features for its slate.)

Outputs: ``item_ids`` string ``[batch, k]`` best first, ``scores`` float64 ``[batch, k]``
(the exact dot products, excluded items keep their true score), with ``k`` the export's
``k`` capped at the catalogue's size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abplatform.artifacts import ArtifactError
from abplatform.errors import AbplatformError
from strategies.two_tower.artifact import TwoTowerArtifact, load_artifact
from strategies.two_tower.numpy_tower import L2_EPSILON, UserTowerWeights
from strategies.two_tower.params import TwoTowerParams
from strategies.two_tower.serving import EXCLUDED_PENALTY, QUANTUM

SIGNATURE = "serving_default"
EXPORT_INFO = "assets.extra/abplatform.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SignatureInput:
    """One input of the serving signature: its name, dtype and shape (None = any size)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    feature: str | None = None  # the profile feature it carries, for feature_* inputs

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)} | (
            {} if self.feature is None else {"feature": self.feature}
        )


@dataclass(frozen=True)
class SavedModelExport:
    """Where a SavedModel was written and what its serving signature takes."""

    path: Path  # the version directory holding saved_model.pb
    model_name: str
    version: int
    k: int
    inputs: tuple[SignatureInput, ...]
    source_version: str  # the artifact's version (manifest "version")


def signature_inputs(artifact: TwoTowerArtifact) -> tuple[SignatureInput, ...]:
    """The inputs the serving signature of `artifact` takes, in order."""
    inputs = [
        SignatureInput("user_id", "string", (None,)),
        SignatureInput("history", "string", (None, None)),
    ]
    encoder = artifact.feature_encoder
    for name, _ in encoder.categorical:
        inputs.append(SignatureInput(_feature_input(name), "string", (None,), name))
    for name, _, _ in encoder.numeric:
        inputs.append(SignatureInput(_feature_input(name), "float64", (None,), name))
    names = [i.name for i in inputs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ArtifactError(
            f"profile features map to the same signature input names: {', '.join(clashes)}",
            hint="rename the profile features so they differ in letters, digits or '_'",
        )
    return tuple(inputs)


def _feature_input(name: str) -> str:
    return "feature_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def export_saved_model(
    artifact_dir: str | Path,
    out_dir: str | Path,
    *,
    k: int = 100,
    model_name: str = "two_tower",
) -> SavedModelExport:
    """Write the two-tower artifact at `artifact_dir` as a new SavedModel version.

    Parameters
    ----------
    artifact_dir
        An exported artifact: a version directory, or a variant directory (its ``LATEST``).
    out_dir
        TensorFlow Serving's base directory; the model goes to ``out_dir/model_name/<n>``.
    k
        Slate size the signature returns (capped at the catalogue's size).
    model_name
        The model's name in TensorFlow Serving (``/v1/models/<model_name>:predict``).

    Returns
    -------
    SavedModelExport
        The version directory, its number and the signature's inputs.

    Raises
    ------
    ArtifactError
        If the artifact is missing, corrupt (checksums are verified) or has no user tower
        (it fell back to popularity).
    AbplatformError
        If `k` or `model_name` is invalid, or `out_dir` is not a directory.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise AbplatformError(f"k must be a positive integer (got {k!r})")
    if not _NAME.match(model_name):
        raise AbplatformError(
            f"model_name {model_name!r} cannot be a TensorFlow Serving model name",
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit",
        )
    artifact = load_artifact(artifact_dir, verify=True)
    if artifact.user_tower is None:
        reason = artifact.manifest.get("training", {}).get("fallback")
        raise ArtifactError(
            f"{artifact_dir} has no user tower: the strategy fell back to popularity "
            f"({reason}), so there is no model to export as a SavedModel",
            hint="train the two-tower on more history, or serve the artifact with "
            "TwoTowerStrategy.from_artifact",
        )
    inputs = signature_inputs(artifact)
    base = Path(out_dir) / model_name
    created = not base.exists()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AbplatformError(f"cannot create the model directory {base}: {exc}") from None
    numbers = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    version = max(numbers, default=0) + 1
    size = min(k, len(artifact.catalog))
    staging = base / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _save(artifact, inputs, size, staging)
        info = {
            "format": "abplatform.two_tower.saved_model",
            "signature": SIGNATURE,
            "k": size,
            "inputs": [i.to_json() for i in inputs],
            "outputs": {
                "item_ids": {"dtype": "string", "shape": [None, size]},
                "scores": {"dtype": "float64", "shape": [None, size]},
            },
            "source": {
                "path": str(Path(artifact_dir).resolve()),
                "version": artifact.manifest.get("version"),
                "experiment": artifact.manifest.get("experiment"),
                "variant": artifact.manifest.get("variant"),
                "files": artifact.manifest.get("files", {}),
            },
        }
        (staging / EXPORT_INFO).parent.mkdir(parents=True, exist_ok=True)
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        target = base / str(version)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(base.iterdir()):
            base.rmdir()
        raise
    return SavedModelExport(
        path=target,
        model_name=model_name,
        version=version,
        k=size,
        inputs=inputs,
        source_version=str(artifact.manifest.get("version")),
    )


def _save(
    artifact: TwoTowerArtifact, inputs: tuple[SignatureInput, ...], k: int, directory: Path
) -> None:
    """Build the retrieval module in TensorFlow and save it to `directory`."""
    # Keras is not used here, but TensorFlow fixes tf.keras at its first import: keep it the
    # legacy Keras that training (model.py) needs if both run in one process.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise AbplatformError(
            f"exporting a SavedModel needs TensorFlow ({exc})",
            hint="install tensorflow (pinned in requirements.lock)",
        ) from exc

    tower = artifact.user_tower
    assert tower is not None  # checked by export_saved_model
    module = _retrieval_module(tf, artifact, tower, inputs, k)
    specs = {
        i.name: tf.TensorSpec(list(i.shape), getattr(tf, i.dtype), name=i.name) for i in inputs
    }
    # A dict of named TensorSpecs: the signature's inputs are named after them.
    module.serve = tf.function(module.retrieve, input_signature=[specs])
    tf.saved_model.save(
        module, str(directory), signatures={SIGNATURE: module.serve.get_concrete_function()}
    )


def _retrieval_module(
    tf: Any,
    artifact: TwoTowerArtifact,
    tower: UserTowerWeights,
    inputs: tuple[SignatureInput, ...],
    k: int,
) -> Any:
    """A tf.Module whose `retrieve(features)` returns the top-k item ids and scores."""
    params = TwoTowerParams.model_validate(artifact.manifest.get("params", {}))
    f64 = tf.float64
    encoder = artifact.feature_encoder
    numeric_width = tower.kernels[0].shape[0] - _tower_width(tower)
    if numeric_width != len(encoder.numeric):
        raise ArtifactError(
            f"the user tower reads {numeric_width} numeric features but the encoder has "
            f"{len(encoder.numeric)}: the artifact is inconsistent"
        )
    n_items = len(artifact.catalog)
    offset_axes = artifact.dim - 1 - tower.output_dim  # 1 with an item bias, else 0
    feature_inputs = {i.feature: i.name for i in inputs if i.feature is not None}

    def weights(array: Any, dtype: Any = f64) -> Any:
        # Variables, not constants: saved_model.pb (a protobuf) is limited to 2 GiB.
        return tf.Variable(np.asarray(array), dtype=dtype, trainable=False)

    def string_table(keys: Any, first: int) -> Any:
        """Key i -> first + i; missing keys -> -1."""
        keys = np.asarray(keys).astype(str)
        initializer = tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys.tolist(), dtype=tf.string),
            tf.constant(np.arange(first, first + keys.size, dtype=np.int64)),
        )
        return tf.lookup.StaticHashTable(initializer, default_value=-1)

    class Retrieval(tf.Module):  # type: ignore[misc]
        """User tower + exact brute-force top-k, as the NumPy serving path."""

        def __init__(self) -> None:
            super().__init__(name="two_tower_retrieval")
            self.user_rows = string_table(tower.vocabulary, 1)  # row 0: out of vocabulary
            self.known_rows = string_table(artifact.user_ids, 0)
            self.item_tokens = string_table(artifact.catalog.item_ids, 1)  # token 0: padding
            self.categorical = [string_table(vocab, 1) for _, vocab in encoder.categorical]
            self.user_table = weights(tower.user_table)
            self.item_table = weights(tower.item_table)
            self.category_table = weights(tower.category_table)
            self.brand_table = weights(tower.brand_table)
            self.item_categories = weights(tower.item_categories, tf.int32)
            self.item_brands = weights(tower.item_brands, tf.int32)
            self.tag_table = weights(tower.tag_table)
            self.item_tags = weights(tower.item_tags, tf.int32)
            self.feature_tables = [weights(t) for t in tower.feature_tables]
            self.kernels = [weights(w) for w in tower.kernels]
            self.biases = [weights(b) for b in tower.biases]
            self.item_ids = weights(artifact.catalog.item_ids.astype(str).astype(object), tf.string)
            self.items = weights(artifact.item_embeddings)
            self.default_query = weights(artifact.default_embedding)
            self.purchased_items = weights(artifact.purchased_items, tf.int64)
            self.purchased_indptr = weights(artifact.purchased_indptr, tf.int64)

        def embed(self, features: dict[str, Any]) -> tuple[Any, Any]:
            """Unit-norm tower outputs and whether each history holds a catalogue item."""
            rows = tf.maximum(self.user_rows.lookup(features["user_id"]), 0)
            raw = self.item_tokens.lookup(features["history"])
            is_item = raw > 0
            # The first `history_length` catalogue items, as embed_history's filter-then-cut
            # (the tower averages over the history, so the positions do not matter).
            rank = tf.cumsum(tf.cast(is_item, tf.int64), axis=1)
            kept = is_item & (rank <= params.history_length)
            tokens = tf.where(kept, raw, tf.zeros_like(raw))
            mask = tf.cast(kept, f64)
            count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
            parts = [tf.gather(self.user_table, rows)]
            tables = [
                tf.gather(self.item_table, tokens),
                tf.gather(self.category_table, tf.gather(self.item_categories, tokens)),
                tf.gather(self.brand_table, tf.gather(self.item_brands, tokens)),
            ]
            if tower.item_tags.shape[1]:
                codes = tf.gather(self.item_tags, tokens)  # (n, L, labels)
                present = tf.cast(codes > 0, f64)[..., None]
                labels = tf.maximum(tf.reduce_sum(present, axis=2), 1.0)
                labelled = tf.gather(self.tag_table, codes) * present
                tables.append(tf.reduce_sum(labelled, axis=2) / labels)
            for table in tables:
                parts.append(tf.einsum("nl,nle->ne", mask, table) / count)
            for j, (name, _) in enumerate(encoder.categorical):
                code = tf.maximum(self.categorical[j].lookup(features[feature_inputs[name]]), 0)
                parts.append(tf.gather(self.feature_tables[j], code))
            for name, mean, std in encoder.numeric:
                value = features[feature_inputs[name]]
                z = tf.where(tf.math.is_finite(value), (value - mean) / std, tf.zeros_like(value))
                # UserFeatureEncoder hands the tower float32 standardised values.
                parts.append(tf.cast(tf.cast(z, tf.float32), f64)[:, None])
            x = tf.concat(parts, axis=1)
            last = len(self.kernels) - 1
            for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
                x = tf.matmul(x, kernel) + bias
                if i < last:
                    x = tf.nn.relu(x)
            norm = tf.sqrt(tf.maximum(tf.reduce_sum(x * x, axis=1, keepdims=True), L2_EPSILON))
            return x / norm, tf.reduce_any(is_item, axis=1)

        def retrieve(self, features: dict[str, Any]) -> dict[str, Any]:
            """Top-k item ids and exact scores for each row of `features`."""
            embedded, has_items = self.embed(features)
            n = tf.shape(embedded)[0]
            known_row = self.known_rows.lookup(features["user_id"])
            is_known = known_row >= 0
            # A known user without behaviour is served as training stored them: the tower's
            # output plus `cold_popularity_weight` on the popularity axis.
            cold = tf.constant(params.cold_popularity_weight, f64)
            weight = tf.where(is_known & ~has_items, cold, tf.zeros_like(cold))
            query = tf.concat([embedded, tf.ones([n, offset_axes], f64), weight[:, None]], axis=1)
            query = tf.round(query / QUANTUM) * QUANTUM  # serving.quantize (half to even)
            nobody = ~is_known & ~has_items  # the default query: popularity
            query = tf.where(nobody[:, None], self.default_query[None, :], query)
            scores = tf.matmul(query, self.items, transpose_b=True)  # exact: see serving.py
            ranking = scores
            if params.exclude_purchased:
                row = tf.maximum(known_row, 0)
                starts = tf.gather(self.purchased_indptr, row)
                counts = tf.gather(self.purchased_indptr, row + 1) - starts
                lengths = tf.where(is_known, counts, tf.zeros_like(counts))
                owner = tf.repeat(tf.range(tf.cast(n, tf.int64)), lengths)
                offsets = tf.range(tf.reduce_sum(lengths)) - tf.repeat(
                    tf.cumsum(lengths, exclusive=True), lengths
                )
                bought = tf.gather(self.purchased_items, tf.repeat(starts, lengths) + offsets)
                hits = tf.scatter_nd(
                    tf.stack([owner, bought], axis=1),
                    tf.ones_like(bought, f64),
                    tf.stack([tf.cast(n, tf.int64), tf.constant(n_items, tf.int64)]),
                )
                ranking = scores - EXCLUDED_PENALTY * tf.cast(hits > 0, f64)
            _, picked = tf.math.top_k(ranking, k=k, sorted=True)  # ties: lower index first
            return {
                "item_ids": tf.gather(self.item_ids, picked),
                "scores": tf.gather(scores, picked, batch_dims=1),
            }

    return Retrieval()


def _tower_width(tower: UserTowerWeights) -> int:
    """Width of the tower's input before its numeric profile features."""
    embedding = tower.user_table.shape[1]
    width = embedding + tower.item_table.shape[1]
    width += tower.category_table.shape[1] + tower.brand_table.shape[1]
    if tower.item_tags.shape[1]:
        width += tower.tag_table.shape[1]
    return int(width + sum(t.shape[1] for t in tower.feature_tables))
