"""hw3's two tiny models, registered with timm like its own (`import hw3.models.simple` does it): timm's
create_model, save_for_hf and its Hub loader then treat them like any timm model."""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
from timm.models import build_model_with_cfg, register_model
from torch import nn


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
NAMES = tuple(default_cfgs)


@register_model
def simple_mlp(pretrained: bool = False, **kwargs) -> SimpleMLP:
    return build_model_with_cfg(SimpleMLP, "simple_mlp", pretrained, **kwargs)


@register_model
def simple_cnn(pretrained: bool = False, **kwargs) -> SimpleCNN:
    return build_model_with_cfg(SimpleCNN, "simple_cnn", pretrained, **kwargs)
