"""The Hugging Face Hub, or a local copy in any format `datasets` reads (a dataset folder, parquet files)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from hw3.config import DataConfig
from hw3.data.small_images import settle
from hw3.data.sources import DATASETS, VAL_SPLITS, Source, Split, colour_mode, image_size, open_image
from hw3.errors import UserError
from hw3.storage.hub import go_offline_unless_reachable, offline

# The Hub's names for a held-out split, in order of preference.


class HubReader:
    """Image i from a `datasets.Dataset` column stored undecoded ({'bytes', 'path'})."""

    def __init__(self, table, column: str, mode: str, where: str):
        self.table, self.column, self.mode, self.where = table, column, mode, where

    def cell(self, i: int):
        cell = self.table[int(i)][self.column]
        name = cell.get("path") or f"{self.where} row {int(i)}"
        return (io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]), name

    def __call__(self, i: int) -> Image.Image:
        return open_image(*self.cell(i), self.mode)

    def size(self, i: int) -> tuple[int, int]:
        return image_size(*self.cell(i))


@DATASETS.register("hf")
def hub(cfg: DataConfig) -> Source:
    """Any image-classification dataset `datasets.load_dataset` can open: a Hub id, a folder, parquet files; with
    data.streaming, its parquet files read as shards (hw3.data.shards), nothing downloaded whole."""
    if cfg.streaming:
        from hw3.data.shards import streamed_source
        from hw3.data.shards.index import hub_index

        return streamed_source(hub_index(cfg), cfg)
    path = cfg.path
    kwargs = dict(name=cfg.config_name, revision=cfg.revision)
    if cfg.trust_remote_code:  # only ever passed when the recipe turns it on
        kwargs["trust_remote_code"] = True
    if path.endswith(".parquet") or Path(path).is_file():
        kwargs = dict(data_files={"train": path})
        path = "parquet"
    return from_hub(load_hub(path, cfg, **kwargs), cfg)


def load_hub(path: str, cfg: DataConfig, **kwargs):
    mode = "offline (HF_HUB_OFFLINE=1)" if offline() else ""
    if not mode and path not in ("parquet", "imagefolder") and not Path(path).exists():  # a Hub id
        mode = "offline: the HF Hub did not answer" if go_offline_unless_reachable() else ""
    import datasets

    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as e:  # datasets raises many types for "not there / offline"; all mean the same to a user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"data.path={cfg.path or path}: could not load the dataset ({reason}{f'; {mode}' if mode else ''}); "
            f"without a network, point data.path at a local copy (a dataset folder or parquet files)"
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
    val_name = next((name for name in VAL_SPLITS if name in dsd), None)
    tables = {"train": dsd["train"], "val": dsd[val_name] if val_name else None, "test": dsd.get("test")}
    splits, mode = {}, None
    for name, table in tables.items():
        if table is None:
            continue
        # through Arrow: np.asarray(table[label_col]) walks a Python list (0.65 s per 50,000 rows)
        labels = torch.from_numpy(table.with_format("arrow")[label_col].to_numpy().astype(np.int64))
        images = table.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
        mode = mode or first_mode(images, image_col)
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
    tables = {name: table._fingerprint for name, table in tables.items() if table is not None}
    description = dict(kind="hf", path=str(where), image=image_col, label=label_col, mode=mode, tables=tables)
    return settle(src, cfg, lambda: description)


def first_mode(table, column: str) -> str:
    """The colour mode of the split's first image: the one every image is read in."""
    cell = table[0][column]
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
    with Image.open(source) as img:
        return colour_mode(img)
