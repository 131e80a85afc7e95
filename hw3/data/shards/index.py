"""What a sharded dataset holds, without reading its samples: the shards of each split with their sample counts,
the classes, the images' channels and size.

`data.path` is one of:
- a folder or URL prefix holding `index.json` (what `python -m hw3.shards` writes; it can index any tar shards),
  or the index file itself;
- a brace pattern or glob of parquet files (`train-{00000..00127}.parquet`): counts from each file's footer
  (a few KiB read), classes from the `datasets` features stored in its schema, or `data.num_classes`;
- with `data.name: hf` and `data.streaming: true`, a Hub dataset id (or a local dataset folder): its parquet files
  per split, as `datasets` resolves them.
WebDataset tar shards without an index: their counts would take reading every shard, so hw3 asks for an index
(`python -m hw3.shards index 'PATTERN'`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass, replace
from typing import Optional

from hw3.config import DataConfig
from hw3.data.sources import IMAGE_SUFFIXES, VAL_SPLITS, colour_mode
from hw3.errors import UserError
from hw3.storage.files import cache_dir, write_atomic
from hw3.storage.remote import expand, filesystem, is_local, join, read_bytes

IMAGE_EXTENSIONS = tuple(suffix[1:] for suffix in IMAGE_SUFFIXES)  # a sample's image member, the first found
INDEX = "index.json"
FORMAT = "hw3-shards/1"


@dataclass
class Shard:
    url: str  # where it is: a path, or any fsspec URL
    samples: int  # samples it holds (a capped split may use only its first ones)
    bytes: Optional[int] = None  # its size, when known: a download of another size is retried
    crc32: Optional[str] = None  # of the whole file, when known (hw3.shards writes it)
    offset: int = 0  # the file's first sample this split uses (a single shard shared by train and validation)


@dataclass
class ShardIndex:
    kind: str  # "tar" (WebDataset: <key>.jpg|png|webp + <key>.cls|json) or "parquet"
    classes: list[str]
    splits: dict[str, list[Shard]]  # "train", and "val" / "test" when the dataset has them
    channels: Optional[int] = None  # 1 or 3; null: the first image says
    side: Optional[int] = None  # px, when every image is square of this side
    image: str = "image"  # parquet: the image column
    label: str = "label"  # parquet: the label column
    where: str = ""  # what data.path said, for messages
    # what the dataset's source knew (hw3.shards writes them): its default augmentation and crop padding, and the
    # per-channel mean and std of its training images
    augment: Optional[str] = None
    crop_padding: Optional[int] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None

    def to_json(self, relative_to: str = "") -> str:
        splits = {
            name: [
                dict(asdict(s), url=s.url.removeprefix(relative_to.rstrip("/") + "/") if relative_to else s.url)
                for s in shards
            ]
            for name, shards in self.splits.items()
        }
        body = dict(format=FORMAT, kind=self.kind, classes=self.classes, channels=self.channels, side=self.side,
                    image=self.image, label=self.label, augment=self.augment, crop_padding=self.crop_padding,
                    mean=self.mean, std=self.std, splits=splits)  # fmt: skip
        return json.dumps(body, indent=1)


def load_index(cfg: DataConfig) -> ShardIndex:
    """The index of the sharded dataset `data.path` names (see the module's docstring)."""
    path = cfg.path
    if cfg.name == "hf":
        return hub_index(cfg)
    if path.endswith(".json"):
        return read_index(path)
    if any(c in path for c in "{*?[") or path.endswith((".tar", ".parquet")):
        urls = expand(path)
        if not urls:
            raise UserError(f"data.path: {path} names no file")
        if all(u.endswith(".parquet") for u in urls):
            return parquet_index({"train": urls}, cfg, path)
        raise UserError(
            f"data.path: {path}: tar shards need an index of their sample counts; write one with "
            f"python -m hw3.shards index '{path}' (or give parquet files, whose footers hold their counts)"
        )
    return read_index(join(path, INDEX))


def read_index(url: str) -> ShardIndex:
    try:
        raw = json.loads(read_bytes(url))
        base = url.rsplit("/", 1)[0] if "/" in url else "."
        splits = {
            name: [replace(Shard(**s), url=join(base, s["url"])) for s in shards]
            for name, shards in raw["splits"].items()
        }
        if raw.get("format") != FORMAT or raw["kind"] not in ("tar", "parquet") or "train" not in splits:
            raise ValueError(f"not an index hw3 reads (format {raw.get('format')!r})")
        known = {k: raw.get(k) for k in ("augment", "crop_padding", "mean", "std")}
        return ShardIndex(raw["kind"], list(raw["classes"]), splits, raw.get("channels"), raw.get("side"),
                          raw.get("image", "image"), raw.get("label", "label"), url, **known)  # fmt: skip
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"data.path: {url} is not a shard index ({e})") from None


