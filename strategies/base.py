"""Shared machinery of the built-in strategies."""

from __future__ import annotations

import hashlib
import json
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
    ONLINE_FEATURES: ClassVar[frozenset[str]] = frozenset()
    """The `RecRequest.features` fields the strategy uses when a request carries them."""

    def __init__(self, params: BaseModel | Mapping[str, Any] | None = None, *, seed: int = 0):
        if isinstance(params, self.Params):
            self.params: Any = params
        else:
            raw = params.model_dump() if isinstance(params, BaseModel) else dict(params or {})
            self.params = self.Params.model_validate(raw)
        self.seed = seed
        self._catalog: Catalog | None = None
        # Nested strategies fitted by this one, by `stage_key`; `_prefitted` ones are used as
        # they are instead of being fitted (a composite loaded from its artifact).
        self._stages: dict[str, Strategy] = {}
        self._prefitted: Mapping[str, Strategy] = {}

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

    def use_prefitted(self, stages: Mapping[str, Strategy]) -> None:
        """Serve these already fitted nested strategies (by `stage_key`) instead of fitting
        them: how a composite is rebuilt from its artifact without training."""
        self._prefitted = stages

    def fit_stage(self, spec: NestedStrategy, history: InteractionLog) -> Strategy:
        """A nested strategy of this one, fitted on `history` once per (kind, params).

        The same (kind, params) nested twice (e.g. a pipeline retrieving and ranking with
        one two-tower) is fitted once and shared; a prefitted one is taken as it is.
        """
        key = stage_key(spec.kind, spec.params)
        fitted = self._stages.get(key)
        if fitted is not None:
            return fitted
        fitted = self._prefitted.get(key)
        if fitted is None:
            fitted = spec.build(self.seed)
            if isinstance(fitted, BaseStrategy):
                fitted.use_prefitted(self._prefitted)
            fitted.fit(history)
        self._stages[key] = fitted
        return fitted

    def online_features(self) -> frozenset[str]:
        """The online features this strategy and its nested ones use (none: serving it
        never reads the feature store)."""
        from abplatform.features import online_features_of

        used = set(self.ONLINE_FEATURES)
        for stage in self._stages.values():
            used |= online_features_of(stage)
        return frozenset(used)

    def fitted_stages(self) -> dict[str, Strategy]:
        """The nested strategies `fit_stage` fitted, by `stage_key` (direct children only)."""
        return dict(self._stages)

    def recommend(self, request: RecRequest, k: int) -> Slate:
        """One slate; subclasses implement `recommend_batch` or override this."""
        return self.recommend_batch([request], k)[0]

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """One slate per request."""
        raise NotImplementedError

    def _slate(self, indices: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> Slate:
        ids = self.catalog.item_ids[indices]
        return Slate(tuple(ids.tolist()), tuple(float(s) for s in scores.tolist()))


def stage_key(kind: str, params: Mapping[str, Any]) -> str:
    """A nested strategy's identity: its kind and a digest of its params with defaults."""
    from abplatform.registry import strategies

    normalised = strategies.get(kind).Params.model_validate(dict(params)).model_dump(mode="json")
    text = json.dumps(normalised, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


@runtime_checkable
class ScoringStrategy(Protocol):
    """A strategy that can score any catalogue item for a request: a pipeline's rank stage."""

    def score_items(
        self, requests: Sequence[RecRequest], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Scores (requests, n) of the catalogue indices `items` (requests, n); higher is
        better. Row r depends only on request r and its items (batch == single)."""
        ...


def can_score(kind: str) -> bool:
    """Whether strategies of `kind` implement `ScoringStrategy` (checked on the class)."""
    from abplatform.registry import strategies

    return callable(getattr(strategies.get(kind), "score_items", None))


class Reranker(Protocol):
    """Chooses a slate from ranked candidate lists (a pipeline's re-rank stage)."""

    def rerank(
        self, items: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Positions chosen (batch, min(k, length)) in equally long candidate lists `items`
        (batch, length) with their `scores`, and the score each was chosen at."""
        ...


def rerank_kinds() -> list[str]:
    """Kinds that can be a pipeline's re-rank stage: their class has `RerankParams` and a
    ``reranker(params, catalog, item_vectors)`` factory of a `Reranker`."""
    from abplatform.registry import strategies

    out = []
    for kind in strategies.names():
        factory = strategies.get_or_none(kind)
        if factory is not None and hasattr(factory, "RerankParams"):
            out.append(kind)
    return out


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
