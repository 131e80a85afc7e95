"""Where images come from: one builder per `data.name`, each returning train / val / test splits.

A split holds its labels and either all its images as one uint8 tensor (N, C, H, W) -- small datasets, which the
device-resident loader can keep on the GPU -- or a reader that decodes image i from disk on demand (photos of
mixed sizes, decoded in DataLoader workers). torchvision and `datasets` do the downloading and parsing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from hw3.config import DataConfig
from hw3.errors import UserError
from hw3.registry import Registry

DATASETS: Registry[Callable[[DataConfig], "Source"]] = Registry("dataset")

# The Hub's names for a held-out split, in order of preference.
HF_VAL_SPLITS = ("validation", "valid", "val", "dev")
# Hub/imagefolder sets with images up to this size are decoded into memory (like CIFAR), unless data.loader says no.
IN_MEMORY_MAX_SIDE = 64
IN_MEMORY_MAX_IMAGES = 200_000


def open_image(source, name: str, mode: str) -> Image.Image:
    """Decode one image fully (PIL is lazy) so a corrupt file fails here, naming the file."""
    try:
        with Image.open(source) as img:
            return img.convert(mode)
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {name}: {e}") from None


class FileReader:
    """Image i from a list of file paths."""

    def __init__(self, paths: list[str], mode: str):
        self.paths, self.mode = paths, mode

    def __call__(self, i: int) -> Image.Image:
        return open_image(self.paths[i], self.paths[i], self.mode)


class HubReader:
    """Image i from a `datasets.Dataset` column stored undecoded ({'bytes', 'path'})."""

    def __init__(self, table, column: str, mode: str, where: str):
        self.table, self.column, self.mode, self.where = table, column, mode, where

    def __call__(self, i: int) -> Image.Image:
        cell = self.table[int(i)][self.column]
        name = cell.get("path") or f"{self.where} row {int(i)}"
        return open_image(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"], name, self.mode)


class TakeReader:
    """A reader restricted to some indices (a subset of another reader)."""

    def __init__(self, reader, indices: torch.Tensor):
        self.reader, self.indices = reader, indices

    def __call__(self, i: int) -> Image.Image:
        return self.reader(int(self.indices[i]))


@dataclass
class Split:
    labels: torch.Tensor  # int64 (N,)
    images: Optional[torch.Tensor] = None  # uint8 (N, C, H, W) when the split lives in memory
    reader: Optional[Callable[[int], Image.Image]] = None  # otherwise: index -> PIL image

    def __len__(self) -> int:
        return len(self.labels)

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

    @property
    def in_memory(self) -> bool:
        return self.train.images is not None

    @property
    def native_size(self) -> Optional[int]:
        """Side of in-memory images (px), None for images of mixed sizes read from disk."""
        return self.train.images.shape[-1] if self.in_memory else None


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
    return src


# ----------------------------------------------------------------------------------------------------------
# Bundled and generated data: no download, ever.


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> Source:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0-16), with a fixed 20% test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images * (255 / 16)).astype(np.uint8))[:, None]
    whole = Split(torch.from_numpy(bunch.target).long(), images)
    train, test = hold_out(whole, 0.2, cfg.split_seed + 1000)
    return Source(train, None, test, [str(c) for c in bunch.target_names], channels=1)


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


# ----------------------------------------------------------------------------------------------------------
# torchvision datasets: its own classes read (and download) the official files under data.root.


def torchvision_split(cls, cfg: DataConfig, folder: str, **kwargs):
    """Instantiate a torchvision dataset, turning 'not found' and failed downloads into one clear line."""
    try:
        return cls(root=cfg.root, download=cfg.download, **kwargs)
    except (RuntimeError, OSError) as e:
        where = Path(cfg.root) / folder
        if cfg.download:
            raise UserError(
                f"data.name={cfg.name}: download into {where} failed ({str(e).splitlines()[0]}); "
                f"with no network, copy the files there yourself"
            ) from None
        raise UserError(
            f"data.name={cfg.name}: files not found (or corrupt) under {where}; set data.download=true "
            f"to fetch them, or data.root to the folder that holds {folder}/"
        ) from None


def _cifar(cls, cfg: DataConfig, folder: str) -> Source:
    splits = []
    for train in (True, False):
        ds = torchvision_split(cls, cfg, folder, train=train)
        splits.append(Split(torch.tensor(ds.targets), torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()))
    return Source(splits[0], None, splits[1], list(ds.classes), channels=3, augment="crop_flip", crop_padding=4)


@DATASETS.register("mnist")
def mnist(cfg: DataConfig) -> Source:
    from torchvision.datasets import MNIST

    splits = [torchvision_split(MNIST, cfg, "MNIST/raw", train=train) for train in (True, False)]
    train, test = (Split(ds.targets.long(), ds.data[:, None].contiguous()) for ds in splits)
    return Source(train, None, test, list(splits[0].classes), channels=1, augment="crop", crop_padding=2)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> Source:
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, cfg, "cifar-10-batches-py")


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> Source:
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, cfg, "cifar-100-python")


@DATASETS.register("oxford_pet")
def oxford_pet(cfg: DataConfig) -> Source:
    """37 cat and dog breeds, photos of mixed sizes: read from disk per sample."""
    from torchvision.datasets import OxfordIIITPet

    splits = []
    for split in ("trainval", "test"):
        ds = torchvision_split(OxfordIIITPet, cfg, "oxford-iiit-pet", split=split, target_types="category")
        # torchvision keeps the paths and labels it parsed from annotations/<split>.txt in these two lists.
        splits.append(Split(torch.tensor(ds._labels), reader=FileReader([str(p) for p in ds._images], "RGB")))
    return Source(splits[0], None, splits[1], list(ds.classes), channels=3, augment="resized_crop_flip")


# ----------------------------------------------------------------------------------------------------------
# The Hugging Face Hub (or a local copy in any format `datasets` reads), and image folders.


@DATASETS.register("hf")
def hub(cfg: DataConfig) -> Source:
    """Any image-classification dataset `datasets.load_dataset` can open: a Hub id, a folder, parquet files."""
    path = cfg.path
    kwargs = dict(name=cfg.config_name, revision=cfg.revision)
    if cfg.trust_remote_code:  # only ever passed when the recipe turns it on
        kwargs["trust_remote_code"] = True
    if path.endswith(".parquet") or Path(path).is_file():
        kwargs = dict(data_files={"train": path})
        path = "parquet"
    return from_hub(load_hub(path, cfg, **kwargs), cfg)


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> Source:
    """`data.root/train/<class>/*.jpg`, optional `val/` (or validation/) and `test/` with the same classes."""
    if not (Path(cfg.root) / "train").is_dir():
        raise UserError(
            f"data.root: {Path(cfg.root) / 'train'} is not a folder; imagefolder wants "
            f"<root>/train/<class>/<image> (plus optional val/ and test/)"
        )
    return from_hub(load_hub("imagefolder", cfg, data_dir=cfg.root), cfg)


def load_hub(path: str, cfg: DataConfig, **kwargs):
    import datasets

    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as e:  # datasets raises many types for "not there / offline"; all mean the same to a user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"data.path={cfg.path or path}: could not load the dataset ({reason}); offline, point "
            f"data.path at a local copy (a dataset folder or parquet files)"
        ) from None


def pick_column(features, wanted: Optional[str], kind, key: str, where: str) -> str:
    if wanted is not None:
        if wanted not in features:
            raise UserError(f"{key}: no column '{wanted}' in {where}; its columns: {', '.join(features)}")
        return wanted
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if key == "data.label_column" and not found:  # plain integer labels without class names
        found = [name for name in ("label", "labels") if name in features]
    if len(found) != 1:
        what = "several candidates: " + ", ".join(found) if found else "no candidate among: " + ", ".join(features)
        raise UserError(f"{key}: cannot tell which column of {where} to use ({what}); set {key}")
    return found[0]


def from_hub(dsd, cfg: DataConfig) -> Source:
    import datasets

    where = cfg.path or cfg.root
    if "train" not in dsd:
        raise UserError(f"data.path={where}: no 'train' split (splits: {', '.join(dsd)})")
    features = dsd["train"].features
    image_col = pick_column(features, cfg.image_column, datasets.Image, "data.image_column", where)
    label_col = pick_column(features, cfg.label_column, datasets.ClassLabel, "data.label_column", where)
    label_feature = features[label_col]
    val_name = next((name for name in HF_VAL_SPLITS if name in dsd), None)
    tables = {"train": dsd["train"], "val": dsd[val_name] if val_name else None, "test": dsd.get("test")}
    splits, mode = {}, None
    for name, table in tables.items():
        if table is None:
            continue
        labels = torch.from_numpy(np.asarray(table[label_col], dtype=np.int64))
        images = table.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
        mode = mode or ("L" if _is_gray(images, image_col) else "RGB")
        splits[name] = Split(labels, reader=HubReader(images, image_col, mode, f"{where}[{name}]"))
    if isinstance(label_feature, datasets.ClassLabel):
        classes = list(label_feature.names)
    else:
        classes = [str(i) for i in range(int(splits["train"].labels.max()) + 1)]
    src = Source(
        splits["train"],
        splits.get("val"),
        splits.get("test"),
        classes,
        1 if mode == "L" else 3,
        augment="resized_crop_flip",
    )
    if cfg.loader != "dataloader":
        decode_small(src)
    return src


def _is_gray(table, column: str) -> bool:
    cell = table[0][column]
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
    with Image.open(source) as img:
        return img.mode in ("L", "1", "I;16")


def decode_small(src: Source) -> None:
    """Decode small same-size images into uint8 tensors (CIFAR-like Hub sets), so they can live on the device."""
    first = src.train.reader(0)
    side = max(first.size)
    total = sum(len(s) for s in (src.train, src.val, src.test) if s is not None)
    if first.size[0] != first.size[1] or side > IN_MEMORY_MAX_SIDE or total > IN_MEMORY_MAX_IMAGES:
        return
    decoded = []
    for split in (src.train, src.val, src.test):
        if split is None:
            decoded.append(None)
            continue
        arrays = []
        for i in range(len(split)):
            img = split.reader(i)
            if img.size != first.size:
                return  # mixed sizes: stay on the per-sample path, which resizes
            arrays.append(np.asarray(img))
        stacked = torch.from_numpy(np.stack(arrays))
        stacked = stacked[:, None] if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)
        decoded.append(replace(split, images=stacked.contiguous(), reader=None))
    src.train, src.val, src.test = decoded
    src.augment, src.crop_padding = "crop_flip", side // 8
