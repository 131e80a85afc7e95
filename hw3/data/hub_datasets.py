"""The Hugging Face Hub (or a local copy in any format `datasets` reads), and image folders."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from hw3.config import DataConfig
from hw3.data.sources import DATASETS, Source, Split, open_image
from hw3.errors import UserError
from hw3.hub import go_offline_unless_reachable, offline

# The Hub's names for a held-out split, in order of preference.
HF_VAL_SPLITS = ("validation", "valid", "val", "dev")
# Hub/imagefolder sets with images up to this size are decoded into memory (like CIFAR), unless data.loader says no.
IN_MEMORY_MAX_SIDE = 64
IN_MEMORY_MAX_IMAGES = 200_000
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # what imagefolder reads


class HubReader:
    """Image i from a `datasets.Dataset` column stored undecoded ({'bytes', 'path'})."""

    def __init__(self, table, column: str, mode: str, where: str):
        self.table, self.column, self.mode, self.where = table, column, mode, where

    def __call__(self, i: int) -> Image.Image:
        cell = self.table[int(i)][self.column]
        name = cell.get("path") or f"{self.where} row {int(i)}"
        return open_image(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"], name, self.mode)


@DATASETS.register("hf")
def hub(cfg: DataConfig) -> Source:
    """Any image-classification dataset `datasets.load_dataset` can open: a Hub id, a folder, parquet files."""
    path = cfg.path
    kwargs = dict(name=cfg.config_name, revision=cfg.revision)
    if cfg.trust_remote_code:  # only ever passed when the recipe turns it on
        kwargs["trust_remote_code"] = True
    if path.endswith(".parquet") or Path(path).is_file():
        kwargs = dict(data_files={"train": path})
        path = "parquet"
    return from_hub(load_hub(path, cfg, **kwargs), cfg)


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> Source:
    """`data.root/train/<class>/*.jpg`, optional `val/` (or validation/) and `test/` with the same classes."""
    train = Path(cfg.root) / "train"
    if not train.is_dir():
        raise UserError(
            f"data.root: {train} is not a folder; imagefolder wants <root>/train/<class>/<image> (plus optional "
            f"val/ and test/)"
        )
    classes = sorted(
        d.name for d in train.iterdir() if d.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())
    )
    if len(classes) < 2:
        found = f"only class '{classes[0]}' has images" if classes else "no class folder holds images"
        raise UserError(
            f"data.root: {train}: {found}; a classifier needs <root>/train/<class>/<image> for 2 classes or more "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return from_hub(load_hub("imagefolder", cfg, data_dir=cfg.root), cfg)


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
    val_name = next((name for name in HF_VAL_SPLITS if name in dsd), None)
    tables = {"train": dsd["train"], "val": dsd[val_name] if val_name else None, "test": dsd.get("test")}
    splits, mode = {}, None
    for name, table in tables.items():
        if table is None:
            continue
        labels = torch.from_numpy(np.asarray(table[label_col], dtype=np.int64))
        images = table.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
        mode = mode or ("L" if _is_gray(images, image_col) else "RGB")
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
    if cfg.loader != "dataloader":
        decode_small(src)
    return src


def _is_gray(table, column: str) -> bool:
    cell = table[0][column]
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
    with Image.open(source) as img:
        return img.mode in ("L", "1", "I;16")


def decode_small(src: Source) -> None:
    """Decode small same-size images into uint8 tensors (CIFAR-like Hub sets), so they can live on the device."""
    first = src.train.reader(0)
    side = max(first.size)
    total = sum(len(s) for s in (src.train, src.val, src.test) if s is not None)
    if first.size[0] != first.size[1] or side > IN_MEMORY_MAX_SIDE or total > IN_MEMORY_MAX_IMAGES:
        return
    decoded = []
    for split in (src.train, src.val, src.test):
        if split is None:
            decoded.append(None)
            continue
        arrays = []
        for i in range(len(split)):
            img = split.reader(i)
            if img.size != first.size:
                return  # mixed sizes: stay on the per-sample path, which resizes
            arrays.append(np.asarray(img))
        stacked = torch.from_numpy(np.stack(arrays))
        stacked = stacked[:, None] if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)
        decoded.append(replace(split, images=stacked.contiguous(), reader=None))
    src.train, src.val, src.test = decoded
    src.augment, src.crop_padding = "crop_flip", side // 8