def parquet_footer(url: str) -> tuple[int, Optional[dict]]:
    """(rows, the `datasets` features stored in the schema, if any) from a parquet file's footer."""
    import pyarrow.parquet as pq

    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            meta = pq.read_metadata(f)
    except Exception as e:  # noqa: BLE001 - missing, unreachable or not parquet: one line
        raise UserError(f"data.path: cannot read the parquet footer of {url} ({type(e).__name__}: {e})") from None
    stored = (meta.schema.to_arrow_schema().metadata or {}).get(b"huggingface")
    features = json.loads(stored).get("info", {}).get("features") if stored else None
    return meta.num_rows, features


def parquet_index(files: dict[str, list[str]], cfg: DataConfig, where: str) -> ShardIndex:
    """Counts from every file's footer (kept in hw3's cache, keyed by the files' URLs, a local file's size and
    time, and the recipe's column keys: a relaunch reads none)."""
    files = {split: [os.path.abspath(u.removeprefix("file://")) if is_local(u) else u for u in urls]
             for split, urls in files.items()}  # fmt: skip
    local = [(u, *stamp(u)) for urls in files.values() for u in urls if is_local(u)]
    asked = [cfg.image_column, cfg.label_column, cfg.num_classes]
    key = hashlib.sha256(json.dumps([files, local, asked], sort_keys=True).encode()).hexdigest()[:24]
    cached = cache_dir("shards") / key / INDEX
    if cached.is_file():
        return replace(read_index(str(cached)), where=where)
    counts, features = {}, None
    for url in (u for urls in files.values() for u in urls):
        counts[url], found = parquet_footer(url)
        features = features or found
    image, label, classes = columns(features or {}, cfg, where)
    splits = {split: [Shard(url, counts[url]) for url in urls] for split, urls in files.items()}
    index = ShardIndex("parquet", classes, splits, image=image, label=label, where=where)
    index.channels = 1 if first_mode(index) == "L" else 3  # read once: a relaunch finds it in the cached index
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cached, index.to_json().encode())
    return index


def stamp(path: str) -> tuple[int, int]:
    """(size, modification time) of a local file; (-1, -1) when it is not there (its footer read says so)."""
    try:
        found = os.stat(path)
    except OSError:
        return -1, -1
    return found.st_size, found.st_mtime_ns


def columns(features: dict, cfg: DataConfig, where: str) -> tuple[str, str, list[str]]:
    """(image column, label column, class names) from the `datasets` features (or the recipe)."""
    images = [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]
    labels = [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"]
    image = cfg.image_column or (images[0] if len(images) == 1 else "image")
    label = cfg.label_column or (labels[0] if len(labels) == 1 else "label")
    if features and image not in features:
        raise UserError(f"data.image_column: no column '{image}' in {where}; its columns: {', '.join(features)}")
    names = features.get(label, {}).get("names") if isinstance(features.get(label), dict) else None
    if names:
        return image, label, list(names)
    if cfg.num_classes is None:
        raise UserError(
            f"data.num_classes: {where} does not name its classes (no ClassLabel feature '{label}'); set "
            f"data.num_classes (and data.label_column if the labels are not in '{label}')"
        )
    return image, label, [str(i) for i in range(cfg.num_classes)]


def hub_index(cfg: DataConfig) -> ShardIndex:
    """A Hub dataset (or a local dataset folder) read as parquet shards: the data files `datasets` resolves for
    each split, nothing downloaded but their footers."""
    import datasets

    from hw3.storage.hub import go_offline_unless_reachable

    go_offline_unless_reachable()
    try:
        builder = datasets.load_dataset_builder(cfg.path, name=cfg.config_name, revision=cfg.revision)
        files = {str(split): [str(f) for f in urls] for split, urls in (builder.config.data_files or {}).items()}
    except Exception as e:  # noqa: BLE001 - not found, offline, gated: one line
        raise UserError(
            f"data.path={cfg.path}: could not resolve the dataset's files ({type(e).__name__}: {e})"
        ) from None
    files = {"train" if k == "train" else "test" if k == "test" else "val" if k in VAL_SPLITS else k: v
             for k, v in files.items() if k == "train" or k == "test" or k in VAL_SPLITS}  # fmt: skip
    if "train" not in files or not all(u.endswith(".parquet") for us in files.values() for u in us):
        raise UserError(
            f"data.streaming: {cfg.path} is not stored as parquet files with a train split; stream it after "
            f"converting: python -m hw3.shards write data.name=hf data.path={cfg.path} --out DIR"
        )
    return parquet_index(files, cfg, cfg.path)


def first_mode(index: ShardIndex) -> str:
    """The colour mode of the first image of the first training shard, read from its start (the rest of the
    shard is not fetched)."""
    from PIL import Image

    shard = index.splits["train"][0]
    fs, path = filesystem(shard.url)
    with fs.open(path, "rb") as f:
        if index.kind == "parquet":
            import pyarrow.parquet as pq

            cell = pq.ParquetFile(f).read_row_group(0, columns=[index.image]).column(0)[0].as_py()
            data = cell.get("bytes") if isinstance(cell, dict) else cell
        else:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                member = next(m for m in tar if m.name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS)
                data = tar.extractfile(member).read()
    with Image.open(io.BytesIO(data)) as img:
        return colour_mode(img)
