"""The user tower's forward pass in NumPy, to embed users that have no stored vector."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

Float64Array = npt.NDArray[np.float64]

L2_EPSILON = 1e-12  # as tf.math.l2_normalize


@dataclass(frozen=True)
class UserTowerWeights:
    """The trained user tower as arrays: the same maths as the TensorFlow model.

    ``x = [user_table[row], mean over the history items (tokens > 0) of their id, category,
    brand (and, with tags, mean label) embeddings, feature_tables[j][code_j]..., numeric]``,
    then ReLU layers, a linear projection and L2 normalisation.
    """

    vocabulary: npt.NDArray[np.str_]  # user ids with an id embedding: row i + 1 is vocabulary[i]
    user_table: npt.NDArray[np.float32]  # (vocabulary + 1, E); row 0 = unseen user
    item_table: npt.NDArray[np.float32]  # (items + 1, E); row 0 = padding, never read
    category_table: npt.NDArray[np.float32]
    brand_table: npt.NDArray[np.float32]
    item_categories: npt.NDArray[np.int32]  # (items + 1,) category code of each token
    item_brands: npt.NDArray[np.int32]
    feature_tables: tuple[npt.NDArray[np.float32], ...]
    kernels: tuple[npt.NDArray[np.float32], ...]
    biases: tuple[npt.NDArray[np.float32], ...]
    tag_table: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((1, 0), dtype=np.float32)
    )  # (labels + 1, E'); row 0 pads
    item_tags: npt.NDArray[np.int32] = field(
        default_factory=lambda: np.zeros((1, 0), dtype=np.int32)
    )  # (items + 1, labels per item) label codes of each token; no columns without tags

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {user: i + 1 for i, user in enumerate(self.vocabulary.tolist())}

    def row_of(self, user_id: str | None) -> int:
        """The user's row in `user_table`: 0 (out of vocabulary) for None or an unknown id."""
        return 0 if user_id is None else self._rows.get(user_id, 0)

    @property
    def output_dim(self) -> int:
        """Size of the embeddings it produces."""
        return int(self.kernels[-1].shape[1])

    def embed(
        self,
        user_rows: npt.NDArray[np.int64],
        history: npt.NDArray[np.int32],
        feature_codes: npt.NDArray[np.int32] | None = None,
        numeric: npt.NDArray[np.float32] | None = None,
    ) -> Float64Array:
        """Unit-norm user embeddings, shape (users, output_dim), computed in float64.

        Parameters
        ----------
        user_rows
            Each user's row in `user_table` (0 for an unseen user, see `row_of`).
        history
            (users, L) item tokens, most recent first, 0 for padding.
        feature_codes, numeric
            Encoded profile features (see `UserFeatureEncoder`); None means all missing.

        Returns
        -------
        numpy.ndarray
            (users, output_dim) float64 embeddings of norm 1.
        """
        n = int(user_rows.shape[0])
        parts = [self.user_table[user_rows].astype(np.float64)]
        mask = (history > 0).astype(np.float64)
        count = np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        tables = [
            self.item_table[history],
            self.category_table[self.item_categories[history]],
            self.brand_table[self.item_brands[history]],
        ]
        if self.item_tags.shape[1]:
            codes = self.item_tags[history]  # (n, L, labels)
            present = (codes > 0).astype(np.float64)[..., None]
            labels = np.maximum(present.sum(axis=2), 1.0)
            tables.append((self.tag_table[codes].astype(np.float64) * present).sum(axis=2) / labels)
        for table in tables:
            summed = np.einsum("nl,nle->ne", mask, table.astype(np.float64))
            parts.append(summed / count)
        if self.feature_tables:
            codes = (
                feature_codes
                if feature_codes is not None
                else np.zeros((n, len(self.feature_tables)), dtype=np.int32)
            )
            for j, table in enumerate(self.feature_tables):
                parts.append(table[codes[:, j]].astype(np.float64))
        width = self.kernels[0].shape[0] - sum(p.shape[1] for p in parts)
        if width:
            values = numeric if numeric is not None else np.zeros((n, width), dtype=np.float32)
            parts.append(values.astype(np.float64))
        x = np.concatenate(parts, axis=1)
        last = len(self.kernels) - 1
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases, strict=True)):
            x = x @ kernel.astype(np.float64) + bias.astype(np.float64)
            if i < last:
                x = np.maximum(x, 0.0)
        norm = np.sqrt(np.maximum((x * x).sum(axis=1, keepdims=True), L2_EPSILON))
        out: Float64Array = x / norm
        return out
