"""The recipe: a tree of dataclasses, loaded strictly from YAML plus `key=value` overrides.

Every field carries one comment: what it is and its unit. Loading is strict: an unknown key is an error with
the nearest valid key suggested, and every value is coerced to its field's declared type, so `1e-3` is the
float 0.001 and `no` stays the string "no". Components receive their own section (`cfg.optim`), never the
whole tree.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from hw3.errors import UserError
from hw3.registry import did_you_mean


@dataclass
class DataConfig:
    name: str = "digits"  # dataset: digits, mnist, cifar10, cifar100, oxford_pet, hf, imagefolder, synthetic
    root: str = "data"  # folder holding (or receiving) torchvision datasets; the tree for imagefolder
    download: bool = False  # let torchvision / the Hub fetch missing files (main process only)
    path: Optional[str] = None  # hf: Hub dataset id, local dataset folder, or parquet file(s)
    config_name: Optional[str] = None  # hf: dataset configuration name
    revision: Optional[str] = None  # hf: git revision on the Hub
    trust_remote_code: bool = False  # hf: allow dataset loading scripts (recent `datasets` refuse them anyway)
    image_column: Optional[str] = None  # hf: image column; null = the only Image feature
    label_column: Optional[str] = None  # hf: label column; null = the only ClassLabel feature
    val_fraction: float = 0.1  # share of train held out for validation when the source has no val split
    split_seed: int = 0  # seed of that hold-out and of the sample caps, fixed so every run sees the same split
    image_size: Optional[int] = None  # px (square); null = native size, or the pretrained model's input size
    num_classes: Optional[int] = None  # synthetic/smoke: classes (default 10); others: checked against the data
    channels: Optional[int] = None  # synthetic/smoke: image channels (default 3)
    max_train_samples: Optional[int] = None  # cap on training images (seeded subset); synthetic: its size
    max_eval_samples: Optional[int] = None  # cap on validation and test images (seeded subset)
    augment: Optional[str] = None  # none, flip, crop, crop_flip, resized_crop_flip; null = the dataset's default
    crop_padding: Optional[int] = None  # px of zero padding around random crops; null = the dataset's default
    auto_augment: Optional[str] = None  # randaugment or trivialaugment (torchvision), applied per sample
    mean: Optional[list[float]] = None  # per-channel mean in [0, 1]; null = dataset or pretrained statistics
    std: Optional[list[float]] = None  # per-channel std in [0, 1]; null = dataset or pretrained statistics
    loader: str = "auto"  # auto, device (whole split in device memory), dataloader (torch DataLoader)
    num_workers: Optional[int] = None  # DataLoader worker processes per training process; null = by device
    pin_memory: Optional[bool] = None  # page-locked host batches; null = on with CUDA
    persistent_workers: Optional[bool] = None  # keep workers across epochs; null = on when there are workers
    prefetch_factor: Optional[int] = None  # batches each worker prepares ahead; null = torch's default (2)


@dataclass
class ModelConfig:
    name: str = "simple_mlp"  # any timm model name, or hw3's simple_mlp / simple_cnn
    pretrained: bool = False  # start from timm's pretrained weights (downloaded from the HF Hub)
    pretrained_file: Optional[str] = None  # local weights file used instead of the Hub (implies pretrained)
    small_input: Optional[bool] = None  # 3x3 stride-1 stem, no max-pool; null = on for from-scratch <= 64 px
    drop_rate: float = 0.0  # dropout probability before the classifier
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments (hidden_sizes, ...)


@dataclass
class OptimConfig:
    name: str = "adamw"  # sgd, adam, adamw, muon, or sam (which wraps optim.base)
    lr: float = 1e-3  # peak learning rate, at the first batch size of the schedule
    weight_decay: float = 0.0  # decoupled for adamw/muon, L2 for sgd/adam
    decay_norm_and_bias: bool = False  # also decay 1-D tensors (norm weights, biases)
    momentum: float = 0.9  # sgd and muon momentum
    nesterov: bool = True  # sgd and muon: Nesterov momentum
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw (and muon's AdamW part)
    base: str = "sgd"  # sam: the optimizer taking the step (sgd, adam, adamw, muon)
    rho: float = 0.05  # sam: radius of the weight perturbation (ASAM wants about 10x more)
    adaptive: bool = False  # sam: ASAM, the perturbation scaled by |w|
    fallback_lr: Optional[float] = None  # muon: lr of the AdamW-trained tensors (norms, biases, stem, head); null = lr


@dataclass
class SchedConfig:
    name: str = "cosine"  # none, step, multistep, plateau, cosine, onecycle
    warmup_epochs: float = 0.0  # cosine: linear warm-up length in epochs (fractions allowed)
    warmup_start_factor: float = 0.1  # cosine: lr multiplier at the first warm-up step
    min_lr: float = 0.0  # lr floor: cosine's end value, plateau's lower bound
    step_size: int = 30  # step: epochs between decays
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which the lr decays
    gamma: float = 0.1  # step/multistep/plateau: multiplier at each decay
    monitor: str = "val_loss"  # plateau: val_loss (min) or val_acc (max)
    patience: int = 5  # plateau: epochs without improvement before a decay
    threshold: float = 1e-4  # plateau: relative improvement that counts
    pct_start: float = 0.3  # onecycle: share of the steps spent rising to the peak
    div_factor: float = 25.0  # onecycle: start lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = start lr / final_div_factor


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training split
    batch_size: int = 64  # images per forward, summed over all processes (the global batch)
    batch_size_schedule: Optional[dict[int, int]] = None  # {first epoch (from 0): global batch size}
    lr_scaling: str = "none"  # couple lr to the scheduled batch size: none, linear, sqrt
    grad_accum_steps: int = 1  # forwards per optimizer step
    max_steps: Optional[int] = None  # stop after this many optimizer steps (smoke runs, benchmarks)
    max_grad_norm: Optional[float] = None  # clip the global gradient L2 norm; null = no clipping
    mixed_precision: Optional[str] = None  # no, fp16, bf16; null = whatever `accelerate launch` says
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)
    mixup: float = 0.0  # mixup beta-distribution alpha; 0 = off
    cutmix: float = 0.0  # cutmix beta-distribution alpha; 0 = off
    ema_decay: Optional[float] = None  # weight EMA decay per step (e.g. 0.999); null = no EMA
    channels_last: Optional[bool] = None  # NHWC memory format; null = by model family and device
    compile: bool = False  # torch.compile the model
    eval_batch_size: Optional[int] = None  # global batch for evaluation; null = 2x batch_size
    resume: str = "auto"  # auto (newest checkpoint in the run dir), never, or a checkpoint folder
    overwrite: bool = False  # with resume=never: replace an existing run dir
    keep_last: int = 2  # rolling checkpoints kept (the best weights are kept apart)
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops


@dataclass
class EarlyStopConfig:
    monitor: str = "val_acc"  # val_acc (max) or val_loss (min); also picks the best checkpoint
    patience: Optional[int] = None  # epochs without improvement before stopping; null = never stop early
    min_delta: float = 0.0  # smallest change that counts as an improvement, in the monitor's units
    warmup_epochs: int = 0  # epochs before early stopping may fire


@dataclass
class LogConfig:
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb
    project: str = "hw3"  # WandB project / TensorBoard subfolder
    run_name: Optional[str] = None  # WandB run name; null = the run dir's name
    tags: list[str] = field(default_factory=list)  # WandB tags
    progress: Optional[bool] = None  # progress bar; null = only when stdout is a terminal
    log_every: int = 50  # steps between progress-bar loss updates (each one syncs the device)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0  # seeds python, numpy and torch on every process
    output_dir: Optional[str] = None  # run dir; null = runs/<recipe stem> (runs/smoke/<stem> in smoke mode)
    smoke: bool = False  # 2 steps on synthetic data of the recipe's shape, no download, random weights


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
    raw = parse_yaml(p.read_text(), str(path))
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
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return coerce(value, next(a for a in args if a is not type(None)), key)
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def build(cls: type, raw: Any, prefix: str = "") -> Any:
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
            kwargs[name] = build(tp, raw[name], f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(raw[name], tp, f"{prefix}{name}")
    return cls(**kwargs)


def load_config(recipe: Optional[str], overrides: list[str] = ()) -> Config:
    """The resolved, validated recipe: defaults < recipe file < `key=value` overrides."""
    raw = read_recipe(recipe) if recipe else {}
    for item in overrides:
        apply_override(raw, item)
    cfg = build(Config, raw)
    validate(cfg)
    return smoke_variant(cfg) if cfg.smoke else cfg


SMOKE_STEPS = 2
SMOKE_BATCH = 4  # per process: enough for BatchNorm, small enough for a ResNet-50 at 224 px on a laptop CPU


def smoke_variant(cfg: Config) -> Config:
    """The recipe shrunk to a check of its code path: 2 steps at a tiny batch on synthetic data of its shape
    (hw3.data.sources.smoke_source), random weights, no trackers, no compile; the model, optimizer, schedule,
    precision and augmentation are the recipe's."""
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
            max_steps=SMOKE_STEPS,
            compile=False,
            eval_batch_size=batch,
        ),
        log=dataclasses.replace(cfg.log, trackers=[]),
    )


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, default_flow_style=None)


