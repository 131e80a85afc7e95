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
from hw3.errors import UserError
from hw3.registry import Registry

DATASETS: Registry[Callable[[DataConfig], "Source"]] = Registry("dataset")


def open_image(source, name: str, mode: str) -> Image.Image:
    """Decode one image fully (PIL is lazy) so a corrupt file fails here, naming the file."""
    try:
        with Image.open(source) as img:
            return img.convert(mode)
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
    noisy_labels: int = 0  # training labels flipped by data.label_noise

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None

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


# ----------------------------------------------------------------------------------------------------------
# Bundled and generated data: no download, ever.


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> Source:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0-16), with a fixed 20% test split."""
    pixels, target = read_digits()
    images = torch.from_numpy(np.rint(pixels.reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8))
    whole = Split(torch.from_numpy(target).long(), images)
    train, test = hold_out(whole, 0.2, cfg.split_seed + 1000)
    return Source(train, None, test, [str(c) for c in range(10)], channels=1)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits as load_digits gives them ((1797, 64) values 0-16, labels), read from the file scikit-learn
    bundles: importing scikit-learn took 1.1 s of the quickstart's 7 s start-up, reading the file 0.09 s."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise UserError("data.name=digits needs scikit-learn, which bundles them: pip install scikit-learn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # another layout of scikit-learn: its own loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


@DATASETS.register("synthetic")
def synthetic(cfg: DataConfig) -> Source:
    """Random images for smoke runs and benchmarks: per-class noise templates plus noise, so it is learnable."""
    size, channels, classes = cfg.image_size or 32, cfg.channels or 3, cfg.num_classes or 10
    gen = torch.Generator().manual_seed(cfg.split_seed)
    templates = torch.randint(0, 256, (classes, channels, size, size), generator=gen, dtype=torch.uint8)

    def make(n: int) -> Split:
        labels = torch.randint(0, classes, (n,), generator=gen)
        noise = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
        return Split(labels, templates[labels] // 2 + noise // 2)

    n_eval = cfg.max_eval_samples or 512
    return Source(
        make(cfg.max_train_samples or 2048),
        make(n_eval),
        make(n_eval),
        [f"class_{i}" for i in range(classes)],
        channels,
        augment="crop_flip",
        crop_padding=size // 8,
    )


# Shape of each dataset (channels, side in px or None for mixed sizes, classes), for smoke runs without the data.
SHAPES = {
    "digits": (1, 8, 10),
    "mnist": (1, 28, 10),
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "oxford_pet": (3, None, 37),
}


def smoke_source(cfg: DataConfig) -> Source:
    """Synthetic stand-in with the recipe's dataset's shape (data.channels/num_classes/image_size for Hub sets)."""
    channels, side, classes = SHAPES.get(cfg.name, (cfg.channels or 3, None, cfg.num_classes or 10))
    stand_in = replace(
        cfg, name="synthetic", channels=channels, num_classes=classes, image_size=side or cfg.image_size or 32
    )
    return synthetic(stand_in)


# The other builders register themselves when imported.
from hw3.data import hub_datasets, image_folders, torchvision_datasets  # noqa: E402, F401
