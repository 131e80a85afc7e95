"""Augmentation and the last steps to model input.

Reproducibility rule: every random draw of an epoch comes from (seed, epoch) alone, one row per dataset index
(`draw`). Neither the worker that decodes a sample nor the order of earlier draws matters, so a run resumed in
the middle of an epoch sees exactly the images an uninterrupted run saw, and the device-resident path and the
DataLoader path produce the same batches for in-memory data (both call `crop_flip`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

POLICIES = ("none", "flip", "crop", "crop_flip", "resized_crop_flip")  # data.augment
CROPS = ("crop", "crop_flip")  # policies with a padded random crop
FLIPS = ("flip", "crop_flip")  # policies with a horizontal flip (resized_crop_flip flips inside torchvision)
AUTO_AUGMENTS = ("randaugment", "trivialaugment")  # data.auto_augment: torchvision's policies, per sample


@dataclass
class AugParams:
    """One epoch's random draws, indexed by dataset index."""

    dy: torch.Tensor  # int64 (N,): crop offset from the top of the padded image, px
    dx: torch.Tensor  # int64 (N,): crop offset from the left, px
    flip: torch.Tensor  # bool (N,): mirror horizontally
    seed: torch.Tensor  # int64 (N,): seeds torch's RNG for per-sample transforms (resized crop, RandAugment)

    def to(self, device) -> "AugParams":
        return AugParams(*(t.to(device) for t in (self.dy, self.dx, self.flip, self.seed)))


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def draw(n: int, seed: int, epoch: int, padding: int) -> AugParams:
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch) ^ 0x5EED)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    return AugParams(offsets[0], offsets[1], flip, torch.randint(0, 2**62, (n,), generator=gen))


def crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, policy: str, padding: int
) -> torch.Tensor:
    """Random crop after zero padding, and horizontal flip, for a uint8 batch (N, C, H, W) on any device.

    Both only choose which source pixel lands where, so they are one gather: the flip folded into the column
    index, rows and columns into one flat index per image (a quarter of the time of advanced indexing plus a
    torch.where on a CPU)."""
    crop, mirror = policy in CROPS and padding > 0, policy in FLIPS
    if not (crop or mirror):
        return x
    n, c, h, w = x.shape
    pad = padding if crop else 0
    if pad:
        x = F.pad(x, (pad,) * 4)
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    rows = (dy[:, None] if crop else 0) + ar_h.expand(n, h)
    cols = (dx[:, None] if crop else 0) + (
        torch.where(flip[:, None], w - 1 - ar_w, ar_w) if mirror else ar_w.expand(n, w)
    )
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


def auto_augment(name: Optional[str]):
    from torchvision.transforms import v2

    return {None: None, AUTO_AUGMENTS[0]: v2.RandAugment(), AUTO_AUGMENTS[1]: v2.TrivialAugmentWide()}[name]


def photo_transform(policy: str, size: int, padding: int, crop_pct: float, auto: Optional[str], train: bool):
    """PIL photo -> uint8 tensor (C, size, size), timm-style: random resized crop for training, resize and
    center crop (size / crop_pct first) for evaluation."""
    from torchvision.transforms import v2

    if not train:
        steps = [v2.Resize(int(size / crop_pct), antialias=True), v2.CenterCrop(size)]
    elif policy == "resized_crop_flip":
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        steps += [v2.RandomCrop(size, padding=padding)] if policy in CROPS and padding else []
        steps += [v2.RandomHorizontalFlip()] if policy in FLIPS else []
    steps += [auto_augment(auto)] if train and auto else []
    return v2.Compose([v2.PILToTensor(), *steps])


class InputStage:
    """uint8 batch -> the model's input: float, resized to `size`, grayscale repeated to RGB when the model wants
    3 channels, normalized, optionally channels-last. Runs on the training device, once per batch."""

    def __init__(
        self, size: int, channels: int, mean: Sequence[float], std: Sequence[float], device, channels_last: bool = False
    ):
        self.size, self.channels, self.channels_last = size, channels, channels_last
        mean, std = torch.tensor(mean, device=device), torch.tensor(std, device=device)
        # (x / 255 - mean) / std == x * scale - shift: one fused multiply-add on the device.
        self.scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
        self.shift = (mean / std).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > self.size
            )
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        x = torch.addcmul(-self.shift, x, self.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of a uint8 (N, C, H, W) tensor, exact, from each channel's histogram of
    its 256 values (one pass of bincount: 0.2 s for 50,000 CIFAR images, where float sums took 3-6 s)."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        m = (counts * values).sum() / total
        var = (counts * values * values).sum() / total - m * m
        mean.append(float(m))
        std.append(float(var.clamp_min(1e-12).sqrt()))
    return mean, std
