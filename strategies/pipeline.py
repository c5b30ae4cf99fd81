"""Pipeline strategy: retrieve candidates from several sources, rank them, re-rank the slate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, ValidationError, model_validator

from abplatform.domain import InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from abplatform.strategy import Strategy
from strategies.base import (
    BaseStrategy,
    NestedStrategy,
    Reranker,
    StrategyParams,
    can_score,
    check_k,
    item_vectors_of,
    rerank_kinds,
)

MAX_CANDIDATES = 5000
"""The most candidates one retrieval source may contribute."""
RERANK_CHUNK = 64
"""Requests re-ranked at once (the similarity tensor is chunk x candidates^2)."""
FILL = None
"""The source of an item that no retrieval source found (the catalogue fills the slate)."""


class RetrievalSource(NestedStrategy):
    """A retrieval stage: a nested strategy, how many candidates it contributes, its name."""

    n: int = Field(ge=1, le=MAX_CANDIDATES)
    name: str | None = Field(default=None, min_length=1, max_length=64)

    @property
    def label(self) -> str:
        """What impressions of its candidates record as their source (default: the kind)."""
        return self.name or self.kind


class RankStage(NestedStrategy):
    """A rank stage: a nested strategy that can score any candidate (`ScoringStrategy`)."""

    @model_validator(mode="after")
    def _can_score(self) -> RankStage:
        if not can_score(self.kind):
            scorers = ", ".join(k for k in strategies.names() if can_score(k))
            raise ValueError(
                f"strategy kind {self.kind!r} cannot score candidates; kinds that can: {scorers}"
            )
        return self


class RerankStage(StrategyParams):
    """A re-rank stage: a re-ranker kind, its re-rank params and the candidates it sees."""

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    candidates: int = Field(default=100, ge=1, le=2000)

    @model_validator(mode="after")
    def _is_a_reranker(self) -> RerankStage:
        known = rerank_kinds()
        if self.kind not in known:
            raise ValueError(
                f"strategy kind {self.kind!r} is not a re-ranker; re-rankers: {', '.join(known)}"
            )
        try:
            self.rerank_params()
        except ValidationError as exc:
            details = "; ".join(
                f"params.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise ValueError(f"invalid params for {self.kind!r}: {details}") from None
        return self

    def rerank_params(self) -> BaseModel:
        """The validated params of the re-ranker."""
        factory: Any = strategies.get(self.kind)
        params: BaseModel = factory.RerankParams.model_validate(dict(self.params))
        return params


class PipelineParams(StrategyParams):
    """Retrieval sources (merged, de-duplicated), an optional rank and re-rank stage."""

    retrieve: list[RetrievalSource] = Field(min_length=1)
    rank: RankStage | None = None
    rerank: RerankStage | None = None

    @model_validator(mode="after")
    def _distinct_sources(self) -> PipelineParams:
        labels = [source.label for source in self.retrieve]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(
                f"retrieval sources must have distinct names; {', '.join(repeated)} names "
                "more than one (give repeated kinds a `name`)"
            )
        return self

    def slate_capacity(self) -> int:
        """The most distinct candidates the sources contribute: a slate larger than this is
        topped up beyond each source's `n` (`abplatform validate` refuses it)."""
        return sum(source.n for source in self.retrieve)


@dataclass(frozen=True)
class Candidates:
    """One request's merged candidates, in merge order, each with the source credited and
    the bit mask of every source (YAML order) whose contribution held it."""

    items: npt.NDArray[np.int64]
    source: npt.NDArray[np.int64]  # index into the retrieval sources; -1: catalogue fill
    found_by: npt.NDArray[np.int64]


