"""What each recipe key allows: ranges and choices, checked before anything heavy happens."""

from __future__ import annotations

from typing import Any

from hw3.config.schema import Config
from hw3.errors import UserError
from hw3.registry import did_you_mean

# ----------------------------------------------------------------------------------------------------------
# Validation: ranges and choices, checked before anything heavy happens.


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _choice(key: str, value: Any, choices: tuple) -> None:
    names = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]  # as YAML spells them
    _check(value in choices, f"{key}: '{value}' is not one of {', '.join(names)}{did_you_mean(value, names)}")


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
    "optim.layer_decay": between(0, 1, closed_low=False, closed_high=True),
    "optim.head_lr_scale": ((lambda v: v > 0), "must be > 0"),
    "train.freeze_backbone_epochs": at_least(0),
    "optim.sam_every": at_least(1),
    "optim.sam_batch_splits": at_least(1),
    "optim.looksam_alpha": at_least(0),
    "train.budget_passes": ((lambda v: v > 0), "must be > 0"),
    "data.label_noise": between(0, 1),
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
    "train.checkpoint_every_steps": at_least(1),
    "train.checkpoint_every_minutes": ((lambda v: v > 0), "must be > 0"),
    "train.collective_timeout_minutes": ((lambda v: v > 0), "must be > 0"),
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
    "optim.sam_variant": ("sam", "looksam", "momentum"),
    "eval.tta": ("none", "flip", "flip_shift"),
    "train.lr_scaling": ("none", "linear", "sqrt"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.compile": (False, True, "default", "reduce-overhead", "max-autotune"),
    "early_stop.monitor": ("val_acc", "val_loss"),
    "log.trackers": ("tensorboard", "wandb"),
}


def lookup(cfg: Config, key: str) -> Any:
    section, _, name = key.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, name)


def validate_config(cfg: Config) -> None:
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
    _check_sam_variants(cfg.optim)
    _check(
        cfg.optim.layer_decay is None or not cfg.optim.decay_norm_and_bias,
        "optim.decay_norm_and_bias: timm's layer-wise grouping never decays norms and biases; use false with "
        "optim.layer_decay",
    )
    _check_names(cfg)


def _check_sam_variants(optim) -> None:
    """The SAM variants' keys, set only where they mean something, in combinations that exist."""
    defaults = {"sam_variant": "sam", "sam_every": 1, "sam_batch_splits": 1, "looksam_alpha": 0.2}
    changed = [k for k, v in defaults.items() if getattr(optim, k) != v]
    _check(optim.name == "sam" or not changed, f"optim.{changed[0] if changed else ''}: only with optim.name=sam")
    if optim.sam_variant == "momentum":
        for key, ok in (("sam_every", optim.sam_every == 1), ("sam_batch_splits", optim.sam_batch_splits == 1)):
            _check(ok, f"optim.{key}: momentum SAM takes one pass every step; leave {key} at 1")
        _check(not optim.adaptive, "optim.adaptive: momentum SAM perturbs along the momentum, not |w| g; use false")
    _check(
        optim.sam_batch_splits == 1 or optim.sam_variant == "sam",
        "optim.sam_batch_splits: m-sharpness works with optim.sam_variant=sam",
    )
    _check(
        optim.looksam_alpha == 0.2 or optim.sam_variant == "looksam",
        "optim.looksam_alpha: only with optim.sam_variant=looksam",
    )


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