def flatten(cfg: Config) -> dict[str, Union[bool, int, float, str]]:
    """`{'optim.lr': 0.001, ...}` with only scalars: what TensorBoard's hparams accept (lists and None as text)."""
    flat = {}
    for section, values in dataclasses.asdict(cfg).items():
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for key, value in items:
            name = f"{section}.{key}" if key is not None else section
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


# ----------------------------------------------------------------------------------------------------------
# Validation: ranges and choices, checked before anything heavy happens.


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _choice(key: str, value: Any, choices: tuple) -> None:
    _check(
        value in choices,
        f"{key}: '{value}' is not one of {', '.join(map(str, choices))}{did_you_mean(value, map(str, choices))}",
    )


def at_least(low):
    return (lambda v: v >= low), f"must be >= {low}"


def between(low, high, closed_low=True, closed_high=False):
    ok = lambda v: (low <= v if closed_low else low < v) and (v <= high if closed_high else v < high)  # noqa: E731
    return ok, f"must be in {'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"


# key: (test, what the value must be). Optional fields may also be null.
RULES = {
    "data.val_fraction": between(0, 1, closed_low=False),
    **{
        f"data.{k}": at_least(1)
        for k in ("image_size", "num_classes", "channels", "max_train_samples", "max_eval_samples", "prefetch_factor")
    },
    "data.num_workers": at_least(0),
    "data.crop_padding": at_least(0),
    "data.mean": ((lambda v: len(v) in (1, 3)), "give 1 or 3 values"),
    "data.std": ((lambda v: len(v) in (1, 3) and min(v) > 0), "give 1 or 3 values > 0"),
    "model.drop_rate": between(0, 1),
    "optim.lr": at_least(0),
    "optim.weight_decay": at_least(0),
    "optim.momentum": between(0, 1),
    "optim.betas": ((lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)), "give two values in [0, 1)"),
    "optim.rho": ((lambda v: v > 0), "must be > 0"),
    "optim.fallback_lr": at_least(0),
    "sched.min_lr": at_least(0),
    "sched.warmup_epochs": at_least(0),
    "sched.step_size": at_least(1),
    "sched.gamma": between(0, 1, closed_low=False, closed_high=True),
    "sched.pct_start": between(0, 1, closed_low=False),
    "sched.patience": at_least(0),
    **{
        f"train.{k}": at_least(1)
        for k in (
            "epochs",
            "batch_size",
            "grad_accum_steps",
            "max_steps",
            "eval_batch_size",
            "keep_last",
            "max_bad_steps",
        )
    },
    "train.max_grad_norm": ((lambda v: v > 0), "must be > 0"),
    "train.label_smoothing": between(0, 1),
    "train.mixup": at_least(0),
    "train.cutmix": at_least(0),
    "train.ema_decay": between(0, 1, closed_low=False),
    "train.resume": ((lambda v: bool(v.strip())), "auto, never, or a checkpoint folder"),
    "early_stop.patience": at_least(1),
    "early_stop.min_delta": at_least(0),
    "early_stop.warmup_epochs": at_least(0),
    "log.log_every": at_least(1),
}
CHOICES = {
    "data.loader": ("auto", "device", "dataloader"),
    "data.augment": ("none", "flip", "crop", "crop_flip", "resized_crop_flip"),
    "data.auto_augment": ("randaugment", "trivialaugment"),
    "sched.monitor": ("val_loss", "val_acc"),
    "train.lr_scaling": ("none", "linear", "sqrt"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "early_stop.monitor": ("val_acc", "val_loss"),
    "log.trackers": ("tensorboard", "wandb"),
}


def lookup(cfg: Config, key: str) -> Any:
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def validate(cfg: Config) -> None:
    """Ranges and choices (RULES, CHOICES), the few rules that tie fields together, and registry names."""
    for key, (ok, rule) in RULES.items():
        value = lookup(cfg, key)
        _check(value is None or ok(value), f"{key}: {rule}, got {value}")
    for key, choices in CHOICES.items():
        value = lookup(cfg, key)
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                _choice(key, item, choices)
    for epoch, size in (cfg.train.batch_size_schedule or {}).items():
        _check(epoch >= 0 and size >= 1, f"train.batch_size_schedule: {{{epoch}: {size}}} needs epoch >= 0, size >= 1")
    _check(cfg.data.name != "hf" or bool(cfg.data.path), "data.path: required with data.name=hf (a Hub id or a folder)")
    _check(cfg.optim.base != "sam", "optim.base: sam cannot wrap itself")
    _check(
        cfg.optim.name != "sam" or cfg.train.grad_accum_steps == 1,
        "train.grad_accum_steps: SAM needs the full-batch gradient for its perturbation; use 1 with optim.name=sam",
    )
    _check_names(cfg)


def _check_names(cfg: Config) -> None:
    """Registry names (dataset, optimizer, schedule, model) exist; imported lazily as they pull in torch."""
    from hw3.data.sources import DATASETS
    from hw3.models import check_model_name
    from hw3.optim import OPTIMIZERS
    from hw3.optim.schedules import SCHEDULES

    DATASETS.get(cfg.data.name, "data.name")
    OPTIMIZERS.get(cfg.optim.name, "optim.name")
    if cfg.optim.name == "sam":
        OPTIMIZERS.get(cfg.optim.base, "optim.base")
    SCHEDULES.get(cfg.sched.name, "sched.name")
    check_model_name(cfg.model.name)
