"""The plug-in registry: decorators, entry points, unknown and broken names."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from abplatform.errors import UnknownNameError
from abplatform.registry import Registry, build_strategy, strategies


def test_builtin_strategies_come_from_entry_points() -> None:
    assert {"popularity", "random"} <= set(strategies.names())
    assert strategies.get("popularity").kind == "popularity"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        strategies.get("populrity")
    assert info.value.message == (
        f"unknown strategy kind 'populrity'; known: {', '.join(strategies.names())}"
    )


def test_decorator_registration_and_conflicts() -> None:
    registry: Registry[type] = Registry("widget", "abplatform.test-widgets")

    @registry.register("a")
    class A:
        pass

    assert registry.get("a") is A
    assert registry.names() == ["a"]
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a")(type("B", (), {}))


def test_broken_plugin_fails_only_when_used() -> None:
    registry: Registry[type] = Registry("widget", "abplatform.test-widgets")
    registry._entry_point_map = {
        "broken": EntryPoint("broken", "no_such_module_xyz:Thing", "abplatform.test-widgets")
    }
    assert registry.names() == ["broken"]
    with pytest.raises(UnknownNameError, match="widget 'broken' could not be loaded"):
        registry.get("broken")


def test_build_strategy_validates_params() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="window_days"):
        build_strategy("popularity", {"window_days": 0})
    assert build_strategy("popularity", {"window_days": 3}).params.window_days == 3  # type: ignore[attr-defined]
