"""What a checkpoint costs: hw3's real save_checkpoint (accelerate's save_state, hw3's state, the manifest, fsync,
rename, pruning) after one SGD step (momentum buffers exist), and what verifying it on resume costs, per model.
The manifest's share (CRC-32 of every file) is timed on its own, and so is SHA-256 over the same files for
comparison.

    python benchmarks/checkpoint_cost.py [--models simple_cnn resnet18 resnet50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

from hw3.engine.build import build_run, make_accelerator
from hw3.engine.loop import train_one_epoch
from hw3.engine.recipe import load_recipe
from hw3.runs.checkpoints import save_checkpoint
from hw3.storage.manifest import crc32, verify


def run_for(model: str, run_dir: Path):
    size = 224 if model == "resnet50" else 32
    cfg = load_recipe(
        None,
        [
            "data.name=synthetic",
            f"data.image_size={size}",
            "data.max_train_samples=8",
            f"model.name={model}",
            "optim.name=sgd",
            "train.batch_size=8",
            "train.epochs=1",
            "log.trackers=[]",
            "log.progress=false",
            f"output_dir={run_dir}",
        ],
    )
    run = build_run(cfg, make_accelerator(cfg, run_dir), run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    train_one_epoch(run, 0, 8)  # one step: the optimizer has its momentum buffers
    return run


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["simple_cnn", "resnet18", "resnet50"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("| model | checkpoint | save (median) | of which CRC-32 manifest | SHA-256 instead | verify on resume |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            run = run_for(model, Path(tmp) / "run")
            saves, crcs, shas, verifies = [], [], [], []
            for i in range(args.repeats):
                own, shared = run.own(), run.components()
                saves.append(
                    timed(partial(save_checkpoint, run.accelerator, run.run_dir, (0, i + 1), shared, own, {}, 99))
                )
                folder = run.run_dir / "checkpoints" / f"epoch0000-batch{i + 1:06d}"
                files = [f for f in folder.iterdir() if f.name != "manifest.json"]
                crcs.append(timed(partial(list, map(crc32, files))))
                shas.append(timed(partial(list, map(sha256, files))))
                verifies.append(timed(partial(verify, folder)))
            size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
            med = lambda values: f"{statistics.median(values) * 1000:,.0f} ms"  # noqa: E731
            print(
                f"| {model} | {size:.1f} MB | {med(saves)} | {med(crcs)} | {med(shas)} | {med(verifies)} |", flush=True
            )


if __name__ == "__main__":
    main()
