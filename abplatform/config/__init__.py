"""Experiment configuration: pydantic models and a loader with readable errors."""

from abplatform.config.loader import (
    ConfigError,
    Problem,
    load_experiment,
    load_experiment_text,
    validate_config,
)
from abplatform.config.models import ExperimentConfig, VariantConfig

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "Problem",
    "VariantConfig",
    "load_experiment",
    "load_experiment_text",
    "validate_config",
]
