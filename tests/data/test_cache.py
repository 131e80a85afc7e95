"""Decoded image folders are cached (hw3.data.cache): a relaunch reads the tensors back instead of decoding every
image, gets exactly the same data, and never uses a stale or damaged entry. The lazy (DataLoader) path keeps the
images' own size just like the in-memory path."""

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from hw3.data.cache import cache_root

from formats import write_imagefolder
from helpers import RECIPES, deterministic, read_metrics

QUICK = RECIPES / "quickstart.yaml"
ARGS = ["--recipe", QUICK, "data.name=imagefolder", "train.epochs=2", "train.batch_size=4", "log.trackers=[]"]


def run(train, tmp_path, name, root, *extra):
    result = train(*ARGS, f"data.root={root}", *extra, f"output_dir={tmp_path / name}")
    assert result.code == 0, result.err
    return next(line for line in result.out.splitlines() if line.startswith("data: ")), tmp_path / name


def card(run_dir: Path) -> dict:
    return json.loads((run_dir / "best" / "model.json").read_text())


def test_a_folder_is_decoded_once_then_read_back_the_same(train, tmp_path):
    write_imagefolder(tmp_path / "tree", seed=11)
    first, cold = run(train, tmp_path, "cold", tmp_path / "tree")
    assert first.endswith("2 classes; 36 images decoded, cached")
    second, warm = run(train, tmp_path, "warm", tmp_path / "tree")
    assert second.startswith("data: imagefolder, 12 train / 12 val / 12 test images, 2 classes; 36 images read from")
    assert deterministic(read_metrics(warm)) == deterministic(read_metrics(cold))
    assert card(warm)["mean"] == card(cold)["mean"]  # statistics of the very same pixels


def test_a_changed_image_or_a_damaged_entry_is_decoded_again(train, tmp_path):
    write_imagefolder(tmp_path / "tree", seed=12)
    _, before = run(train, tmp_path, "before", tmp_path / "tree")
    image = tmp_path / "tree/train/cat/0.png"
    Image.fromarray(np.full((24, 24, 3), 255, np.uint8)).save(image)
    os.utime(image, ns=(1, 1))  # even an image rewritten with an old time stamp is noticed (its size changed)
    changed, after = run(train, tmp_path, "after", tmp_path / "tree")
    assert changed.endswith("36 images decoded, cached")
    assert card(after)["mean"] != card(before)["mean"]
    for folder in cache_root().iterdir():  # damage every entry of this session
        if (folder / "images.safetensors").is_file():
            data = bytearray((folder / "images.safetensors").read_bytes())
            data[-100:] = bytes(100)
            (folder / "images.safetensors").write_bytes(bytes(data))
    repaired, again = run(train, tmp_path, "again", tmp_path / "tree")
    assert repaired.endswith("36 images decoded, cached")
    assert deterministic(read_metrics(again)) == deterministic(read_metrics(after))


def test_no_cache_when_turned_off(train, tmp_path):
    write_imagefolder(tmp_path / "tree", seed=13)
    entries = set(cache_root().iterdir()) if cache_root().is_dir() else set()
    line, _ = run(train, tmp_path, "off", tmp_path / "tree", "data.cache=false")
    assert line.endswith("36 images decoded")
    assert (set(cache_root().iterdir()) if cache_root().is_dir() else set()) == entries


def test_the_lazy_path_keeps_the_images_own_size(train, tmp_path):
    write_imagefolder(tmp_path / "tree", seed=14)
    out = train(*ARGS, f"data.root={tmp_path / 'tree'}", "data.loader=dataloader", "data.num_workers=0",
                f"output_dir={tmp_path / 'lazy'}")  # fmt: skip
    assert out.code == 0, out.err
    assert (
        "input: 24px x3 (the images' own size), DataLoader input (data.loader=dataloader; 0 worker(s) per process: "
        "data.num_workers)" in out.out
    )
    assert card(tmp_path / "lazy")["image_size"] == 24


def test_images_of_several_sizes_are_resized_to_224_and_the_run_says_why(train, tmp_path):
    write_imagefolder(tmp_path / "tree", seed=15)
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(tmp_path / "tree/train/dog/odd.png")
    out = train(*ARGS, f"data.root={tmp_path / 'tree'}", "data.num_workers=0", "train.max_steps=2",
                f"output_dir={tmp_path / 'mixed'}")  # fmt: skip
    assert out.code == 0, out.err
    assert (
        "input: 224px x3 (224, as the images differ in size; data.image_size sets another), DataLoader input (its "
        "images differ in size; 0 worker(s) per process: data.num_workers)" in out.out
    )


def test_over_the_in_memory_cap_the_run_says_so_and_fingerprints_nothing(train, tmp_path, monkeypatch):
    """The cap counts train, validation and test together, and is the reason given; the files' fingerprint (a stat
    of every file) is only taken when the decoded-image cache can apply."""
    import hw3.data.image_folders
    import hw3.data.small_images

    write_imagefolder(tmp_path / "tree", seed=16)
    fingerprints = []
    real = hw3.data.image_folders.files_fingerprint
    monkeypatch.setattr(
        hw3.data.image_folders, "files_fingerprint", lambda paths: fingerprints.append(1) or real(paths)
    )
    monkeypatch.setattr(hw3.data.small_images, "IN_MEMORY_MAX_IMAGES", 35)
    out = train(*ARGS, f"data.root={tmp_path / 'tree'}", "data.num_workers=0", f"output_dir={tmp_path / 'capped'}")
    assert out.code == 0, out.err
    assert (
        "DataLoader input (36 images (train, validation and test together) are over the 35 that are decoded " in out.out
    )
    assert fingerprints == []
    monkeypatch.setattr(hw3.data.small_images, "IN_MEMORY_MAX_IMAGES", 36)
    out = train(*ARGS, f"data.root={tmp_path / 'tree'}", f"output_dir={tmp_path / 'in-memory'}")
    assert out.code == 0 and "device-resident input" in out.out and fingerprints == [1]
