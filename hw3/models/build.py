"""Building a model: timm's registry (hw3's simple_mlp and simple_cnn included), pretrained weights, and ResNet
stems adapted to small images.

Small images: timm's ImageNet stem (a stride-2 conv and a stride-2 max-pool) shrinks a 32x32 CIFAR image to
8x8 before the first stage, so a ResNet sees 2x2 and 1x1 feature maps in its last stages and does ~16x less
work than it was designed to. The standard CIFAR adaptation (He et al. 2016, Sec. 4.2) is a 3x3 stride-1 first
conv and no max-pool; `small_input` applies it to the resnet/resnest families (on by default when training from
scratch at <= 64 px, off for pretrained models, whose stem weights expect the ImageNet layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from hw3.config import ModelConfig
from hw3.config.names import did_you_mean
from hw3.errors import UserError
from hw3.models.names import cached_model_names, remember_model_names
from hw3.models.simple import NAMES as SIMPLE_MODELS
from hw3.storage.hub import go_offline_unless_reachable

SMALL_INPUT_MAX_SIZE = 64  # px: at or below this, from-scratch resnets get the CIFAR stem by default


def check_model_name(name: str) -> None:
    """timm's verdict on `name`; a good one missing from hw3's cached list of timm's models writes the list."""
    if not timm.is_model(name):
        raise UserError(
            f"model.name: unknown model '{name}'{did_you_mean(name, timm.list_models())} "
            f"(any timm model, or simple_mlp / simple_cnn)"
        )
    if name.split(".")[0] not in cached_model_names():
        remember_model_names(timm.list_models())


def pretrained_data_config(cfg: ModelConfig) -> Optional[dict]:
    """The pretrained weights' input size, mean, std and crop_pct (from timm's cfg; nothing is downloaded)."""
    if not (cfg.pretrained or cfg.pretrained_file):
        return None
    pcfg = timm.models.get_pretrained_cfg(cfg.name)
    if pcfg is None:
        raise UserError(f"model.pretrained: timm has no pretrained weights for '{cfg.name}'")
    return pcfg.to_dict()


def has_resnet_stem(model: nn.Module) -> bool:
    first = model.pretrained_cfg.get("first_conv", "")
    conv = model.get_submodule(first) if first else None
    return isinstance(getattr(model, "maxpool", None), nn.Module) and isinstance(conv, nn.Conv2d)


def stem_adaptable(name: str) -> bool:
    """Does timm's `name` have the stem small_input adapts? (Built on the meta device: no memory, no weights.)"""
    if name in SIMPLE_MODELS:
        return False
    with torch.device("meta"):
        return has_resnet_stem(timm.create_model(name))


def wants_small_input(cfg: ModelConfig, model: nn.Module, image_size: int) -> bool:
    if cfg.small_input is not None:
        return cfg.small_input
    from_scratch = not (cfg.pretrained or cfg.pretrained_file)
    return from_scratch and image_size <= SMALL_INPUT_MAX_SIZE and has_resnet_stem(model)


def build_model(
    cfg: ModelConfig, num_classes: int, in_chans: int, image_size: int, load_weights: bool = True
) -> nn.Module:
    """timm.create_model with the recipe's arguments; pretrained weights from the Hub or `pretrained_file`."""
    check_model_name(cfg.name)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=cfg.drop_rate, **cfg.kwargs)
    if cfg.name in SIMPLE_MODELS:
        kwargs["img_size"] = image_size
    pretrained = load_weights and (cfg.pretrained or cfg.pretrained_file is not None)
    if pretrained and cfg.pretrained_file:
        if not Path(cfg.pretrained_file).is_file():
            raise UserError(f"model.pretrained_file: '{cfg.pretrained_file}' does not exist")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(cfg.pretrained_file))
    elif pretrained:
        go_offline_unless_reachable()  # no answer: the local cache only, at once, instead of a minute of retries
    try:
        model = timm.create_model(cfg.name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise UserError(f"model.kwargs: {cfg.name} does not take these arguments ({e})") from None
    except Exception as e:  # a missing, unreadable or mismatched weights file, or an unreachable Hub
        if not pretrained:
            raise
        raise UserError(pretrained_error(cfg, e)) from None
    model.hw3_small_input = wants_small_input(cfg, model, image_size)  # recorded in the exported model card
    if model.hw3_small_input:
        adapt_stem_to_small_input(model, cfg.name)
    check_forward(model, in_chans, image_size, cfg.name)
    return model


def pretrained_error(cfg: ModelConfig, error: Exception) -> str:
    """One whole line on why pretrained weights did not load."""
    reason = " ".join(str(error).split()) or type(error).__name__
    if cfg.pretrained_file:
        if "size mismatch" in reason or "Missing key" in reason or "Unexpected key" in reason:
            what = f"holds weights of another architecture than {cfg.name}"
        else:
            what = f"is not a weights file timm can read ({type(error).__name__}: {reason})"
        return (
            f"model.pretrained_file: {cfg.pretrained_file} {what}; give a safetensors/.pth file saved from {cfg.name}"
        )
    return (
        f"model.pretrained: {cfg.name}'s weights are not in the local cache and could not be downloaded "
        f"({type(error).__name__}); without a network, set model.pretrained_file to a weights file"
    )


def adapt_stem_to_small_input(model: nn.Module, name: str) -> None:
    """3x3 stride-1 first conv, no max-pool (resnet / resnest families)."""
    if not has_resnet_stem(model):
        raise UserError(f"model.small_input: only the resnet/resnest families have the stem it adapts, not {name}")
    first = model.pretrained_cfg["first_conv"]
    conv = model.get_submodule(first)
    if conv.kernel_size == (7, 7):  # plain ResNet: a fresh 3x3 conv replaces the 7x7 one
        new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None)
        parent, _, attr = first.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    else:  # deep stem (resnet*d, resnest): its first 3x3 conv keeps its weights, loses its stride
        conv.stride = (1, 1)
    model.maxpool = nn.Identity()


def check_forward(model: nn.Module, in_chans: int, image_size: int, name: str) -> None:
    """One tiny forward on the CPU, so an impossible input size is a clear error now, not a traceback later."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise UserError(
            f"data.image_size={image_size}: {name} cannot take {image_size}x{image_size} input "
            f"({str(e).strip().splitlines()[0][:160]})"
        ) from None
    finally:
        model.train(was_training)
