"""Writing a dataset as shards with their index: what `python -m hw3.shards` does, so that an image folder, a
torchvision set or a Hub dataset can move to the streamed path in one command.

Each split's samples are written in a seeded random order (the stream shuffles within a window of shards, so
shards written class by class would train class by class), `samples_per_shard` to a shard: WebDataset tar shards
(`<key>.<ext>` holding the image file's own bytes when there is a file, PNG otherwise, and `<key>.cls`) or parquet
files (the `datasets` Image layout and a ClassLabel, like the Hub's). `index.json` lists every shard with its
sample count, size and CRC-32, the classes, the images' channels and common size.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from hw3.data.hub_datasets import HubReader
from hw3.data.shards.index import INDEX, Shard, ShardIndex
from hw3.data.sources import FileReader, Source, TakeReader
from hw3.errors import UserError
from hw3.storage.files import write_atomic
from hw3.storage.manifest import crc32

SPLIT_FILES = {"train": "train", "val": "validation", "test": "test"}


def encoded(split, i: int, mode: str) -> tuple[bytes, str]:
    """(the image's bytes, its extension): the file itself when the split reads files or a Hub set's encoded
    images, else a PNG."""
    reader, index = split.reader, i
    while isinstance(reader, TakeReader):
        reader, index = reader.reader, int(reader.indices[index])
    if isinstance(reader, FileReader):
        path = Path(reader.paths[index])
        return path.read_bytes(), path.suffix.lstrip(".").lower()
    if isinstance(reader, HubReader):  # a Hub set's encoded image, as stored
        source, _ = reader.cell(index)
        if not isinstance(source, io.BytesIO):
            return Path(source).read_bytes(), Path(source).suffix.lstrip(".").lower()
        with Image.open(source) as img:
            kind = (img.format or "png").lower()
        return source.getvalue(), {"jpeg": "jpg"}.get(kind, kind)
    if split.images is not None:
        pixels = split.images[i].numpy()
        img = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    else:
        img = split.reader(i)
    out = io.BytesIO()
    img.convert(mode).save(out, format="PNG")
    return out.getvalue(), "png"


def write_tar(path: Path, samples: list[tuple[str, bytes, str, int]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, data, ext, label in samples:
            for name, payload in ((f"{key}.{ext}", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(payload), 0o644, 0
                tar.addfile(info, io.BytesIO(payload))


def write_parquet(path: Path, samples: list[tuple[str, bytes, str, int]], classes: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": classes}}
    images = pa.array([{"bytes": d, "path": f"{k}.{e}"} for k, d, e, _ in samples],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    table = pa.table({"image": images, "label": pa.array([s[3] for s in samples], type=pa.int64())})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path, row_group_size=256)


def write_shards(src: Source, out: Path, per_shard: int, kind: str, seed: int, say=print) -> ShardIndex:
    """Every split of `src` into `out` as shards of `per_shard` samples, and index.json; returns the index."""
    out.mkdir(parents=True, exist_ok=True)
    mode = "L" if src.channels == 1 else "RGB"
    splits: dict[str, list[Shard]] = {}
    for n, (name, split) in enumerate((("train", src.train), ("val", src.val), ("test", src.test))):
        if split is None:
            continue
        order = np.random.default_rng([seed, n]).permutation(len(split))
        splits[name] = []
        for number, start in enumerate(range(0, len(order), per_shard)):
            chunk = order[start : start + per_shard].tolist()
            samples = [(f"{SPLIT_FILES[name]}{number:05d}_{k:06d}", *encoded(split, i, mode), label_of(split, i))
                       for k, i in enumerate(chunk)]  # fmt: skip
            path = out / f"{SPLIT_FILES[name]}-{number:05d}.{'tar' if kind == 'tar' else 'parquet'}"
            write_tar(path, samples) if kind == "tar" else write_parquet(path, samples, src.classes)
            splits[name].append(Shard(str(path), len(chunk), path.stat().st_size, crc32(path)))
        say(f"{name}: {len(order):,} samples in {len(splits[name])} shards")
    from hw3.data.transforms import channel_stats

    mean, std = channel_stats(src.train.images) if src.in_memory else (None, None)
    index = ShardIndex(kind, list(src.classes), splits, src.channels, src.native_size, where=str(out),
                       augment=src.augment, crop_padding=src.crop_padding, mean=mean, std=std)  # fmt: skip
    write_atomic(out / INDEX, index.to_json(relative_to=str(out)).encode())
    return index


def label_of(split, i: int) -> int:
    return int(split.labels[i])


def index_tar_shards(urls: list[str], classes: Optional[list[str]], say=print) -> ShardIndex:
    """An index of existing WebDataset tar shards: each one read once (a remote one fetched into a temporary
    folder) for its samples and labels (the images' size is left unsaid: the recipe's data.image_size, or 224,
    decides it)."""
    import tempfile

    from hw3.data.shards.reader import BadSample

    shards, labels, channels = [], set(), None
    with tempfile.TemporaryDirectory(prefix="hw3-index-") as tmp:
        for url in urls:
            try:
                shard, found, first = index_tar_shard(url, Path(tmp))
            except BadSample as e:
                raise UserError(f"{e}: fix the shard, then index again") from None
            shards.append(shard)
            labels |= found
            channels = channels or first
            say(f"{url}: {shard.samples} samples")
    top = max(labels) + 1 if labels else 0
    if classes is not None and top > len(classes):
        raise UserError(f"--classes {len(classes)}: the shards have label {top - 1}")
    return ShardIndex("tar", classes or [str(i) for i in range(top)], {"train": shards}, channels)


def index_tar_shard(url: str, tmp: Path) -> tuple[Shard, set[int], Optional[int]]:
    """(the shard, the labels in it, the channels of its first image)."""
    from hw3.data.shards.index import IMAGE_EXTENSIONS
    from hw3.data.shards.reader import TarShard
    from hw3.data.sources import colour_mode
    from hw3.storage.remote import fetch, is_local

    path = Path(url.removeprefix("file://")) if is_local(url) else fetch(url, tmp / url.rsplit("/", 1)[-1])
    tar, labels, channels = TarShard(path, url), set(), None
    try:
        for k, key in enumerate(tar.keys):
            members = tar.samples[key]
            if "cls" in members or "json" in members:
                labels.add(tar.label(key, members))
            if k == 0 and any(e in members for e in IMAGE_EXTENSIONS):
                with Image.open(io.BytesIO(tar.read(0)[0])) as img:
                    channels = 1 if colour_mode(img) == "L" else 3
        return Shard(url, len(tar.keys), path.stat().st_size, crc32(path)), labels, channels
    finally:
        tar.close()
        if not is_local(url):
            path.unlink(missing_ok=True)
