"""Load experiment YAML and report every problem as `path.to.field: what is wrong (got X)`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from abplatform.config.models import (
    LOGGING_SUFFIX,
    ExperimentConfig,
    MeanMetric,
    RatioMetric,
    ThompsonAssignmentConfig,
)
from abplatform.config.quantiles import QuantileMetric
from abplatform.errors import AbplatformError, ConfigError, ConfigProblem, UnknownNameError
from abplatform.registry import strategies
from abplatform.values import text_problem

WEIGHT_TOLERANCE = 1e-6
_METRIC_TAGS = ("proportion", "mean", "ratio", "quantile")
"""The discriminator tags of the metric types (left out of problem paths)."""
MAX_DEPTH = 32
"""Nesting of mappings and lists an experiment may have (a real one needs about 6)."""
MAX_VALUES = 100_000


class _DepthError(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting past MAX_DEPTH before composing it (no recursion)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        collection = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if collection and self.depth == MAX_DEPTH:
            raise _DepthError(self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        self.depth += collection
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= collection


def _join(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _pydantic_problems(exc: ValidationError, prefix: str = "") -> list[ConfigProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # Drop the discriminator tag pydantic inserts into union locations (e.g. "ratio").
        if len(loc) >= 3 and loc[0] == "metrics" and loc[2] in _METRIC_TAGS:
            loc = loc[:2] + loc[3:]
        if len(loc) >= 2 and loc[0] == "assignment" and loc[1] in ("hash", "thompson"):
            loc = loc[:1] + loc[2:]
        path = ".".join(p for p in (prefix, _join(loc)) if p)
        kind = err["type"]
        if kind == "extra_forbidden":
            problems.append(ConfigProblem(path, "unknown field", err["input"]))
        elif kind == "missing":
            problems.append(ConfigProblem(path, "field required", has_got=False))
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            problems.append(
                ConfigProblem(
                    f"{path}.type", f"unknown metric type; known: {_tags(ctx)}", ctx.get("tag")
                )
            )
        elif kind == "unknown_assignment_type":
            got = err["input"].get("type") if isinstance(err["input"], dict) else err["input"]
            problems.append(ConfigProblem(f"{path}.type", err["msg"], got))
        elif kind == "union_tag_not_found":
            problems.append(ConfigProblem(f"{path}.type", "field required", has_got=False))
        else:
            message = err["msg"].removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            problems.append(ConfigProblem(path, message, err.get("input")))
    return problems


def _tags(ctx: Mapping[str, Any]) -> str:
    return ", ".join(t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(","))


def _semantic_problems(config: ExperimentConfig) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    if not config.variants:
        problems.append(ConfigProblem("variants", "at least one variant is required", []))
        return problems
    total = math.fsum(variant.weight for variant in config.variants)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        weights = [variant.weight for variant in config.variants]
        problems.append(
            ConfigProblem("variants", f"weights must sum to 1 (they sum to {total:.6g})", weights)
        )
    seen: set[str] = set()
    for i, variant in enumerate(config.variants):
        if variant.key in seen:
            problems.append(
                ConfigProblem(f"variants.{i}.key", "duplicate variant key", variant.key)
            )
        seen.add(variant.key)
        if variant.strategy is not None:
            slate = config.simulation.slate_size if config.simulation is not None else None
            problems.extend(
                _strategy_problems(
                    f"variants.{i}.strategy", variant.strategy.kind, variant.strategy.params, slate
                )
            )
    if config.control is not None and config.control not in seen:
        problems.append(
            ConfigProblem(
                "control", f"not a variant key; variants: {', '.join(sorted(seen))}", config.control
            )
        )
    names: set[str] = set()
    for i, metric in enumerate(config.metrics):
        if metric.name in names:
            problems.append(
                ConfigProblem(f"metrics.{i}.name", "duplicate metric name", metric.name)
            )
        names.add(metric.name)
    for i, guardrail in enumerate(config.analysis.guardrails):
        if guardrail not in names:
            known = ", ".join(sorted(names)) or "none"
            message = f"not a metric name; metrics: {known}"
            problems.append(ConfigProblem(f"analysis.guardrails.{i}", message, guardrail))
    if isinstance(config.assignment, ThompsonAssignmentConfig):
        problems.extend(_bandit_problems(config, config.assignment))
    if config.simulation is not None:
        problems.extend(_logging_problems(config))
    return problems


MAX_KEY_LENGTH = 128


def _logging_problems(config: ExperimentConfig) -> list[ConfigProblem]:
    """The logging strategy must be a valid strategy; its experiment key must fit."""
    sim = config.simulation
    assert sim is not None
    spec = sim.logging_strategy
    problems = _strategy_problems(
        "simulation.logging_strategy", spec.kind, spec.params, sim.slate_size
    )
    if sim.logging_days > 0 and len(config.key) + len(LOGGING_SUFFIX) > MAX_KEY_LENGTH:
        limit = MAX_KEY_LENGTH - len(LOGGING_SUFFIX)
        message = (
            f"with simulation.logging_days the key may have at most {limit} characters "
            f"(the logging period is logged as <key>{LOGGING_SUFFIX})"
        )
        problems.append(ConfigProblem("key", message, len(config.key)))
    return problems


def _bandit_problems(
    config: ExperimentConfig, bandit: ThompsonAssignmentConfig
) -> list[ConfigProblem]:
    """A Thompson bandit needs a per-unit reward metric and a floor that fits its arms."""
    problems: list[ConfigProblem] = []
    arms = len(config.variants)
    if arms < 2:
        problems.append(
            ConfigProblem("variants", "a thompson bandit needs at least two variants", arms)
        )
    if bandit.min_weight * arms > 1:
        problems.append(
            ConfigProblem(
                "assignment.min_weight",
                f"min_weight * arms must be <= 1 ({bandit.min_weight:g} * {arms} arms = "
                f"{bandit.min_weight * arms:g}); lower it to at most {1 / arms:g}",
                bandit.min_weight,
            )
        )
    metric = next((m for m in config.metrics if m.name == bandit.reward_metric), None)
    if metric is None:
        known = ", ".join(m.name for m in config.metrics) or "none (add one under metrics:)"
        problems.append(
            ConfigProblem(
                "assignment.reward_metric",
                f"not a metric name; metrics: {known}",
                bandit.reward_metric,
            )
        )
    elif isinstance(metric, RatioMetric):
        problems.append(
            ConfigProblem(
                "assignment.reward_metric",
                "ratio metrics are not supported as a bandit reward (it needs one reward per "
                "unit); use a proportion metric (binary reward) or a mean metric (continuous)",
                bandit.reward_metric,
            )
        )
    elif isinstance(metric, QuantileMetric):
        problems.append(
            ConfigProblem(
                "assignment.reward_metric",
                "quantile metrics are not supported as a bandit reward (a quantile is not a "
                "mean of per-unit rewards); use a proportion metric or a mean metric",
                bandit.reward_metric,
            )
        )
    elif metric.window is not None:
        problems.append(
            ConfigProblem(
                "assignment.reward_metric",
                f"metric {metric.name!r} has a window: the bandit rewards a unit as soon as "
                "its events arrive, so its reward metric cannot wait for a window (drop the "
                "window or reward another metric)",
                bandit.reward_metric,
            )
        )
    elif isinstance(metric, MeanMetric) and metric.cap is not None:
        problems.append(
            ConfigProblem(
                "assignment.reward_metric",
                f"metric {metric.name!r} is capped: the bandit's rewards are the raw per-unit "
                "values, so a capped metric cannot be its reward (drop the cap or reward "
                "another metric)",
                bandit.reward_metric,
            )
        )
    return problems


def _strategy_problems(
    path: str, kind: str, params: Mapping[str, Any], slate_size: int | None = None
) -> list[ConfigProblem]:
    try:
        factory = strategies.get(kind)
    except UnknownNameError:
        known = ", ".join(strategies.names())
        return [ConfigProblem(f"{path}.kind", f"unknown strategy kind; known: {known}", kind)]
    try:
        validated = factory.Params.model_validate(dict(params))
    except ValidationError as exc:
        return _pydantic_problems(exc, prefix=f"{path}.params")
    # Params that bound how many items a slate can hold (a pipeline's candidates) say so.
    capacity = getattr(validated, "slate_capacity", None)
    if slate_size is not None and callable(capacity) and capacity() < slate_size:
        message = (
            f"the stages contribute {capacity()} candidates, fewer than "
            f"simulation.slate_size ({slate_size}); raise their n"
        )
        return [ConfigProblem(f"{path}.params", message, capacity())]
    return []


def _value_problems(data: Any) -> list[ConfigProblem]:
    """Text no database stores alike (NUL, lone surrogates); nesting or size past the limits."""
    problems: list[ConfigProblem] = []
    pending: list[tuple[str, int, Any]] = [("", 0, data)]
    visited = 0
    while pending:  # iterative, and bounded: aliases can make a small document huge
        path, depth, value = pending.pop()
        visited += 1
        if visited > MAX_VALUES:
            message = f"more than {MAX_VALUES} values (YAML aliases expanding?)"
            return [ConfigProblem("", message, has_got=False)]
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                problems.append(ConfigProblem(path, problem, value))
            continue
        if not isinstance(value, Mapping | list | tuple):
            continue
        if depth == MAX_DEPTH:
            message = f"nested deeper than {MAX_DEPTH} levels"
            return [ConfigProblem(path, message, has_got=False)]
        if isinstance(value, Mapping):
            for name, item in value.items():
                problem = text_problem(name) if isinstance(name, str) else None
                if problem is not None:
                    problems.append(ConfigProblem(path, f"a field name {problem}", name))
                    continue
                pending.append((f"{path}.{name}" if path else str(name), depth + 1, item))
        else:
            pending.extend(
                (f"{path}.{i}" if path else str(i), depth + 1, v) for i, v in enumerate(value)
            )
    return sorted(problems, key=lambda problem: problem.path)


def validate_config(data: Any, source: str | None = None) -> ExperimentConfig:
    """Validate a parsed YAML/JSON document; raise ConfigError listing every problem."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            [ConfigProblem("", "the experiment must be a mapping of fields", type(data).__name__)],
            source,
        )
    values = _value_problems(data)
    if values:
        raise ConfigError(values, source)
    try:
        config = ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc), source) from None
    problems = _semantic_problems(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def parse_yaml(text: str, source: str | None = None) -> Any:
    """Parse YAML text; syntax errors become a ConfigProblem with line and column."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader, bounded
    except _DepthError as exc:
        mark = exc.args[0]
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        message = f"nested deeper than {MAX_DEPTH} levels at {where}"
        raise ConfigError([ConfigProblem("yaml", message, has_got=False)], source) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = exc.problem or exc.context or "malformed YAML"
        raise ConfigError(
            [ConfigProblem("yaml", f"malformed YAML at {where}: {what}", has_got=False)], source
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            [ConfigProblem("yaml", f"malformed YAML: {exc}", has_got=False)], source
        ) from None


def load_experiment_text(text: str, source: str | None = None) -> ExperimentConfig:
    """Parse and validate experiment YAML (or JSON, which is YAML) text."""
    return validate_config(parse_yaml(text, source), source)


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Load and validate an experiment file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise AbplatformError(f"cannot read {file}: {exc.strerror or exc}") from None
    return load_experiment_text(text, str(file))


def build_params(kind: str, params: Mapping[str, Any]) -> BaseModel:
    """The validated parameter model of a strategy kind."""
    return strategies.get(kind).Params.model_validate(dict(params))
