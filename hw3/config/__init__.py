"""The recipe: what every key means (schema), how YAML and overrides become it (recipe), what it allows
(validation)."""

from hw3.config.recipe import all_keys, dotted, flatten, load_config, parse_yaml, to_yaml
from hw3.config.schema import (
    Config,
    DataConfig,
    EarlyStopConfig,
    EvalConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    SchedConfig,
    TrainConfig,
    compile_mode,
    passes_per_step,
)

__all__ = [
    "Config",
    "DataConfig",
    "EarlyStopConfig",
    "EvalConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedConfig",
    "TrainConfig",
    "all_keys",
    "compile_mode",
    "dotted",
    "flatten",
    "load_config",
    "parse_yaml",
    "passes_per_step",
    "to_yaml",
]