@strategies.register("pipeline")
class PipelineStrategy(BaseStrategy):
    """Retrieve -> rank -> re-rank, every stage a strategy of its own.

    **Retrieve.** Each source contributes its top `n` items. The lists are merged
    round-robin by position: the first item of every source (in YAML order), then the
    second of every source, and so on; an item already taken is skipped. An item found by
    several sources is credited to the one that ranked it highest (the lower position;
    at equal positions the earlier source in YAML order), the source whose turn took it;
    `candidates` also keeps which sources found it. When the merged list holds fewer than
    the slate size k, every source is asked for k items and the round-robin continues past
    each `n` until k are taken (then, if the sources run dry, the catalogue fills in index
    order with no source).

    **Rank** (optional). A strategy that scores any item (`ScoringStrategy`: two_tower,
    popularity) re-scores the merged candidates; they are sorted by that score, ties kept
    in merge order. A rank stage with `score_candidates` (the ranker) is also given each
    candidate's retrieval source (its label; None for catalogue fill). Without a rank
    stage the merge order is the ranking, and an item's score is
    ``1 - position / candidates``.

    **Re-rank** (optional). A re-ranker (diversity_rerank's MMR) chooses the slate from the
    top `rerank.candidates` of the ranked list with their scores; its similarity uses the
    learned item vectors of the rank stage, else of the first source that has them, else
    catalogue features. Without it the slate is the top k of the ranked list.

    A (kind, params) used by several stages (e.g. one two-tower retrieving and ranking) is
    fitted once. Every slate carries its items' sources (`Slate.sources`: the source's
    `name`, default its kind).
    """

    kind = "pipeline"
    Params: ClassVar[type[BaseModel]] = PipelineParams

    def fit(self, history: InteractionLog) -> None:
        """Fit every stage once; prepare the re-ranker."""
        super().fit(history)
        params: PipelineParams = self.params
        self.sources: list[Strategy] = [self.fit_stage(s, history) for s in params.retrieve]
        self.ranker: Any = None if params.rank is None else self.fit_stage(params.rank, history)
        check_catalog = getattr(self.ranker, "check_catalog", None)
        if callable(check_catalog):  # a ranker loaded from another catalogue's artifact
            check_catalog(self.catalog)
        self.labels: tuple[str | None, ...] = (*(s.label for s in params.retrieve), FILL)
        self.reranker: Reranker | None = None
        if params.rerank is not None:
            vectors = None
            for stage in [self.ranker, *self.sources]:
                vectors = None if stage is None else item_vectors_of(stage)
                if vectors is not None:
                    break
            factory: Any = strategies.get(params.rerank.kind)
            self.reranker = factory.reranker(params.rerank.rerank_params(), self.catalog, vectors)
        self._index = self.catalog.index()

    def candidates(self, requests: Sequence[RecRequest], k: int) -> list[Candidates]:
        """Every request's merged, de-duplicated candidates for a slate of `k` (see the class)."""
        check_k(k)
        params: PipelineParams = self.params
        n_items = len(self.catalog)
        wanted = min(k, n_items)
        lists = []
        for source, strategy in zip(params.retrieve, self.sources, strict=True):
            ask = min(max(source.n, k), n_items)
            lists.append(strategy.recommend_batch(requests, ask))
        quotas = [source.n for source in params.retrieve]
        out = []
        for row in range(len(requests)):
            ranked = [
                [self._index[item] for item in found[row].items if item in self._index]
                for found in lists
            ]
            out.append(_merge(ranked, quotas, wanted, n_items))
        return out

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Retrieve for all requests at once, rank and re-rank them batched."""
        check_k(k)
        _ = self.catalog
        if not requests:
            return []
        merged = self.candidates(requests, k)
        items, sources, scores = self._ranked(requests, merged)
        if self.reranker is None:
            return [
                self._labelled(i[:k], s[:k], x[:k])
                for i, s, x in zip(items, sources, scores, strict=True)
            ]
        assert self.params.rerank is not None
        pool = self.params.rerank.candidates
        return self._reranked(items, sources, scores, max(pool, k), k)

    def _ranked(
        self, requests: Sequence[RecRequest], merged: list[Candidates]
    ) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]], list[npt.NDArray[Any]]]:
        """Each request's candidates in ranked order, with their sources and scores."""
        if self.ranker is None:
            return (
                [c.items for c in merged],
                [c.source for c in merged],
                [1.0 - np.arange(c.items.size) / c.items.size for c in merged],
            )
        width = max(c.items.size for c in merged)
        padded = np.zeros((len(merged), width), dtype=np.int64)
        for row, c in enumerate(merged):
            padded[row, : c.items.size] = c.items
        score_candidates = getattr(self.ranker, "score_candidates", None)
        if callable(score_candidates):  # a rank stage that reads each candidate's source
            found = [
                [self.labels[s] for s in c.source.tolist()] + [None] * (width - c.items.size)
                for c in merged
            ]
            scored = np.asarray(score_candidates(requests, padded, found), dtype=np.float64)
        else:
            scored = np.asarray(self.ranker.score_items(requests, padded), dtype=np.float64)
        items, sources, scores = [], [], []
        for row, c in enumerate(merged):
            own = scored[row, : c.items.size]
            order = np.argsort(-own, kind="stable")  # ties keep merge order
            items.append(c.items[order])
            sources.append(c.source[order])
            scores.append(own[order])
        return items, sources, scores

    def _reranked(
        self,
        items: list[npt.NDArray[np.int64]],
        sources: list[npt.NDArray[np.int64]],
        scores: list[npt.NDArray[Any]],
        pool: int,
        k: int,
    ) -> list[Slate]:
        """The re-ranker's slates from the top `pool` of each ranked list (equal lengths
        re-ranked together, a chunk of requests at a time)."""
        assert self.reranker is not None
        groups: dict[int, list[int]] = {}
        for row, ranked in enumerate(items):
            groups.setdefault(min(pool, ranked.size), []).append(row)
        slates: list[Slate | None] = [None] * len(items)
        for length, rows in groups.items():
            for lo in range(0, len(rows), RERANK_CHUNK):
                chunk = rows[lo : lo + RERANK_CHUNK]
                block = np.stack([items[r][:length] for r in chunk])
                relevance = np.stack([scores[r][:length] for r in chunk])
                chosen, chosen_scores = self.reranker.rerank(block, relevance, k)
                for j, row in enumerate(chunk):
                    pick = chosen[j]
                    slates[row] = self._labelled(
                        block[j][pick], sources[row][:length][pick], chosen_scores[j]
                    )
        return [slate for slate in slates if slate is not None]

    def _labelled(
        self,
        items: npt.NDArray[np.int64],
        sources: npt.NDArray[np.int64],
        scores: npt.NDArray[Any],
    ) -> Slate:
        ids = self.catalog.item_ids[items]
        return Slate(
            tuple(ids.tolist()),
            tuple(float(s) for s in scores.tolist()),
            tuple(self.labels[s] for s in sources.tolist()),
        )


