"""Optimizers by name, built through timm's optimizer factory from the recipe's `optim` section.

`sam` is not an optimizer of its own: `build_optimizer` builds its base optimizer (`optim.base`), and the training
step adds the two-pass sharpness-aware update around it (hw3.optim.sam).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from hw3.config import OptimConfig
from hw3.registry import Registry

OPTIMIZERS: Registry[Callable[[OptimConfig, nn.Module, torch.device], torch.optim.Optimizer]] = Registry("optimizer")


def build_optimizer(cfg: OptimConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `optim.name` names (for sam: its base), over `model`'s parameters, which live on `device`."""
    optimizer = OPTIMIZERS.get(cfg.name, "optim.name")(cfg, model, device)
    for group in optimizer.param_groups:
        # what the schedule scales each step: lr x the group's layer-wise (and head) scale
        group["initial_lr"] = group["lr"] * group.get("lr_scale", 1.0)
    return optimizer


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
