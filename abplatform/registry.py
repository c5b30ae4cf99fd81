"""Name -> plug-in class registries, filled by decorators and entry points."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from abplatform.errors import UnknownNameError
from abplatform.strategy import Strategy

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of named plug-ins; third-party packages add theirs by entry point."""

    def __init__(self, what: str, group: str) -> None:
        self.what = what
        self.group = group
        self._items: dict[str, T] = {}
        self._entry_point_map: dict[str, EntryPoint] | None = None

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator registering a plug-in under `name`."""

        def decorator(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.what} {name!r} is already registered by {existing!r}")
            self._items[name] = obj
            return obj

        return decorator

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._entry_point_map is None:
            self._entry_point_map = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_point_map

    def names(self) -> list[str]:
        """All known names (registered or declared by an entry point), sorted."""
        return sorted(set(self._items) | set(self._entry_points()))

    def get_or_none(self, name: str) -> T | None:
        """The plug-in registered as `name`, or None when the name is unknown."""
        return self.get(name) if name in self._items or name in self._entry_points() else None

    def get(self, name: str) -> T:
        """The plug-in registered as `name`; unknown names list the known ones."""
        if name not in self._items and name in self._entry_points():
            try:
                obj: Any = self._entry_points()[name].load()
            except Exception as exc:  # a broken plug-in fails when used, not on start-up
                raise UnknownNameError(
                    f"{self.what} {name!r} could not be loaded: {type(exc).__name__}: {exc}",
                    hint=f"check the package that declares it in {self.group!r}",
                ) from exc
            self._items.setdefault(name, obj)
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(
                f"unknown {self.what} {name!r}; known: {known}",
                hint=f"register it with @register or the {self.group!r} entry point group",
            ) from None


strategies: Registry[type[Strategy]] = Registry("strategy kind", "abplatform.strategies")


def build_strategy(
    kind: str, params: Mapping[str, Any] | None = None, *, seed: int = 0
) -> Strategy:
    """Instantiate the strategy registered as `kind` with validated `params`."""
    factory: Any = strategies.get(kind)
    strategy: Strategy = factory(factory.Params.model_validate(dict(params or {})), seed=seed)
    return strategy
