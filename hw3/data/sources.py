"""Where images come from: one builder per `data.name`, each returning train / val / test splits.

A split holds its labels and either all its images as one uint8 tensor (N, C, H, W) -- small datasets, which the
device-resident loader can keep on the GPU -- or a reader that decodes image i from disk on demand (photos of
mixed sizes, decoded in DataLoader workers). torchvision and `datasets` do the downloading and parsing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from hw3.config import DataConfig
from hw3.config.names import Registry
from hw3.errors import UserError

DATASETS: Registry[Callable[[DataConfig], "Source"]] = Registry("dataset")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VAL_SPLITS = ("validation", "valid", "val", "dev")  # what datasets on the Hub call a validation split
GRAY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes of one-channel images


def colour_mode(img: Image.Image) -> str:
    """ "L" for a one-channel image (any bit depth), "RGB" otherwise: the mode a dataset's images are read in."""
    return "L" if img.mode in GRAY_MODES else "RGB"


def in_mode(img: Image.Image, mode: str) -> Image.Image:
    """`img` in `mode` ("L" or "RGB"); 16- and 32-bit grayscale scaled to 8 bits first (PIL would clip it)."""
    if img.mode in GRAY_MODES[2:]:
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(array.max()), 1.0)
        img = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    return img.convert(mode)


def open_image(source, name: str, mode: str) -> Image.Image:
    """Decode one image fully (PIL is lazy) so a corrupt file fails here, naming the file."""
    try:
        with Image.open(source) as img:
            return in_mode(img, mode)
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {name}: {e}") from None


def image_size(source, name: str) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding it."""
    try:
        with Image.open(source) as img:
            return img.size
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {name}: {e}") from None


class FileReader:
    """Image i from a list of file paths."""

    def __init__(self, paths: list[str], mode: str):
        self.paths, self.mode = paths, mode

    def __call__(self, i: int) -> Image.Image:
        return open_image(self.paths[i], self.paths[i], self.mode)

    def size(self, i: int) -> tuple[int, int]:
        return image_size(self.paths[i], self.paths[i])


class TakeReader:
    """A reader restricted to some indices (a subset of another reader)."""

    def __init__(self, reader, indices: torch.Tensor):
        self.reader, self.indices = reader, indices

    def __call__(self, i: int) -> Image.Image:
        return self.reader(int(self.indices[i]))

    def size(self, i: int) -> tuple[int, int]:
        return self.reader.size(int(self.indices[i]))


@dataclass
class Split:
    labels: torch.Tensor  # int64 (N,)
    images: Optional[torch.Tensor] = None  # uint8 (N, C, H, W) when the split lives in memory
    reader: Optional[Callable[[int], Image.Image]] = None  # otherwise: index -> PIL image

    def __len__(self) -> int:
        return len(self.labels)

    def size(self, i: int) -> tuple[int, int]:
        """(width, height) of image i."""
        if self.images is not None:
            return self.images.shape[-1], self.images.shape[-2]
        return self.reader.size(i)

    def take(self, idx: torch.Tensor) -> "Split":
        images = self.images[idx] if self.images is not None else None
        reader = TakeReader(self.reader, idx) if self.reader is not None else None
        return Split(self.labels[idx], images, reader)


@dataclass
class Source:
    train: Split
    val: Optional[Split]  # None: carved from train by load_source
    test: Optional[Split]
    classes: list[str]
    channels: int  # 1 (grayscale) or 3 (RGB)
    augment: str = "none"  # the dataset's default training augmentation
    crop_padding: int = 0  # its default crop padding, px
    side: Optional[int] = None  # read from disk: the side all its images share (square), if they do
    note: str = ""  # how the images were prepared (decoded, read from the cache), for the console
    lazy_reason: str = ""  # why a set of small images is read from disk image by image, for the console
    stats: Optional[tuple[list[float], list[float]]] = None  # per-channel mean and std, when known without reading
    noisy_labels: int = 0  # training labels flipped by data.label_noise

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None

    @property
    def evaluated_whole(self) -> bool:
        """Are its images evaluated as they are, resized (small images of one size, like CIFAR, in memory or
        streamed), rather than center-cropped after a resize (photos)?"""
        return self.in_memory or (self.side is not None and self.side <= 64)

    @property
    def native_size(self) -> Optional[int]:
        """The images' own side (px) when they all share one square size, else None (mixed sizes)."""
        return self.train.images.shape[-1] if self.in_memory else self.side


def seeded_perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def hold_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held out): a seeded random `fraction` of the split, the same on every rank and every resume."""
    if len(split) < 2:
        raise UserError(f"data.val_fraction: the training split has {len(split)} image(s), too few to hold some out")
    perm = seeded_perm(len(split), seed)
    k = min(max(1, round(len(split) * fraction)), len(split) - 1)
    return split.take(perm[k:].sort().values), split.take(perm[:k].sort().values)


def cap(split: Optional[Split], limit: Optional[int], seed: int) -> Optional[Split]:
    """A seeded subset of at most `limit` images."""
    if split is None or limit is None or len(split) <= limit:
        return split
    return split.take(seeded_perm(len(split), seed)[:limit].sort().values)


def load_source(cfg: DataConfig) -> Source:
    """The dataset named by `cfg.name`, with its validation split and the sample caps applied."""
    src = DATASETS.get(cfg.name, "data.name")(cfg)
    if getattr(src.train, "streamed", False):  # its builder held out and capped whole shards
        return src
    if src.val is None:
        src.train, src.val = hold_out(src.train, cfg.val_fraction, cfg.split_seed)
    src.train = cap(src.train, cfg.max_train_samples, cfg.split_seed)
    src.val = cap(src.val, cfg.max_eval_samples, cfg.split_seed + 1)
    src.test = cap(src.test, cfg.max_eval_samples, cfg.split_seed + 2)
    if cfg.num_classes is not None and cfg.num_classes != len(src.classes) and cfg.name != "synthetic":
        raise UserError(f"data.num_classes: {cfg.num_classes} given, but {cfg.name} has {len(src.classes)} classes")
    if cfg.label_noise > 0:
        src.train, src.noisy_labels = with_label_noise(src.train, cfg.label_noise, len(src.classes), cfg.split_seed)
    return src


def with_label_noise(split: Split, share: float, classes: int, seed: int) -> tuple[Split, int]:
    """Symmetric label noise (the SAM paper's noisy-label study): a seeded `share` of the labels, each moved to one
    of the other classes drawn uniformly. The same images and new labels on every process and every resume."""
    gen = torch.Generator().manual_seed(seed + 3)
    flipped = torch.randperm(len(split), generator=gen)[: round(share * len(split))]
    labels = split.labels.clone()
    labels[flipped] = (labels[flipped] + torch.randint(1, classes, (len(flipped),), generator=gen)) % classes
    return replace(split, labels=labels), len(flipped)
