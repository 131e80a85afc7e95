"""Datasets larger than a disk, read as a stream of shards by every process at once: WebDataset-style tar shards
or parquet files, in a local folder or at any fsspec URL (`data.name: shards`), and Hub datasets with
`data.streaming: true` (their parquet files).

- index: what the dataset holds (shards, sample counts, classes) without reading its samples;
- plan: which process visits which sample, in what order, every epoch (a pure function: exact resume);
- reader: one sample by its id, fetching its shard into a bounded local cache;
- writer: an image folder, a torchvision set or a Hub dataset written as shards with their index
  (`python -m hw3.shards`).

It may import what hw3.data may import.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from typing import Optional

import numpy as np

from hw3.config import DataConfig
from hw3.data.shards.index import Shard, ShardIndex, first_mode, load_index
from hw3.data.shards.reader import ShardFiles, ShardReader
from hw3.data.sources import DATASETS, Source
from hw3.errors import UserError
from hw3.storage.files import cache_dir


class StreamedSplit:
    """A split of a sharded dataset: its shards and a reader of its samples by id (0 .. len - 1, shard by shard
    in index order). Nothing of it is in memory."""

    streamed = True
    images = None

    def __init__(self, shards: list[Shard], reader: ShardReader):
        self.shards, self.reader = shards, reader
        self.counts = tuple(s.samples for s in shards)

    def __len__(self) -> int:
        return sum(self.counts)

    def read(self, i: int):
        return self.reader.read(i)


@DATASETS.register("shards")
def shards(cfg: DataConfig) -> Source:
    """data.path's shards (hw3.data.shards.index says what it may be)."""
    return streamed_source(load_index(cfg), cfg)


def streamed_source(index: ShardIndex, cfg: DataConfig) -> Source:
    """The index's splits as streamed splits: validation held out by whole shards when there is none, the caps
    taken as each split's first samples."""
    splits = dict(index.splits)
    if "val" not in splits:
        splits["train"], splits["val"] = hold_out_shards(splits["train"], cfg.val_fraction, cfg.split_seed, index)
    splits["train"] = first_samples(splits["train"], cfg.max_train_samples)
    for name in ("val", "test"):
        if name in splits:
            splits[name] = first_samples(splits[name], cfg.max_eval_samples)
    mode = "L" if index.channels == 1 else "RGB" if index.channels == 3 else first_mode(index)
    root = cache_dir("shards") / dataset_key(index) / f"rank{os.environ.get('RANK', '0')}"
    files = ShardFiles(root, cfg.cache_shards)
    # a window's shards stay open while it is read, and the next one's first
    reader = dict(kind=index.kind, files=files, image=index.image, label=index.label, mode=mode,
                  keep_open=cfg.shuffle_shards + 1, classes=len(index.classes))  # fmt: skip
    streamed = {n: StreamedSplit(s, ShardReader(s, **reader)) for n, s in splits.items()}
    small = index.side is not None and index.side <= 64  # like CIFAR: padded crops and flips, unless it said
    src = Source(
        streamed["train"],
        streamed.get("val"),
        streamed.get("test"),
        index.classes,
        1 if mode == "L" else 3,
        augment=index.augment or ("crop_flip" if small else "resized_crop_flip"),
        crop_padding=index.crop_padding if index.crop_padding is not None else index.side // 8 if small else 0,
        side=index.side,
        stats=(index.mean, index.std) if index.mean and index.std else None,
        note=f"streamed from {sum(len(s) for s in splits.values())} shards ({index.kind}) of {index.where}",
        lazy_reason="it is streamed from shards",
    )
    if cfg.num_classes is not None and cfg.num_classes != len(src.classes):
        raise UserError(f"data.num_classes: {cfg.num_classes} given, but {index.where} has {len(src.classes)} classes")
    return src


def dataset_key(index: ShardIndex) -> str:
    return hashlib.sha256("\n".join(s.url for s in index.splits["train"]).encode()).hexdigest()[:20]


def hold_out_shards(shards: list[Shard], fraction: float, seed: int, index: ShardIndex) -> tuple[list, list]:
    """(train, validation): a seeded `fraction` of the shards (at least one) held out whole; from a single shard,
    its last `fraction` of samples."""
    if len(shards) == 1:
        (only,) = shards
        k = min(max(1, round(only.samples * fraction)), only.samples - 1)
        if k < 1:
            raise UserError(
                f"data.val_fraction: {index.where} holds {only.samples} sample(s), too few to hold some out"
            )
        return [replace(only, samples=only.samples - k)], [
            replace(only, samples=k, offset=only.offset + only.samples - k)
        ]
    k = min(max(1, round(len(shards) * fraction)), len(shards) - 1)
    held = set(np.random.default_rng(seed).permutation(len(shards))[:k].tolist())
    return [s for i, s in enumerate(shards) if i not in held], [s for i, s in enumerate(shards) if i in held]


def first_samples(shards: list[Shard], cap: Optional[int]) -> list[Shard]:
    """The shards holding a split's first `cap` samples, the last one cut to what is needed."""
    if cap is None:
        return shards
    out, left = [], cap
    for shard in shards:
        if left <= 0:
            break
        out.append(replace(shard, samples=min(shard.samples, left)))
        left -= shard.samples
    return out
