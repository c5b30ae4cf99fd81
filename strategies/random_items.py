"""Random: a uniform sample of the catalogue, seeded per request so runs repeat."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel

from abplatform.domain import RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import BaseStrategy, StrategyParams, check_k

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The SplitMix64 finaliser: a fast, well-mixed 64-bit hash of each element."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


class RandomParams(StrategyParams):
    """The random strategy takes no parameters."""


@strategies.register("random")
class RandomStrategy(BaseStrategy):
    """Uniformly random distinct items; the same request and seed always give the same slate."""

    kind = "random"
    Params: ClassVar[type[BaseModel]] = RandomParams

    def _request_keys(self, requests: Sequence[RecRequest]) -> npt.NDArray[np.uint64]:
        keys = [
            zlib.crc32(f"{r.unit_id}\x1f{r.scene}\x1f{r.current_item}".encode()) for r in requests
        ]
        seed = np.uint64(self.seed & 0xFFFFFFFF) << np.uint64(32)
        return np.asarray(keys, dtype=np.uint64) | seed

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """One random slate per request, derived from (seed, unit, scene, current item)."""
        check_k(k)
        n_items = len(self.catalog)
        size = min(k, n_items)
        if not requests:
            return []
        keys = splitmix64(self._request_keys(requests))
        # Draw 2k candidates per request; duplicates are rare and fixed row by row below.
        width = 2 * size
        counters = np.arange(width, dtype=np.uint64)
        draws = splitmix64(keys[:, None] ^ splitmix64(counters)[None, :]) % np.uint64(n_items)
        candidates = draws.astype(np.int64)
        slates = []
        zeros = np.zeros(size)
        for row, key in zip(candidates, keys.tolist(), strict=True):
            _, first = np.unique(row, return_index=True)
            if len(first) >= size:
                picks = row[np.sort(first)[:size]]
            else:
                rng = np.random.default_rng(key)
                picks = rng.choice(n_items, size=size, replace=False).astype(np.int64)
            slates.append(self._slate(picks, zeros))
        return slates
