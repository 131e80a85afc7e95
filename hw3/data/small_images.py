"""Image folders and Hub sets whose images all share one small square size (CIFAR-like) are decoded into uint8
tensors, so they train like CIFAR (device-resident, augmented on the device); others are read image by image in
DataLoader workers. Both paths follow one size rule: the images' own side when they share one (and neither
`data.image_size` nor pretrained weights say otherwise), else 224.

Decoding goes through the cache of hw3.data.cache: a relaunch, a resume or a second process reads the tensors
back instead of decoding every image again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import numpy as np
import torch

from hw3.config import DataConfig
from hw3.data.cache import cached
from hw3.data.sources import Source, Split

# Sets with images up to this side are decoded into memory (like CIFAR), unless data.loader says no, or unless
# they hold more than IN_MEMORY_MAX_IMAGES images, train, validation and test counted together.
IN_MEMORY_MAX_SIDE = 64
IN_MEMORY_MAX_IMAGES = 200_000
SIZE_SAMPLE = 1000  # images whose headers decide a lazy set's common size (spread evenly over each split)


def splits_of(src: Source) -> dict[str, Split]:
    return {name: s for name, s in (("train", src.train), ("val", src.val), ("test", src.test)) if s is not None}


def common_side(src: Source) -> Optional[int]:
    """The side every sampled image has, if they are all square and alike (header reads, no decoding)."""
    sizes = set()
    for split in splits_of(src).values():
        for i in np.linspace(0, len(split) - 1, min(len(split), SIZE_SAMPLE)).astype(int):
            sizes.add(split.size(int(i)))
            if len(sizes) > 1:
                return None
    ((width, height),) = sizes
    return width if width == height else None


def settle(src: Source, cfg: DataConfig, describe: Callable[[], dict]) -> Source:
    """Decode `src` into memory when its images are small and alike (through the cache), else keep it lazy with
    its common side noted. `describe()` says what the images are, to key the cache: called only when the cache
    applies (for an image folder it stats every file)."""
    total = sum(len(s) for s in splits_of(src).values())
    if cfg.loader == "dataloader":
        return replace(src, side=common_side(src), lazy_reason="data.loader=dataloader")
    if total > IN_MEMORY_MAX_IMAGES:
        return replace(
            src,
            side=common_side(src),
            lazy_reason=f"{total:,} images (train, validation and test together) are over the {IN_MEMORY_MAX_IMAGES:,} "
            f"that are decoded into memory",
        )
    side = common_side(src)
    if side is None:
        return replace(src, side=None, lazy_reason="its images differ in size")
    if side > IN_MEMORY_MAX_SIDE:
        return replace(src, side=side, lazy_reason=f"its images are over {IN_MEMORY_MAX_SIDE} px")
    try:
        tensors, how = cached(lambda: dict(describe(), side=side), lambda: decode(src, side), cfg.cache)
    except MixedSizes:
        return replace(src, side=None, lazy_reason="its images differ in size")
    splits = {name: replace(split, images=tensors[name], reader=None) for name, split in splits_of(src).items()}
    return replace(
        src,
        train=splits["train"],
        val=splits.get("val"),
        test=splits.get("test"),
        augment="crop_flip",
        crop_padding=side // 8,
        note=f"{total:,} images {how}",
    )


class MixedSizes(Exception):
    """An image of another size turned up while decoding (the sample did not see it)."""


def decode(src: Source, side: int) -> dict[str, torch.Tensor]:
    out = {}
    for name, split in splits_of(src).items():
        arrays = []
        for i in range(len(split)):
            array = np.asarray(split.reader(i))
            if array.shape[:2] != (side, side):
                raise MixedSizes
            arrays.append(array)
        stacked = torch.from_numpy(np.stack(arrays))
        out[name] = (stacked[:, None] if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)).contiguous()
    return out
