"""hw3's device-resident input path against torchvision's DataLoader with PIL transforms, on CIFAR-shaped data.

    python benchmarks/input_path.py [--images 20000] [--batch-size 512] [--workers 2] [--resize 224] [--device cpu]

Both produce normalized float batches of augmented images (random crop with 4 px padding, horizontal flip):
- hw3: the whole split as uint8 on the device; crop/flip/normalize per batch there (hw3.data.Data, loader=device);
- torchvision: a Dataset of PIL images, RandomCrop + RandomHorizontalFlip + ToTensor + Normalize per sample in
  `--workers` DataLoader processes, then copied to the device.
With --resize N both also resize to N px (hw3 on the device after the crop, torchvision in PIL).
Prints images/s of each and the ratio (goal >= 10x).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import median, sync
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hw3.config import DataConfig
from hw3.data import Data, InputSpec
from hw3.data.sources import Source, Split

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PILImages(Dataset):
    """What torchvision.datasets.CIFAR10 does per sample: uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_loader(images, labels, batch, workers, resize):
    from torchvision import transforms as T

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    steps += [T.Resize(resize)] if resize else []
    steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return DataLoader(
        PILImages(images, labels, T.Compose(steps)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def time_epoch(batches, device) -> float:
    sync(device)
    start = time.perf_counter()
    for x, _ in batches:
        x = x.to(device, non_blocking=True)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resize", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images)
    split = Split(torch.from_numpy(labels), torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    src = Source(split, split, None, [str(i) for i in range(10)], 3, augment="crop_flip", crop_padding=4)
    size = args.resize or 32
    ours = Data(
        DataConfig(name="synthetic", loader="device"),
        src,
        InputSpec(size, 3, list(MEAN), list(STD)),
        device,
        world=1,
        rank=0,
        seed=0,
    )
    theirs = torchvision_loader(images, labels, args.batch_size, args.workers, args.resize)
    time_epoch(ours.train_batches(0, args.batch_size), device), time_epoch(theirs, device)  # warm-up
    t_ours = median([time_epoch(ours.train_batches(e + 1, args.batch_size), device) for e in range(args.rounds)])
    t_theirs = median([time_epoch(theirs, device) for _ in range(args.rounds)])
    print(
        f"device {device}, {args.images} CIFAR-shaped images, batch {args.batch_size}, crop+flip"
        f"{f' + resize to {args.resize}' if args.resize else ''} + normalize, {args.rounds} epochs each (median)"
    )
    print(f"hw3 device-resident:            {args.images / t_ours:,.0f} img/s")
    print(f"torchvision PIL, {args.workers} workers:      {args.images / t_theirs:,.0f} img/s")
    print(f"ratio:                          {t_theirs / t_ours:.1f}x")


if __name__ == "__main__":
    main()
