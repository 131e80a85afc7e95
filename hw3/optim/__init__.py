"""Optimizers and what happens around their step: optimizers by name, built through timm's optimizer factory
from the recipe's `optim` section (here), which checks its own section (`check_optim`); the learning-rate
schedules (schedules, `sched`); SAM and its variants as explicit passes around a base optimizer (sam); steps
skipped on the device when a gradient is not finite (nonfinite) and the weight EMA that skips with them (ema).

`sam` is not an optimizer of its own: `build_optimizer` builds its base optimizer (`optim.base`), and the training
step adds the two-pass sharpness-aware update around it. It may import hw3.errors, hw3.config and hw3.runs (the
plateau schedule's Monitor); timm is imported where an optimizer is built.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from hw3.config import OptimConfig
from hw3.config.names import Registry
from hw3.config.rules import at_least, between, check_section, positive, require

OPTIMIZERS: Registry[Callable[[OptimConfig, nn.Module, torch.device], torch.optim.Optimizer]] = Registry("optimizer")
SAM_VARIANTS = ("sam", "looksam", "momentum")
RULES = {
    "lr": at_least(0),
    "weight_decay": at_least(0),
    "momentum": between(0, 1),
    "betas": ((lambda v: len(v) == 2 and all(0 <= b < 1 for b in v)), "give two values in [0, 1)"),
    "rho": positive(),
    "layer_decay": between(0, 1, closed_low=False, closed_high=True),
    "head_lr_scale": positive(),
    "sam_every": at_least(1),
    "sam_batch_splits": at_least(1),
    "looksam_alpha": at_least(0),
    "fallback_lr": at_least(0),
}


def check_optim(cfg: OptimConfig) -> None:
    """The `optim` section: ranges, the optimizer's name (and SAM's base), the SAM variants' keys."""
    check_section(cfg, "optim", RULES, {"sam_variant": SAM_VARIANTS})
    OPTIMIZERS.get(cfg.name, "optim.name")
    require(cfg.base != "sam", "optim.base: sam cannot wrap itself")
    if cfg.name == "sam":
        OPTIMIZERS.get(cfg.base, "optim.base")
    check_sam_variants(cfg)
    require(
        cfg.layer_decay is None or not cfg.decay_norm_and_bias,
        "optim.decay_norm_and_bias: timm's layer-wise grouping never decays norms and biases; use false with "
        "optim.layer_decay",
    )


def check_sam_variants(cfg: OptimConfig) -> None:
    """The SAM variants' keys, set only where they mean something, in combinations that exist."""
    defaults = {"sam_variant": "sam", "sam_every": 1, "sam_batch_splits": 1, "looksam_alpha": 0.2}
    changed = [k for k, v in defaults.items() if getattr(cfg, k) != v]
    require(cfg.name == "sam" or not changed, f"optim.{changed[0] if changed else ''}: only with optim.name=sam")
    if cfg.sam_variant == "momentum":
        for key, ok in (("sam_every", cfg.sam_every == 1), ("sam_batch_splits", cfg.sam_batch_splits == 1)):
            require(ok, f"optim.{key}: momentum SAM takes one pass every step; leave {key} at 1")
        require(not cfg.adaptive, "optim.adaptive: momentum SAM perturbs along the momentum, not |w| g; use false")
    require(
        cfg.sam_batch_splits == 1 or cfg.sam_variant == "sam",
        "optim.sam_batch_splits: m-sharpness works with optim.sam_variant=sam",
    )
    require(
        cfg.looksam_alpha == 0.2 or cfg.sam_variant == "looksam",
        "optim.looksam_alpha: only with optim.sam_variant=looksam",
    )


