"""Experiment configuration: pydantic models and a loader with readable errors."""

from abplatform.config.loader import load_experiment, load_experiment_text, validate_config
from abplatform.config.models import ExperimentConfig, VariantConfig
from abplatform.errors import ConfigError, ConfigProblem

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "ExperimentConfig",
    "VariantConfig",
    "load_experiment",
    "load_experiment_text",
    "validate_config",
]
