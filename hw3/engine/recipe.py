"""A recipe every component has checked: `load_recipe` is what every command loads a recipe with.

hw3.config reads the YAML into typed sections; here each component checks its own (data, model, optim, sched) and
the engine the sections it owns itself (train, early_stop, eval, log) and the rules that tie sections together.
"""

from __future__ import annotations

from typing import Optional, Sequence

from hw3.config import Config, TrainConfig, load_config
from hw3.config.rules import at_least, between, check_section, positive, require
from hw3.data import check_data
from hw3.models import check_model
from hw3.optim import check_optim
from hw3.optim.schedules import check_sched
from hw3.runs.metrics import MONITORS

TRAIN_RULES = {
    **{
        k: at_least(1)
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
    "budget_passes": positive(),
    "max_grad_norm": positive(),
    "checkpoint_every_steps": at_least(1),
    "checkpoint_every_minutes": positive(),
    "collective_timeout_minutes": positive(),
    "label_smoothing": between(0, 1),
    "mixup": at_least(0),
    "cutmix": at_least(0),
    "ema_decay": between(0, 1, closed_low=False),
    "resume": ((lambda v: bool(v.strip())), "auto, never, or a checkpoint folder"),
    "freeze_backbone_epochs": at_least(0),
}
TRAIN_CHOICES = {
    "lr_scaling": ("none", "linear", "sqrt"),
    "mixed_precision": ("no", "fp16", "bf16"),
    "compile": (False, True, "default", "reduce-overhead", "max-autotune"),
}
TTA = ("none", "flip", "flip_shift")  # eval.tta: test-time augmentation views (hw3.engine.evaluation)
TRACKERS = ("tensorboard", "wandb")


def load_recipe(recipe: Optional[str], overrides: Sequence[str] = ()) -> Config:
    """The recipe file with its `key=value` overrides, typed and checked by every component."""
    cfg = load_config(recipe, list(overrides))
    check_recipe(cfg)
    return cfg


def check_recipe(cfg: Config) -> None:
    check_train(cfg.train)
    check_section(cfg.early_stop, "early_stop", {"patience": at_least(1), "min_delta": at_least(0),
                  "warmup_epochs": at_least(0)}, {"monitor": MONITORS})  # fmt: skip
    check_section(cfg.eval, "eval", {}, {"tta": TTA})
    check_section(cfg.log, "log", {"log_every": at_least(1)}, {"trackers": TRACKERS})
    check_data(cfg.data)
    check_optim(cfg.optim)
    check_sched(cfg.sched)
    check_model(cfg.model)  # last: the only check that may import timm (a name not in hw3's cached list)
    require(
        cfg.optim.name != "sam" or cfg.train.grad_accum_steps == 1,
        "train.grad_accum_steps: SAM needs the full-batch gradient for its perturbation; use 1 with optim.name=sam",
    )


def check_train(cfg: TrainConfig) -> None:
    check_section(cfg, "train", TRAIN_RULES, TRAIN_CHOICES)
    for epoch, size in (cfg.batch_size_schedule or {}).items():
        require(epoch >= 0 and size >= 1, f"train.batch_size_schedule: {{{epoch}: {size}}} needs epoch >= 0, size >= 1")
