"""The contract every recommendation strategy plug-in fulfils."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from abplatform.domain import InteractionLog, RecRequest, Slate


@runtime_checkable
class Strategy(Protocol):
    """A recommendation strategy: fitted on history, then asked for slates."""

    kind: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def fit(self, history: InteractionLog) -> None:
        """Learn from the interaction history (and its catalogue)."""
        ...

    def recommend(self, request: RecRequest, k: int) -> Slate:
        """Return up to `k` distinct catalogue items for one request."""
        ...

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Return one slate per request; equal to calling `recommend` on each."""
        ...