def _merge(ranked: list[list[int]], quotas: list[int], wanted: int, n_items: int) -> Candidates:
    """Round-robin merge of the sources' ranked lists (see `PipelineStrategy`): first every
    source's top `quota`, then, while fewer than `wanted` are taken, what lies past them."""
    taken: dict[int, int] = {}  # item -> source credited, in merge order
    found_by: dict[int, int] = {}
    depth = max(len(found) for found in ranked)
    for position in range(min(depth, max(quotas))):
        for s, found in enumerate(ranked):
            if position < min(quotas[s], len(found)):
                item = found[position]
                found_by[item] = found_by.get(item, 0) | (1 << s)
                taken.setdefault(item, s)
    position = 0
    while len(taken) < wanted and position < depth:
        for s, found in enumerate(ranked):
            if quotas[s] <= position < len(found) and len(taken) < wanted:
                taken.setdefault(found[position], s)
        position += 1
    if len(taken) < wanted:  # the sources ran dry: the catalogue fills in index order
        for item in range(n_items):
            if len(taken) >= wanted:
                break
            taken.setdefault(item, -1)
    items = np.fromiter(taken.keys(), dtype=np.int64, count=len(taken))
    return Candidates(
        items=items,
        source=np.fromiter(taken.values(), dtype=np.int64, count=len(taken)),
        found_by=np.asarray([found_by.get(i, 0) for i in items.tolist()], dtype=np.int64),
    )
