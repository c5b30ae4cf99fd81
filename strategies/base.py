"""Shared machinery of the built-in strategies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Required, TypedDict, Unpack, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from abplatform.domain import Catalog, InteractionLog, RecRequest, Slate
from abplatform.errors import AbplatformError
from abplatform.strategy import Strategy
from strategies.features import feature_vectors, normalise


class StrategyParams(BaseModel):
    """Base of every strategy's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NotFittedError(AbplatformError):
    """A strategy asked for slates before `fit`."""


class BaseStrategy:
    """Holds validated params, the seed and the fitted catalogue; batch defaults to a loop."""

    kind: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = StrategyParams

    def __init__(self, params: BaseModel | Mapping[str, Any] | None = None, *, seed: int = 0):
        if isinstance(params, self.Params):
            self.params: Any = params
        else:
            raw = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
            self.params = self.Params.model_validate(raw)
        self.seed = seed
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        """The catalogue seen at fit time."""
        if self._catalog is None:
            raise NotFittedError(
                f"strategy {self.kind!r} is not fitted", hint="call fit(history) first"
            )
        return self._catalog

    def fit(self, history: InteractionLog) -> None:
        """Remember the catalogue; subclasses learn more."""
        if len(history.catalog) == 0:
            raise AbplatformError(
                f"strategy {self.kind!r} cannot fit on an empty catalogue",
                hint="load items first (simulate or ingest)",
            )
        self._catalog = history.catalog

    def recommend(self, request: RecRequest, k: int) -> Slate:
        """One slate; subclasses implement `recommend_batch` or override this."""
        return self.recommend_batch([request], k)[0]

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """One slate per request."""
        raise NotImplementedError

    def _slate(self, indices: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> Slate:
        ids = self.catalog.item_ids[indices]
        return Slate(tuple(ids.tolist()), tuple(float(s) for s in scores.tolist()))


def check_k(k: int) -> None:
    """A slate size must be a positive integer."""
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer (got {k!r})")


class NestedStrategy(StrategyParams):
    """A strategy inside another one's params (e.g. a scene router's routes): its kind and
    its own params, validated against the registry."""

    kind: str
    params: dict[str, Any] = {}

    @model_validator(mode="after")
    def _known_kind_and_valid_params(self) -> NestedStrategy:
        from abplatform.registry import strategies

        factory = strategies.get_or_none(self.kind)
        if factory is None:
            raise ValueError(
                f"unknown strategy kind {self.kind!r}; known: {', '.join(strategies.names())}"
            )
        try:
            factory.Params.model_validate(dict(self.params))
        except ValidationError as exc:
            details = "; ".join(
                f"params.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise ValueError(f"invalid params for {self.kind!r}: {details}") from None
        return self

    def build(self, seed: int) -> Strategy:
        """Instantiate the nested strategy."""
        from abplatform.registry import build_strategy

        return build_strategy(self.kind, self.params, seed=seed)


class ArtifactPlace(TypedDict, total=False):
    """Where `ExportableStrategy.export` writes an artifact, and what it records with it."""

    experiment: Required[str]
    variant: Required[str]
    metrics: Mapping[str, float] | None


@runtime_checkable
class ExportableStrategy(Protocol):
    """A strategy that can write what it learned as a versioned artifact."""

    def export(self, root: str | Path, **place: Unpack[ArtifactPlace]) -> Path:
        """Write a new artifact version under ``root/experiment/variant``; return its path."""
        ...


class VectorStrategy(BaseStrategy):
    """A strategy that ranks by unit-norm item vectors and offers them to others."""

    _vectors: npt.NDArray[np.float64]

    def item_vectors(self) -> npt.NDArray[np.float64]:
        """Unit-norm item vectors, rows aligned with the catalogue."""
        _ = self.catalog
        return self._vectors

    def _use_vectors(self, learned: npt.NDArray[np.float64] | None) -> None:
        """Normalised `learned` vectors (e.g. two-tower embeddings), else catalogue features."""
        self._vectors = normalise(learned) if learned is not None else feature_vectors(self.catalog)


def item_vectors_of(strategy: Any) -> npt.NDArray[np.float64] | None:
    """Item embeddings a fitted strategy offers (rows aligned with its catalogue), if any."""
    vectors = getattr(strategy, "item_vectors", None)
    if vectors is None:
        return None
    result = vectors() if callable(vectors) else vectors
    return None if result is None else np.asarray(result, dtype=np.float64)
