"""hw3's per-sample input path (photos read from disk, decoded and augmented one by one) at the cost of its parts,
against torchvision's ImageFolder + DataLoader with the same transforms, side by side in one process.

    python benchmarks/make_photos.py /tmp/photos3k --images 3000           # mixed-size JPEGs (BENCHMARKS.md)
    python benchmarks/loader_cost.py /tmp/photos3k [--rounds 5] [--size 64]

1. CPU time per image of the loader alone (decode, random resized crop, flip, normalize; no model), hw3's
   hw3.data.Data (data.loader=dataloader, num_workers=0) against torchvision's ImageFolder with the same
   torchvision v2 transforms, one intra-op thread, the two interleaved round by round; the median of the rounds.
2. End to end: images/s of one training epoch of a tiny MLP on those batches, hw3's training loop (in this
   process, through hw3's train command) against a plain PyTorch loop over torchvision's loader, interleaved.
Run it with PYTHONPATH pointing at another checkout to measure that one (the "before" of BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # what hw3 uses for photos read from disk


def torchvision_loader(root: Path, size: int, batch: int) -> DataLoader:
    from torchvision import datasets
    from torchvision.transforms import v2

    steps = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    folder = datasets.ImageFolder(str(root / "train"), transform=steps, loader=lambda p: rgb(p))
    return DataLoader(folder, batch_size=batch, shuffle=True, num_workers=0)


def rgb(path: str):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def hw3_data(root: Path, size: int):
    """hw3's Data for the folder's train split, as a training launch builds it (DataLoader path, no workers)."""
    from hw3.config import DataConfig
    from hw3.data import Data, resolve_input
    from hw3.data.sources import load_source

    cfg = DataConfig(name="imagefolder", root=str(root), image_size=size, loader="dataloader", num_workers=0)
    src = load_source(cfg)
    return Data(cfg, src, resolve_input(cfg, src, None), torch.device("cpu"), 1, 0, seed=0)


def cpu_per_image(batches) -> float:
    """CPU seconds per image of iterating `batches` once."""
    images, started = 0, time.process_time()
    for x, _ in batches:
        images += len(x)
    return (time.process_time() - started) / images


def loader_rounds(root: Path, size: int, batch: int, rounds: int) -> tuple[list, list]:
    data, theirs = hw3_data(root, size), torchvision_loader(root, size, batch)
    ours, tv = [], []
    for epoch in range(rounds):
        ours.append(cpu_per_image(data.train_batches(epoch, batch)))
        tv.append(cpu_per_image(theirs))
    return ours, tv


def hw3_epoch(root: Path, size: int, batch: int, out: Path) -> float:
    """Training images/s of one hw3 epoch (its own metrics.jsonl figure: training steps only)."""
    try:
        from hw3.cli.train import main
    except ImportError:  # a checkout from before hw3.cli became a package
        from hw3.cli import main
    args = ["--recipe", str(Path(__file__).resolve().parents[1] / "recipes/quickstart.yaml"), "data.name=imagefolder"]
    args += [f"data.root={root}", f"data.image_size={size}", "data.loader=dataloader", "data.num_workers=0"]
    args += ["model.name=simple_mlp", "model.kwargs={hidden_sizes: [64]}", f"train.batch_size={batch}"]
    args += ["train.epochs=1", "log.trackers=[]", "data.max_eval_samples=8", f"output_dir={out}"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(args) == 0
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["images_per_s"]


def plain_epoch(root: Path, size: int, batch: int) -> float:
    """Images/s of one epoch of the plain loop: torchvision's loader feeding the same MLP, AdamW."""
    loader = torchvision_loader(root, size, batch)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * size * size, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images, started = 0, time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images += len(y)
    return images / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="an image folder (root/train/<class>/...)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)
    ours, tv = loader_rounds(args.root, args.size, args.batch_size, args.rounds)
    ratios = [a / b for a, b in zip(ours, tv, strict=True)]
    print(f"loader alone, CPU per image: hw3 {statistics.median(ours) * 1e6:,.0f} us, torchvision "
          f"{statistics.median(tv) * 1e6:,.0f} us, hw3 / torchvision {statistics.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip
    e2e = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            e2e.append((hw3_epoch(args.root, args.size, args.batch_size, Path(tmp) / str(i)),
                        plain_epoch(args.root, args.size, args.batch_size)))  # fmt: skip
    ratios = [a / b for a, b in e2e]
    print(f"end to end, tiny MLP: hw3 {statistics.median(a for a, _ in e2e):,.0f} img/s, plain loop "
          f"{statistics.median(b for _, b in e2e):,.0f} img/s, hw3 / plain {statistics.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip


if __name__ == "__main__":
    main()
