"""Compressed storage of the served item embeddings: float32, float16 or symmetric int8.

Notes
-----
int8 uses one scale per *dimension* (column), symmetric around 0: ``code = round(x / s_d)``
with ``s_d = max_i |x_id| / 127``, so ``|x - code * s_d| <= s_d / 2``. A per-dimension scale
rather than a per-vector one because the served matrix is not homogeneous: beside the unit-norm
model axes it carries the item-bias axis (clipped to +-0.5) and the popularity axis (in [0, 1]),
whose ranges differ from the model axes'. A per-vector scale would be set by the largest of
those columns in each row and spend the 255 levels of the small model components on it; a
per-dimension scale gives every axis its own range, and it is a diagonal rescaling of the
query side, so a score stays a plain dot product.

Codes are decompressed once, when the artifact is built or loaded, to the 2**-20 grid of
`serving.quantize`: the exact, deterministic `ItemIndex` then ranks the dequantised vectors,
and a fitted strategy serves bit for bit what its exported (and reloaded) artifact serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from strategies.two_tower.serving import quantize

EmbeddingDtype = Literal["float32", "float16", "int8"]
EMBEDDING_DTYPES: tuple[str, ...] = get_args(EmbeddingDtype)
INT8_LEVELS = 127  # symmetric: codes in [-127, 127], -128 unused
INT8_SCALE = "per_dimension"


@dataclass(frozen=True)
class CompressedEmbeddings:
    """Item embeddings as stored: `codes` in `dtype`, and per-dimension `scales` for int8."""

    dtype: EmbeddingDtype
    codes: npt.NDArray[np.generic]
    scales: npt.NDArray[np.float32] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the codes and scales."""
        return int(self.codes.nbytes + (0 if self.scales is None else self.scales.nbytes))

    def manifest_entry(self) -> dict[str, str]:
        """What the artifact manifest records about the stored embeddings."""
        entry: dict[str, str] = {"dtype": self.dtype}
        if self.dtype == "int8":
            entry["scale"] = INT8_SCALE
        return entry


def check_dtype(dtype: str, *, field: str = "embedding_dtype") -> EmbeddingDtype:
    """`dtype` if it is a known embedding dtype, else ValueError naming field and value."""
    if dtype not in EMBEDDING_DTYPES:
        raise ValueError(
            f"{field}: unknown embedding dtype (got {dtype!r}); "
            f"expected one of {', '.join(EMBEDDING_DTYPES)}"
        )
    return cast(EmbeddingDtype, dtype)


def compress(embeddings: npt.ArrayLike, dtype: str) -> CompressedEmbeddings:
    """Store (items, D) embeddings in `dtype` (int8: symmetric, one scale per dimension)."""
    chosen = check_dtype(dtype)
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be (items, dim) (got shape {matrix.shape})")
    if chosen == "float32":
        return CompressedEmbeddings("float32", quantize(matrix))
    if chosen == "float16":
        return CompressedEmbeddings("float16", matrix.astype(np.float16))
    peak = np.abs(matrix).max(axis=0) if matrix.shape[0] else np.zeros(matrix.shape[1])
    # A constant-zero column gets scale 1: its codes are 0 either way.
    scales = np.where(peak > 0, peak / INT8_LEVELS, 1.0).astype(np.float32)
    codes = np.clip(np.rint(matrix / scales), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return CompressedEmbeddings("int8", codes, scales)


def decompress(stored: CompressedEmbeddings) -> npt.NDArray[np.float32]:
    """The served (quantised, float32) embeddings of `stored`; deterministic."""
    if stored.dtype == "int8":
        if stored.scales is None:
            raise ValueError("int8 embeddings need their per-dimension scales")
        if stored.scales.shape != (stored.codes.shape[1],):
            raise ValueError(
                f"int8 scales must be one per dimension ({stored.codes.shape[1]}) "
                f"(got shape {stored.scales.shape})"
            )
        values = stored.codes.astype(np.float64) * stored.scales.astype(np.float64)
        return quantize(values)
    return quantize(stored.codes.astype(np.float64))


def of_stored(
    dtype: str | None,
    codes: npt.NDArray[np.generic],
    scales: npt.NDArray[np.float32] | None,
) -> CompressedEmbeddings:
    """The embeddings an artifact stored; no dtype (an artifact written before) is float32."""
    chosen = check_dtype(dtype or "float32", field="manifest item_embeddings.dtype")
    if codes.dtype != np.dtype(chosen):
        raise ValueError(f"item_embeddings.npy holds {codes.dtype} but the manifest says {chosen}")
    return CompressedEmbeddings(chosen, codes, scales)
