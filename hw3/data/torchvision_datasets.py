"""torchvision's datasets: its own classes read (and download) the official files under data.root."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from hw3.config import DataConfig
from hw3.data.sources import DATASETS, FileReader, Source, Split
from hw3.errors import UserError


def torchvision_split(cls, cfg: DataConfig, expected: str, **kwargs):
    """Instantiate a torchvision dataset; 'not found' and failed downloads become one line that names the files
    expected, and a failed download takes back the folders and archives it created."""
    root = Path(cfg.root)
    existed = set(root.iterdir()) if root.is_dir() else None
    try:
        return cls(root=cfg.root, download=cfg.download, **kwargs)
    except (RuntimeError, OSError) as e:
        if not cfg.download:
            raise UserError(
                f"data.name={cfg.name}: files not found (or corrupt) under {root}: expected {expected}; set "
                f"data.download=true to fetch them, or data.root to the folder that holds them"
            ) from None
        for path in root.iterdir() if root.is_dir() else []:
            if existed is not None and path not in existed:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if existed is None:
            shutil.rmtree(root, ignore_errors=True)
        raise UserError(
            f"data.name={cfg.name}: download into {root} failed ({reason_of(e)}); with no network, put "
            f"the files there yourself: {expected}"
        ) from None


def reason_of(error: BaseException) -> str:
    """The whole message on one line (torchvision's "Error downloading x.gz:" puts the cause on the next line),
    or the underlying error's when torchvision's own is empty."""
    text = " ".join(str(error).split())
    cause = error.__cause__ or error.__context__
    if cause is not None and (not text or text.endswith(":")):
        text = f"{text} {type(cause).__name__}: {' '.join(str(cause).split())}".strip()
    return text[:240] or type(error).__name__


def _cifar(cls, cfg: DataConfig) -> Source:
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    expected = f"{cls.base_folder}/{{{','.join(names)}}} (the contents of {cls.url})"
    splits = []
    for train in (True, False):
        ds = torchvision_split(cls, cfg, expected, train=train)
        splits.append(Split(torch.tensor(ds.targets), torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()))
    return Source(splits[0], None, splits[1], list(ds.classes), channels=3, augment="crop_flip", crop_padding=4)


@DATASETS.register("mnist")
def mnist(cfg: DataConfig) -> Source:
    from torchvision.datasets import MNIST

    files = ",".join(name.removesuffix(".gz") for name, _ in MNIST.resources)
    expected = f"MNIST/raw/{{{files}}} (the IDX files, unzipped, from {MNIST.mirrors[0]})"
    splits = [torchvision_split(MNIST, cfg, expected, train=train) for train in (True, False)]
    train, test = (Split(ds.targets.long(), ds.data[:, None].contiguous()) for ds in splits)
    return Source(train, None, test, list(splits[0].classes), channels=1, augment="crop", crop_padding=2)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> Source:
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, cfg)


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> Source:
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, cfg)


@DATASETS.register("oxford_pet")
def oxford_pet(cfg: DataConfig) -> Source:
    """37 cat and dog breeds, photos of mixed sizes: read from disk per sample."""
    from torchvision.datasets import OxfordIIITPet

    archives = " and ".join(url for url, _ in OxfordIIITPet._RESOURCES)
    expected = f"oxford-iiit-pet/images/*.jpg and oxford-iiit-pet/annotations/{{trainval,test}}.txt (from {archives})"
    splits = []
    for split in ("trainval", "test"):
        ds = torchvision_split(OxfordIIITPet, cfg, expected, split=split, target_types="category")
        # torchvision keeps the paths and labels it parsed from annotations/<split>.txt in these two lists.
        splits.append(Split(torch.tensor(ds._labels), reader=FileReader([str(p) for p in ds._images], "RGB")))
    return Source(splits[0], None, splits[1], list(ds.classes), channels=3, augment="resized_crop_flip")
