"""Data that needs no download, ever: scikit-learn's bundled digits, and synthetic images (benchmarks, and the
stand-in of smoke runs, shaped like the recipe's dataset)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from hw3.config import DataConfig
from hw3.data.sources import DATASETS, Source, Split, hold_out
from hw3.errors import UserError


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
