"""Models come from timm's registry; hw3 adds two tiny ones to it and adapts ResNet stems to small images.

Small images: timm's ImageNet stem (a stride-2 conv and a stride-2 max-pool) shrinks a 32x32 CIFAR image to
8x8 before the first stage, so a ResNet sees 4x4 and 2x2 feature maps in its last stages and does ~16x less
work than it was designed to. The standard CIFAR adaptation (He et al. 2016, Sec. 4.2) is a 3x3 stride-1 first
conv and no max-pool; `small_input` applies it to the resnet/resnest families (on by default when training from
scratch at <= 64 px, off for pretrained models, whose stem weights expect the ImageNet layout).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional, Sequence

import timm
import torch
from timm.models import build_model_with_cfg, register_model
from torch import nn

from hw3.config import ModelConfig
from hw3.errors import UserError
from hw3.hub import go_offline_unless_reachable
from hw3.registry import did_you_mean

SMALL_INPUT_MAX_SIZE = 64  # px: at or below this, from-scratch resnets get the CIFAR stem by default


class SimpleMLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] x len(hidden_sizes) -> Linear. Input size comes from the data."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 28,
        hidden_sizes: Sequence[int] = (512, 256),
        drop_rate: float = 0.0,
        **_,
    ):
        super().__init__()
        sizes = [in_chans * img_size * img_size, *hidden_sizes]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
        self.body = nn.Sequential(*layers)
        self.num_features, self.num_classes = sizes[-1], num_classes  # timm's attributes (save_for_hf reads them)
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SimpleCNN(nn.Module):
    """Two 3x3 conv-BN-ReLU-maxpool blocks, a 4x4 adaptive average pool (keeps where strokes are), linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, drop_rate: float = 0.0, **_):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.body = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Dropout(drop_rate),
        )
        self.num_features, self.num_classes = 2 * width * 16, num_classes
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


# timm reads these like its own models' default cfgs: which tensor is the stem, which is the head.
default_cfgs = {
    "simple_mlp": dict(first_conv="body.1", classifier="head", mean=(0.5,), std=(0.5,), input_size=(1, 28, 28)),
    "simple_cnn": dict(first_conv="stem.0", classifier="head", mean=(0.5,), std=(0.5,), input_size=(1, 28, 28)),
}


@register_model
def simple_mlp(pretrained: bool = False, **kwargs) -> SimpleMLP:
    return build_model_with_cfg(SimpleMLP, "simple_mlp", pretrained, **kwargs)


@register_model
def simple_cnn(pretrained: bool = False, **kwargs) -> SimpleCNN:
    return build_model_with_cfg(SimpleCNN, "simple_cnn", pretrained, **kwargs)


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        raise UserError(
            f"model.name: unknown model '{name}'{did_you_mean(name, timm.list_models())} "
            f"(any timm model, or simple_mlp / simple_cnn)"
        )


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
    if name in default_cfgs:
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
    if cfg.name in default_cfgs:
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


def model_card(cfg: ModelConfig, model: nn.Module, spec, classes: list[str], from_disk: bool, tta: str) -> dict:
    """Everything `load_model` needs to rebuild the network around exported weights, and to feed it as its
    evaluation did (hw3.predict): images read from disk were resized to size / crop_pct and center-cropped, a split
    held in memory was resized whole; the logits averaged over `tta`'s views."""
    return dict(
        name=cfg.name,
        num_classes=len(classes),
        in_chans=spec.channels,
        image_size=spec.size,
        small_input=model.hw3_small_input,
        drop_rate=cfg.drop_rate,
        kwargs=cfg.kwargs,
        mean=list(spec.mean),
        std=list(spec.std),
        crop_pct=spec.crop_pct,
        eval_resize="center_crop" if from_disk else "resize",
        tta=tta,
        classes=classes,
    )


def model_from_card(card: dict, weights: dict[str, torch.Tensor]) -> nn.Module:
    """The network a model card describes, holding `weights` (accelerate's 'module.'/'_orig_mod.' prefixes of
    DDP/compiled checkpoints are dropped)."""
    cfg = ModelConfig(
        name=card["name"], small_input=card["small_input"], drop_rate=card["drop_rate"], kwargs=card["kwargs"]
    )
    model = build_model(cfg, card["num_classes"], card["in_chans"], card["image_size"], load_weights=False)
    clean = {}
    for key, value in weights.items():
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        clean[key] = value
    try:
        model.load_state_dict(clean)
    except RuntimeError as e:
        raise UserError(f"weights do not fit {card['name']} ({str(e).strip().splitlines()[0][:160]})") from None
    model.hw3_card = card  # classes and the normalization the model was trained with
    return model.eval()


def load_model(path: str, device: str = "cpu") -> nn.Module:
    """Rebuild a trained model from a run dir, its `best/` folder, or a `model.safetensors` beside `model.json`.

    One line for users: `model = hw3.load_model("runs/quickstart")`. `model.hw3_card` holds the classes and
    the normalization the model was trained with.
    """
    from safetensors.torch import load_file

    p = Path(path)
    weights = (
        p
        if p.suffix == ".safetensors"
        else (p / "best" / "model.safetensors" if (p / "best").is_dir() else p / "model.safetensors")
    )
    card_file = weights.with_name("model.json")
    if not weights.is_file() or not card_file.is_file():
        raise UserError(f"{path}: no model.safetensors with its model.json there")
    from hw3.storage import check_weights

    check_weights(weights, card_file)
    return model_from_card(json.loads(card_file.read_text()), load_file(str(weights))).to(device)
