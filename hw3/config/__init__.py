"""The recipe: what every key means (schema), how YAML and `key=value` overrides become that tree (recipe), and
the tools components use to check their own section (rules, names).

hw3.config knows no component: the data, model, optimizer and schedule packages each check their own section
(`check_data`, `check_model`, `check_optim`, `check_sched`) and the engine checks the rest; hw3.engine.recipe runs
them all. It may import hw3.errors only.
"""

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