def build_optimizer(cfg: OptimConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `optim.name` names (for sam: its base), over `model`'s parameters, which live on `device`."""
    optimizer = OPTIMIZERS.get(cfg.name, "optim.name")(cfg, model, device)
    set_initial_lr(cfg, optimizer)
    return optimizer


def set_initial_lr(cfg: OptimConfig, optimizer: torch.optim.Optimizer) -> None:
    """What the schedule scales each step, per group: optim.lr x the group's layer-wise (and head) scale. Called
    again after a checkpoint is restored (it brings its own copy): the lr applied is always the recipe's."""
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr * group.get("lr_scale", 1.0)


def applied_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr the optimizer applies at scale 1 (its first group's, without the group's own lr scale): what the
    metrics log."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


def head_parameters(model: nn.Module) -> set:
    """The classifier's parameters (timm's pretrained_cfg names the module; hw3's own models too)."""
    name = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier")
    if not name:
        return set()
    return set(model.get_submodule(name).parameters())


def param_groups(cfg: OptimConfig, model: nn.Module, fallback: list[str]):
    """timm's grouping: no weight decay on 1-D tensors (norms, biases) unless optim.decay_norm_and_bias; with
    optim.layer_decay, lr scales per layer below the head (timm's group_matcher layers); with optim.head_lr_scale,
    the classifier's tensors in groups of their own, their lr scale multiplied. Without either: the model, which
    timm groups itself."""
    if cfg.layer_decay is None and cfg.head_lr_scale == 1.0:
        return model
    from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay

    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    if cfg.layer_decay is not None:
        groups = param_groups_layer_decay(model, cfg.weight_decay, no_decay, fallback, layer_decay=cfg.layer_decay)
    else:
        groups = param_groups_weight_decay(
            model, cfg.weight_decay, not cfg.decay_norm_and_bias, no_decay, fallback_list=fallback
        )
    head, split = head_parameters(model), []
    for group in groups:
        for params, scale in (
            ([p for p in group["params"] if p not in head], 1.0),
            ([p for p in group["params"] if p in head], cfg.head_lr_scale),
        ):
            if params:
                split.append({**group, "params": params, "lr_scale": group.get("lr_scale", 1.0) * scale})
    return split


def _timm(
    opt: str, cfg: OptimConfig, model: nn.Module, fallback: Sequence[str] = (), **kwargs
) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    # filter_bias_and_bn: no weight decay on 1-D tensors (norm weights, biases) unless the recipe wants it.
    params = param_groups(cfg, model, list(fallback))
    if isinstance(params, nn.Module) and fallback:
        kwargs["fallback_list"] = list(fallback)
    return create_optimizer_v2(
        params, opt, lr=cfg.lr, weight_decay=cfg.weight_decay, filter_bias_and_bn=not cfg.decay_norm_and_bias, **kwargs
    )


def fused(cfg: OptimConfig) -> dict:
    """torch's fused kernels (one launch for the whole update) unless the recipe says no. They also take the
    step's non-finite flag as a device tensor and skip the update there, without a host read."""
    return dict(fused=cfg.fused is not False)


@OPTIMIZERS.register("sgd")
def sgd(cfg: OptimConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # timm's "sgd" is Nesterov SGD, its "momentum" the classic heavy-ball one; both are torch.optim.SGD.
    nesterov = cfg.nesterov and cfg.momentum > 0
    return _timm("sgd" if nesterov else "momentum", cfg, model, momentum=cfg.momentum, **fused(cfg))


@OPTIMIZERS.register("adam")
def adam(cfg: OptimConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return _timm("adam", cfg, model, betas=tuple(cfg.betas), **fused(cfg))


@OPTIMIZERS.register("adamw")
def adamw(cfg: OptimConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return _timm("adamw", cfg, model, betas=tuple(cfg.betas), **fused(cfg))


def muon_fallback_patterns(model: nn.Module) -> list[str]:
    """The stem conv and the classifier stay on AdamW: Muon's orthogonalized update suits hidden layers only."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    names = [cfg.get("first_conv"), cfg.get("classifier")]
    return [f"{name}.*" for name in names if name]


@OPTIMIZERS.register("muon")
def muon(cfg: OptimConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """timm's Muon: conv kernels flattened to matrices; 1-D tensors, the stem and the head go to AdamW at
    `optim.fallback_lr`. timm scales Muon's update to AdamW's RMS ("match_rms_adamw"), so one lr suits both
    and fallback_lr defaults to lr. On CUDA its step counters live on the device (capturable), so skipping a
    non-finite step needs no host read."""
    fallback_lr = cfg.fallback_lr if cfg.fallback_lr is not None else cfg.lr
    return _timm(
        "nmuon" if cfg.nesterov else "muon",
        cfg,
        model,
        momentum=cfg.momentum,
        betas=tuple(cfg.betas),
        fallback=muon_fallback_patterns(model),
        fallback_lr_scale=fallback_lr / cfg.lr if cfg.lr > 0 else 1.0,
        capturable=device.type == "cuda",
    )


@OPTIMIZERS.register("sam")
def sam_base(cfg: OptimConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """SAM is no optimizer of its own: its base takes the step; the training step adds the two passes."""
    return OPTIMIZERS.get(cfg.base, "optim.base")(cfg, model, device)


def routing_table(model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """Markdown table: each parameter, its shape, the update rule that trains it, its lr and weight decay.

    For Muon the rule is the optimizer's own decision (cached in its state on the first step), so call this after
    one step for the truth."""
    names = {p: n for n, p in model.named_parameters()}
    rows = ["| parameter | shape | update | lr at step 1 | weight decay |", "|---|---|---|---|---|"]
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "use_muon" in state:
                rule = "muon" if state["use_muon"] else "adamw (fallback)"
                lr = group["lr"] if state["use_muon"] else group["lr"] * group.get("fallback_lr_scale", 1.0)
            else:
                rule, lr = type(optimizer).__name__.lower(), group["lr"]
            shape = "x".join(map(str, p.shape))
            rows.append(f"| {names.get(p, '?')} | {shape} | {rule} | {lr:.3g} | {group['weight_decay']:.3g} |")
    return "\n".join(rows) + "\n"
