"""The ranker's forward pass in NumPy: what serving runs instead of the Keras model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HEADS = ("click", "purchase")


@dataclass(frozen=True)
class RankerWeights:
    """Deep-and-cross weights: one full-rank cross layer, a ReLU tower, two logit heads."""

    cross_kernel: npt.NDArray[np.float32]
    cross_bias: npt.NDArray[np.float32]
    hidden: tuple[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]], ...]
    heads: Mapping[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]

    def probabilities(self, x0: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float64]]:
        """p(click) and p(purchase | click) of each row of `x0` (rows, width)."""
        x = x0 * (x0 @ self.cross_kernel + self.cross_bias) + x0
        for kernel, bias in self.hidden:
            x = np.maximum(x @ kernel + bias, 0.0)
        out: dict[str, npt.NDArray[np.float64]] = {}
        for name in HEADS:
            kernel, bias = self.heads[name]
            logit = (x @ kernel + bias)[:, 0].astype(np.float64)
            out[name] = 1.0 / (1.0 + np.exp(-logit))
        return out

    def to_arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        """The weights as the arrays of ``weights.npz``."""
        arrays = {"cross_kernel": self.cross_kernel, "cross_bias": self.cross_bias}
        for i, (kernel, bias) in enumerate(self.hidden):
            arrays[f"hidden{i}_kernel"], arrays[f"hidden{i}_bias"] = kernel, bias
        for name in HEADS:
            arrays[f"{name}_kernel"], arrays[f"{name}_bias"] = self.heads[name]
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[np.float32]]) -> RankerWeights:
        """The weights `to_arrays` wrote."""
        hidden: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
        while f"hidden{len(hidden)}_kernel" in arrays:
            i = len(hidden)
            hidden.append((arrays[f"hidden{i}_kernel"], arrays[f"hidden{i}_bias"]))
        return cls(
            arrays["cross_kernel"],
            arrays["cross_bias"],
            tuple(hidden),
            {name: (arrays[f"{name}_kernel"], arrays[f"{name}_bias"]) for name in HEADS},
        )
