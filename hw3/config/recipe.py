"""Reading a recipe: YAML (1.2 rules) plus `key=value` overrides, strictly, into the tree of hw3.config.schema.

Loading is strict: an unknown key is an error with the nearest valid key suggested, and every value is coerced to
its field's declared type, so `1e-3` is the float 0.001 and `no` stays the string "no". What values a section
allows is its component's business (hw3.engine.recipe.load_recipe runs every component's check).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from hw3.config.names import did_you_mean
from hw3.config.schema import Config, passes_per_step
from hw3.errors import UserError

# ----------------------------------------------------------------------------------------------------------
# YAML: PyYAML speaks YAML 1.1, where `no` is False, `1e-3` is a string and `010` is 8. Recipes are read with
# the YAML 1.2 core rules instead (still a SafeLoader: no Python objects), and duplicate keys are an error.


class RecipeLoader(yaml.SafeLoader):
    pass


RecipeLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[-1] not in ("bool", "int", "float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
RecipeLoader.add_constructor(
    "tag:yaml.org,2002:int",
    lambda loader, node: (
        int(text, 0) if (text := loader.construct_scalar(node)).startswith(("0o", "0x")) else int(text)
    ),
)


def _mapping_without_duplicates(loader: RecipeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


RecipeLoader.add_constructor("tag:yaml.org,2002:map", _mapping_without_duplicates)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}{line}: malformed YAML: {problem}") from None


def read_recipe(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe file '{path}' not found" if not p.exists() else f"recipe '{path}' is not a file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not a text file (byte 0x{e.object[e.start]:02x} at offset {e.start} is not UTF-8); a recipe is "
            f"YAML text"
        ) from None
    except OSError as e:
        raise UserError(f"recipe '{path}': cannot read it ({e.strerror or e})") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: a recipe must be a mapping of sections (data:, model:, ...), not a {type(raw).__name__}"
        )
    return raw


# ----------------------------------------------------------------------------------------------------------
# Overrides and coercion.


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the tree, e.g. 'optim.lr'."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += all_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def apply_override(raw: dict, item: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML) into the nested dict `raw`."""
    if "=" not in item:
        raise UserError(f"override '{item}' has no '=': write key=value, e.g. optim.lr=0.05")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{item}' has an empty key")
    value = parse_yaml(text, f"override '{key}'") if text.strip() else None
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, or raise a UserError naming key and value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:  # Optional[X]
            return None
        kinds = [a for a in args if a is not type(None)]
        for kind in kinds[:-1]:  # Union[bool, str]: the first type the value fits
            try:
                return coerce(value, kind, key)
            except UserError:
                pass
        return coerce(value, kinds[-1], key)
    if value is None:
        raise UserError(f"{key}: must not be null (expected {_type_name(tp)})")
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return {coerce(k, args[0], f"{key} key"): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()):
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # no recipe value means anything at inf or NaN
                raise UserError(f"{key}: must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def build_section(cls: type, raw: Any, prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a nested dict, strictly."""
    where = prefix.rstrip(".") or "recipe"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a section (a mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            full = f"{prefix}{key}"
            elsewhere = [k for k in all_keys() if k.rsplit(".", 1)[-1] == key]  # right name, wrong section
            hint = (
                f" (did you mean '{elsewhere[0]}'?)"
                if elsewhere
                else did_you_mean(full, all_keys()) or did_you_mean(key, names)
            )
            raise UserError(f"unknown key '{full}'{hint}")
    kwargs = {}
    for name in names & set(raw):
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_section(tp, raw[name], f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(raw[name], tp, f"{prefix}{name}")
    return cls(**kwargs)


def load_config(recipe: Optional[str], overrides: list[str] = ()) -> Config:
    """The recipe as typed: defaults < recipe file < `key=value` overrides, each value of its field's type (the
    components check what the values allow: hw3.engine.recipe.load_recipe)."""
    raw = read_recipe(recipe) if recipe else {}
    for item in overrides:
        apply_override(raw, item)
    cfg = build_section(Config, raw)
    cfg = with_budget(cfg)
    return smoke_variant(cfg) if cfg.smoke else cfg


def with_budget(cfg: Config) -> Config:
    """train.budget_passes sets train.epochs: as many epochs as the budget buys at the optimizer's cost per epoch
    (SGD at a budget of 200 trains 200 epochs, SAM 100), so strategies compared at one budget spend the same."""
    budget = cfg.train.budget_passes
    if budget is None:
        return cfg
    epochs = max(1, math.floor(budget / passes_per_step(cfg.optim) + 1e-9))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))


SMOKE_STEPS = 2
SMOKE_BATCH = 4  # per process: enough for BatchNorm, small enough for a ResNet-50 at 224 px on a laptop CPU


def smoke_variant(cfg: Config) -> Config:
    """The recipe shrunk to a check of its code path: one epoch of 2 steps at a tiny batch on synthetic data of its
    shape (hw3.data.sources.smoke_source), validated and tested; random weights, no trackers, no compile; the model,
    optimizer, schedule, precision and augmentation are the recipe's."""
    batch = SMOKE_BATCH * max(1, int(os.environ.get("WORLD_SIZE", "1")))
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            cfg.data, max_train_samples=SMOKE_STEPS * batch, max_eval_samples=2 * batch, download=False
        ),
        train=dataclasses.replace(
            cfg.train,
            epochs=1,
            batch_size=batch,
            batch_size_schedule=None,
            grad_accum_steps=1,
            compile=False,
            eval_batch_size=batch,
        ),
        log=dataclasses.replace(cfg.log, trackers=[]),
    )


def to_yaml(cfg: Config) -> str:
    """The resolved recipe in block style (one key per line), readable back by load_config."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, default_flow_style=False)


def dotted(cfg: Union[Config, dict]) -> dict[str, Any]:
    """`{'optim.lr': 0.001, 'seed': 0, ...}`: every key of the tree with its value (sections are one level deep).
    Also takes the tree as a plain dict (a run's config.yaml as read by yaml)."""
    out = {}
    for section, values in (cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)).items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        out.update({f"{section}.{key}" if key is not None else section: value for key, value in items})
    return out


def flatten(cfg: Config) -> dict[str, Union[bool, int, float, str]]:
    """dotted() with only scalars: what TensorBoard's hparams accept (lists and None as text)."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in dotted(cfg).items()}
