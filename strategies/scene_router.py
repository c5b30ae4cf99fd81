"""Scene router: each page type (home, product detail, cart) gets its own strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from abplatform.domain import SCENES, InteractionLog, RecRequest, Slate
from abplatform.registry import strategies
from strategies.base import BaseStrategy, NestedStrategy, StrategyParams, check_k


class SceneRouterParams(StrategyParams):
    """Named strategies (declared and built once) and the scene -> name routes."""

    strategies: dict[str, NestedStrategy] = Field(min_length=1)
    routes: dict[str, str] = Field(default_factory=dict)
    default: str | None = None

    @model_validator(mode="after")
    def _routes_are_complete(self) -> SceneRouterParams:
        declared = sorted(self.strategies)
        problems = []
        for scene, target in self.routes.items():
            if scene not in SCENES:
                problems.append(f"routes.{scene}: unknown scene; known: {', '.join(SCENES)}")
            if target not in self.strategies:
                problems.append(
                    f"routes.{scene}: unknown route target {target!r}; "
                    f"declared strategies: {', '.join(declared)}"
                )
        if self.default is not None and self.default not in self.strategies:
            problems.append(
                f"default: unknown route target {self.default!r}; "
                f"declared strategies: {', '.join(declared)}"
            )
        missing = [scene for scene in SCENES if scene not in self.routes]
        if self.default is None and missing:
            problems.append(f"no route for scene(s) {', '.join(missing)} and no default")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@strategies.register("scene_router")
class SceneRouterStrategy(BaseStrategy):
    """Dispatches each request to the strategy routed for its scene.

    A request without a scene (or with a scene that has no route) goes to `default`; a
    router without a default routes every known scene, which validation enforces.
    """

    kind = "scene_router"
    Params: ClassVar[type[BaseModel]] = SceneRouterParams

    def fit(self, history: InteractionLog) -> None:
        """Build and fit every declared strategy once."""
        super().fit(history)
        params: SceneRouterParams = self.params
        self.routed: dict[str, Any] = {}
        for name, spec in params.strategies.items():
            self.routed[name] = self.fit_stage(spec, history)

    def route(self, request: RecRequest) -> str:
        """The name of the strategy that serves this request."""
        params: SceneRouterParams = self.params
        target = params.routes.get(request.scene or "", params.default)
        if target is None:  # a scene-less request on a router without a default
            target = params.routes[SCENES[0]]
        return target

    def recommend_batch(self, requests: Sequence[RecRequest], k: int) -> list[Slate]:
        """Group requests by route, ask each routed strategy once, keep the request order."""
        check_k(k)
        _ = self.catalog
        groups: dict[str, list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(self.route(request), []).append(position)
        slates: list[Slate | None] = [None] * len(requests)
        for target, positions in groups.items():
            batch = self.routed[target].recommend_batch([requests[i] for i in positions], k)
            for position, slate in zip(positions, batch, strict=True):
                slates[position] = slate
        return [slate for slate in slates if slate is not None]
