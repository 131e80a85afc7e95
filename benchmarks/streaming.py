"""The streamed path (data.name=shards) at the cost of its parts, side by side in one process where it can be.

    python benchmarks/make_photos.py /tmp/bench/photos3k --images 3000
    python benchmarks/streaming.py loaders /tmp/bench/photos3k [--rounds 3]
    python benchmarks/streaming.py scale /tmp/bench/scale --sizes 10000 100000 1000000

`loaders`: the same 3,000 photos (64 px, random resized crop + flip + normalization, one intra-op thread, no
DataLoader workers) read four ways, interleaved round by round, images/s of one epoch each: hw3 on the image
folder, hw3 on those images written as tar shards (`python -m hw3.shards write`), a plain WebDataset pipeline
over the same shards, and `datasets` streaming over the same images written as parquet. Needs `pip install
webdataset` (not an hw3 dependency).
`scale`: tar shards of N small PNGs (10,000 a shard, made from a pool of 1,000 distinct images), then training
launches of simple_cnn on them (`train.max_steps` to stop): seconds to the first step and the launch's peak
memory, and what a resume costs, mid-epoch against at an epoch's start.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def transform(size: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])  # fmt: skip


def hw3_epoch(cfg_keys: dict, size: int, batch: int, epoch: int) -> float:
    from hw3.config import DataConfig
    from hw3.data import Data, open_source, resolve_input

    cfg = DataConfig(image_size=size, loader="dataloader", num_workers=0, **cfg_keys)
    src = open_source(cfg)
    data = Data(cfg, src, resolve_input(cfg, src, None), torch.device("cpu"), 1, 0, seed=0)
    return images_per_s(data.train_batches(epoch, batch))


def images_per_s(batches) -> float:
    n, started = 0, time.perf_counter()
    for x, _ in batches:
        n += len(x)
    return n / (time.perf_counter() - started)


def webdataset_epoch(urls: list[str], size: int, batch: int) -> float:
    import webdataset as wds

    t = transform(size)
    pipeline = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(1000)
                .decode("pil").to_tuple("jpg", "cls").map_tuple(lambda img: t(img.convert("RGB")), int))  # fmt: skip
    return images_per_s(torch.utils.data.DataLoader(pipeline.batched(batch), batch_size=None, num_workers=0))


def datasets_epoch(parquet: list[str], size: int, batch: int) -> float:
    import datasets

    t = transform(size)
    stream = datasets.load_dataset("parquet", data_files={"train": parquet}, split="train", streaming=True)
    stream = stream.shuffle(seed=0, buffer_size=1000).map(
        lambda r: {"x": t(r["image"].convert("RGB")), "y": r["label"]}, remove_columns=["image", "label"]
    )
    batches = torch.utils.data.DataLoader(stream, batch_size=batch)  # the map's tensors as they are, no Arrow trip
    return images_per_s((b["x"], b["y"]) for b in batches)


def loaders(args) -> None:
    from hw3.cli.shards import main as shards

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="hw3-streaming-"))
    common = ["data.name=imagefolder", f"data.root={args.folder}", "data.val_fraction=0.01"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert shards(["write", "--out", str(tmp / "tar"), "--samples-per-shard", "500", *common]) == 0
        assert (
            shards(["write", "--out", str(tmp / "pq"), "--format", "parquet", "--samples-per-shard", "500", *common])
            == 0
        )
    tars = sorted(str(p) for p in (tmp / "tar").glob("train-*.tar"))
    parquet = sorted(str(p) for p in (tmp / "pq").glob("train-*.parquet"))
    folder = dict(name="imagefolder", root=str(args.folder), val_fraction=0.01)
    ways = {
        "hw3, image folder": lambda e: hw3_epoch(folder, 64, 64, e),
        "hw3, tar shards": lambda e: hw3_epoch(dict(name="shards", path=str(tmp / "tar")), 64, 64, e),
        "webdataset, tar shards": lambda e: webdataset_epoch(tars, 64, 64),
        "datasets streaming, parquet": lambda e: datasets_epoch(parquet, 64, 64),
    }  # fmt: skip
    rates = {name: [] for name in ways}
    for epoch in range(args.rounds):
        for name, epoch_of in ways.items():
            rates[name].append(epoch_of(epoch))
    base = rates["hw3, image folder"]
    for name, values in rates.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(f"| {name} | {statistics.median(values):,.0f} img/s | {ratio:.2f}x |")


def write_shards(out: Path, n: int, per_shard: int = 10_000) -> None:
    """N 16 px PNGs of 10 classes as tar shards with an index (what hw3.shards would write), from 1,000 images."""
    from PIL import Image

    from hw3.data.shards.index import Shard, ShardIndex
    from hw3.data.shards.writer import write_tar

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(1000):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
        pool.append(buf.getvalue())
    shards = []
    for s, start in enumerate(range(0, n, per_shard)):
        count = min(per_shard, n - start)
        path = out / f"train-{s:05d}.tar"
        write_tar(path, [(f"{start + k:08d}", pool[(start + k) % 1000], "png", (start + k) % 10) for k in range(count)])
        shards.append(Shard(str(path), count, path.stat().st_size))
    val = out / "validation-00000.tar"
    write_tar(val, [(f"v{k:06d}", pool[k], "png", k % 10) for k in range(500)])
    index = ShardIndex("tar", [str(c) for c in range(10)], {"train": shards, "val": [Shard(str(val), 500)]}, 3, 16)
    (out / "index.json").write_text(index.to_json(relative_to=str(out)))


def launch(shards: Path, out: Path, *extra: str) -> tuple[float, float]:
    """(seconds to the first step, peak resident GiB) of one training launch."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--recipe", str(ROOT / "recipes/quickstart.yaml"),
           "data.name=shards", f"data.path={shards}", "data.num_workers=0", "data.max_eval_samples=64",
           "log.trackers=[]", "train.batch_size=256", f"output_dir={out}", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this launch's own peak (not the largest of all children so far)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            raise SystemExit(err.read().decode()[-2000:])
    peak = usage.ru_maxrss / 2**20
    state = json.loads(sorted((out / "checkpoints").glob("epoch*"))[-1].joinpath("trainer_state.json").read_text())
    return state["train"]["launches"][-1]["startup_s"], peak


def scale(args) -> None:
    print("| images | shards | writing them (s) | first step (s) | peak memory (GiB) | resumed after step 1: first "
          "step (s) | resumed 90% into the epoch: first step (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        shards = args.folder / f"n{n}"
        started = time.perf_counter()
        if not (shards / "index.json").is_file():
            write_shards(shards, n)
        wrote = time.perf_counter() - started
        deep = int(0.9 * -(-n // 256))  # 90% of an epoch's steps
        with tempfile.TemporaryDirectory() as tmp:
            first, peak = launch(shards, Path(tmp) / "a", "train.max_steps=1")
            near, _ = launch(shards, Path(tmp) / "a", "train.max_steps=2")
            launch(shards, Path(tmp) / "b", f"train.max_steps={deep}")
            far, _ = launch(shards, Path(tmp) / "b", f"train.max_steps={deep + 1}")
        print(f"| {n:,} | {-(-n // 10_000)} | {wrote:.1f} | {first:.1f} | {peak:.2f} | {near:.1f} | {far:.1f} |",
              flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    one = commands.add_parser("loaders")
    one.add_argument("folder", type=Path)
    one.add_argument("--rounds", type=int, default=3)
    two = commands.add_parser("scale")
    two.add_argument("folder", type=Path)
    two.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = p.parse_args()
    loaders(args) if args.command == "loaders" else scale(args)


if __name__ == "__main__":
    main()
