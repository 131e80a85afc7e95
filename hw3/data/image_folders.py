"""`data.name: imagefolder`: `data.root/train/<class>/<image>`, optional `val/` (or validation/, valid/, dev/)
and `test/` with the same classes. torchvision's folder scan lists the files (os.scandir, nothing decoded); small
same-size images are then decoded into memory through the cache (hw3.data.small_images), others read one by one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from hw3.config import DataConfig
from hw3.data.cache import files_fingerprint
from hw3.data.small_images import settle
from hw3.data.sources import DATASETS, IMAGE_SUFFIXES, FileReader, Source, Split, colour_mode, open_image
from hw3.errors import UserError

VAL_FOLDERS = ("val", "validation", "valid", "dev")  # the first that exists is the validation split


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def class_folders(train: Path) -> list[str]:
    """Class names: the sub-folders of train/ that hold at least one image, sorted (torchvision's order)."""
    return sorted(d.name for d in train.iterdir() if d.is_dir() and any(is_image(f.name) for f in d.iterdir()))


def scan(folder: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """(paths, labels) of every image under folder/<class>/, by torchvision's make_dataset."""
    from torchvision.datasets.folder import make_dataset

    found = {d.name for d in folder.iterdir() if d.is_dir()}
    extra = sorted(found - set(classes))
    if extra:
        raise UserError(f"data.root: {folder} has class folders train/ has not: {', '.join(extra[:5])}")
    # extensions= compares name endings; is_valid_file= would cost a Path per file (3.6 s at 210k files, not 0.5)
    samples = make_dataset(
        str(folder), {name: i for i, name in enumerate(classes)}, extensions=IMAGE_SUFFIXES, allow_empty=True
    )
    return [path for path, _ in samples], [label for _, label in samples]


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> Source:
    root = Path(cfg.root).resolve()
    train = root / "train"
    if not train.is_dir():
        raise UserError(
            f"data.root: {train} is not a folder; imagefolder wants <root>/train/<class>/<image> (plus optional "
            f"val/ and test/)"
        )
    classes = class_folders(train)
    if len(classes) < 2:
        found = f"only class '{classes[0]}' has images" if classes else "no class folder holds images"
        raise UserError(
            f"data.root: {train}: {found}; a classifier needs <root>/train/<class>/<image> for 2 classes or more "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    val = next((root / name for name in VAL_FOLDERS if (root / name).is_dir()), None)
    folders = {"train": train, "val": val, "test": root / "test" if (root / "test").is_dir() else None}
    listed = {name: scan(folder, classes) for name, folder in folders.items() if folder is not None}
    first = listed["train"][0][0]
    with Image.open(first) as img:
        mode = colour_mode(img)
    open_image(first, first, mode)  # a corrupt first image is named now
    splits = {
        name: Split(torch.tensor(labels), reader=FileReader(paths, mode)) for name, (paths, labels) in listed.items()
    }
    src = Source(
        splits["train"], splits.get("val"), splits.get("test"), classes, 1 if mode == "L" else 3, "resized_crop_flip"
    )
    every = [path for paths, _ in listed.values() for path in paths]
    return settle(src, cfg, lambda: dict(kind="imagefolder", mode=mode, files=files_fingerprint(every)))
