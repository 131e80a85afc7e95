"""The bad-input table: each mistake through the real CLI (train.py's main(), in this process: a process start per
case would cost 50 interpreter starts) exits 2 with a short message naming the key, file or value, no traceback,
creates nothing, and leaves an existing run dir exactly as it was."""

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import traceback
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

from hw3.runs.layout import LOCK as LOCK_FILE
from hw3.runs.lock import RunDirLock

from formats import write_hub_parquet, write_imagefolder, write_pets
from helpers import RECIPES, ROOT, Result, run_subprocess

QUICK = str(RECIPES / "quickstart.yaml")

# name: (recipe args and overrides, text the error must contain). "{run}" is an existing finished run dir (1 epoch
# of the quickstart), "{new}" a fresh one, "{busy}" a run dir whose lock this test holds, "{tmp}" this test's
# scratch folder (files below are written there first).
CASES = {
    "unknown key": ([QUICK, "optim.lrr=0.1", "output_dir={run}"], "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    "unknown section": ([QUICK, "optimizer.lr=0.1", "output_dir={run}"], "unknown key 'optimizer"),
    "wrong type": ([QUICK, "train.epochs=two", "output_dir={run}"], "train.epochs: expected an integer, got 'two'"),
    "negative lr": ([QUICK, "optim.lr=-0.1", "output_dir={run}"], "optim.lr: must be >= 0"),
    "zero epochs": ([QUICK, "train.epochs=0", "output_dir={run}"], "train.epochs: must be >= 1"),
    "zero batch size": ([QUICK, "train.batch_size=0", "output_dir={run}"], "train.batch_size: must be >= 1"),
    "unknown dataset": (
        [QUICK, "data.name=cifar1000", "output_dir={run}"],
        "data.name: unknown dataset 'cifar1000' (did you mean 'cifar100'?)",
    ),
    "unknown model": (
        [QUICK, "model.name=resnet81", "output_dir={run}"],
        "unknown model 'resnet81' (did you mean 'resnet18'?)",
    ),
    "unknown optimizer": (
        [QUICK, "optim.name=adamm", "output_dir={run}"],
        "optim.name: unknown optimizer 'adamm' (did you mean 'adam'?)",
    ),
    "unknown schedule": (
        [QUICK, "sched.name=cosin", "output_dir={run}"],
        "sched.name: unknown schedule 'cosin' (did you mean 'cosine'?)",
    ),
    "unknown precision": (
        [QUICK, "train.mixed_precision=fp8", "output_dir={run}"],
        "train.mixed_precision: 'fp8' is not one of",
    ),
    "shard cache below two windows": (
        [
            QUICK,
            "data.name=shards",
            "data.path={tmp}",
            "data.shuffle_shards=4",
            "data.cache_shards=6",
            "output_dir={new}",
        ],
        "data.cache_shards: at least 2 x data.shuffle_shards (8): the window being read and the next one, fetched "
        "ahead, got 6",
    ),
    "missing recipe": (["{tmp}/nope.yaml", "output_dir={run}"], "nope.yaml' not found"),
    "malformed yaml": (["{tmp}/malformed.yaml", "output_dir={run}"], "malformed.yaml:3: malformed YAML"),
    "duplicate key": (["{tmp}/duplicate.yaml", "output_dir={run}"], "duplicate key 'lr' (first on line 2)"),
    "recipe is a list": (["{tmp}/list.yaml", "output_dir={run}"], "a recipe must be a mapping"),
    "python tag in yaml": (["{tmp}/unsafe.yaml", "output_dir={run}"], "unsafe.yaml:2: malformed YAML"),
    "override without =": ([QUICK, "train.epochs", "output_dir={run}"], "override 'train.epochs' has no '='"),
    "val_fraction out of range": (
        [QUICK, "data.val_fraction=1", "output_dir={run}"],
        "data.val_fraction: must be in (0, 1)",
    ),
    "sam with accumulation": (
        [QUICK, "optim.name=sam", "train.grad_accum_steps=4", "output_dir={run}"],
        "train.grad_accum_steps: SAM needs",
    ),
    "missing data offline": (
        [QUICK, "data.name=mnist", "data.root={tmp}/empty", "output_dir={new}"],
        "data.name=mnist: files not found (or corrupt) under",
    ),
    "hf without path": ([QUICK, "data.name=hf", "output_dir={run}"], "data.path: required with data.name=hf"),
    "hf missing column": (
        [QUICK, "data.name=hf", "data.path={tmp}/mnist_parquet", "data.image_column=img", "output_dir={new}"],
        "data.image_column: no column 'img'",
    ),
    "device loader impossible": (
        [QUICK, "data.name=oxford_pet", "data.root={tmp}/pets", "data.loader=device", "output_dir={new}"],
        "data.loader=device is not possible",
    ),
    "image too small for model": (
        [QUICK, "model.name=vit_tiny_patch16_224", "output_dir={new}"],
        "data.image_size=8: vit_tiny_patch16_224 cannot take 8x8",
    ),
    "missing pretrained_file": (
        [QUICK, "model.name=resnet18", "model.pretrained_file={tmp}/none.safetensors", "output_dir={new}"],
        "model.pretrained_file: '",
    ),
    "mismatched pretrained_file": (
        [QUICK, "model.name=resnet18", "model.pretrained_file={tmp}/resnet50.safetensors", "output_dir={new}"],
        "resnet50.safetensors",
    ),
    "pretrained offline": (
        [QUICK, "model.name=resnet18", "model.pretrained=true", "output_dir={new}"],
        "set model.pretrained_file",
    ),
    "resume path missing": ([QUICK, "train.resume={tmp}/no-such-checkpoint", "output_dir={new}"], "train.resume: "),
    "checkpoint of another model": (
        [QUICK, "model.name=simple_mlp", "train.resume={ckpt}", "output_dir={new}"],
        "/checkpoints/epoch0000-batch000021 is a checkpoint of ",
    ),
    "output_dir is a file": ([QUICK, "output_dir={tmp}/a_file"], "output_dir: "),
    "output_dir not writable": ([QUICK, "output_dir=/sys/hw3-run"], "output_dir: cannot write to /sys/hw3-run"),
    "resume never on a run": (
        [QUICK, "train.resume=never", "output_dir={run}"],
        "already holds a run and train.resume=never",
    ),
    "overwrite a folder not a run": ([QUICK, "train.overwrite=true", "output_dir={tmp}"], "refusing to delete"),
    "bad weights file": (
        [QUICK, "model.name=resnet18", "model.pretrained_file={tmp}/junk.pth", "output_dir={new}"],
        "junk.pth is not a weights file timm can read",
    ),
    "image folder without images": (
        [QUICK, "data.name=imagefolder", "data.root={tmp}/no_images", "output_dir={new}"],
        "no class folder holds images; a classifier needs <root>/train/<class>/<image> for 2 classes or more",
    ),
    "image folder with one class": (
        [QUICK, "data.name=imagefolder", "data.root={tmp}/one_class", "output_dir={new}"],
        "only class 'cat' has images",
    ),
    "another recipe on resume": (
        [QUICK, "train.epochs=1", "optim.lr=0.5", "model.drop_rate=0.1", "output_dir={run}"],
        "was trained with another recipe (model.drop_rate 0.0 -> 0.1, optim.lr 0.003 -> 0.5); use another output_dir",
    ),
    "epochs changed on resume": (
        [QUICK, "train.epochs=3", "output_dir={run}"],
        "train.epochs: 1 -> 3 for the run in",
    ),
    "run dir in use": ([QUICK, "train.epochs=1", "output_dir={busy}"], "is in use by another hw3 run (pid ", 5),
    "corrupt image": (
        [
            QUICK,
            "data.name=oxford_pet",
            "data.root={tmp}/pets",
            "data.image_size=16",
            "train.epochs=1",
            "train.batch_size=8",
            "data.num_workers=0",
            "output_dir={new}",
        ],
        "cannot read image",
    ),
    "binary recipe": (["{tmp}/binary.yaml", "output_dir={new}"], "binary.yaml: not a text file (byte 0x"),
    "binary config.yaml in the run dir": (
        [QUICK, "train.epochs=1", "output_dir={tmp}/binary_config"],
        "config.yaml no longer loads (",
    ),
    "empty config.yaml in the run dir": (
        [QUICK, "train.epochs=1", "output_dir={tmp}/empty_config"],
        "config.yaml is empty: the record of the recipe this run was trained with is lost",
    ),
    "lr infinite": ([QUICK, "optim.lr=.inf", "output_dir={new}"], "optim.lr: must be a finite number, got inf"),
    "weight decay NaN": (
        [QUICK, "optim.weight_decay=.nan", "output_dir={new}"],
        "optim.weight_decay: must be a finite",
    ),
    "batch larger than the data": (
        [QUICK, "train.batch_size=100000000", "output_dir={new}"],
        "train.batch_size: 100000000 is more than the 1294 training images",
    ),
    "scheduled batch larger than the data": (
        [QUICK, "train.batch_size_schedule={{0: 64, 3: 4096}}", "output_dir={new}"],
        "train.batch_size: 4096 (epoch 3) is more than the 1294 training images",
    ),
    # Not a mistake, but the same promise: one line (exit 4: the run dir could not be written), nothing left behind.
    "output_dir on a full disk at the first launch": (
        [QUICK, "output_dir={full}/run"],
        "output_dir: writing {full}/run/.lock failed (the disk is full: ",
        4,
    ),
    "error before a run dir exists": (
        [QUICK, "data.name=mnist", "data.root=/proc"],
        "data.name=mnist: files not found",
    ),
}


# Found only when training reads the image: by then the run dir holds the launch's records (config, command).
FOUND_WHILE_TRAINING = {"corrupt image"}


def digest(folder: Path) -> dict:
    """Content and modification time of every file, but the lock: each launch that gets it writes its pid there."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    run = tmp / "finished"
    done = run_subprocess(["--recipe", QUICK, "train.epochs=1", f"output_dir={run}"], cwd=ROOT)
    assert done.code == 0, done.err
    (tmp / "malformed.yaml").write_text("data:\n  name: digits\n  root: a: b\noptim:\n  lr: 0.1\n")
    (tmp / "duplicate.yaml").write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    (tmp / "list.yaml").write_text("- data\n- model\n")
    (tmp / "unsafe.yaml").write_text("data:\n  name: !!python/object/apply:os.system ['echo owned']\n")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "empty").mkdir()
    write_hub_parquet(tmp / "mnist_parquet", "mnist", n_train=20, n_test=10)
    pets = write_pets(tmp / "pets")
    sorted((pets / "images").glob("*.jpg"))[2].write_bytes(b"\xff\xd8\xff\xe0 broken")
    save_file(timm.create_model("resnet50").state_dict(), str(tmp / "resnet50.safetensors"))
    (tmp / "junk.pth").write_text("not a weights file")
    for label in ("cat", "dog"):
        (tmp / "no_images" / "train" / label).mkdir(parents=True)
        (tmp / "no_images" / "train" / label / "notes.txt").write_text("no image here")
    write_imagefolder(tmp / "one_class", classes=["cat"])
    (tmp / "binary.yaml").write_bytes(bytes(range(256)) * 16)
    for name, config in (("binary_config", bytes(range(128, 256)) * 8), ("empty_config", b"")):
        shutil.copytree(run, tmp / name)
        (tmp / name / "config.yaml").write_bytes(config)
    before = digest(run)
    ckpt = next((run / "checkpoints").iterdir())
    busy = RunDirLock(tmp / "busy")  # held by this process for the whole table
    full = full_disk(tmp / "full")

    def launch(name):
        if "{full}" in " ".join(CASES[name][0]) and full is None:
            return name, None
        args = CASES[name][0]
        new, cwd = tmp / f"new-{abs(hash(name))}", tmp / f"cwd-{abs(hash(name))}"
        cwd.mkdir()  # runs/ would go here
        filled = [a.format(tmp=tmp, run=run, new=new, ckpt=ckpt, busy=tmp / "busy", full=full) for a in args]
        result = in_process(["--recipe", *filled], cwd)
        return name, (result, new.exists() or any(cwd.iterdir()))

    try:
        results = dict(map(launch, CASES))
        left_on_the_full_disk = sorted(p.name for p in full.iterdir()) if full is not None else None
    finally:
        busy.release()
        if full is not None:
            subprocess.run(["umount", "-l", str(full)], check=False)
    return results, before, digest(run), (full, left_on_the_full_disk)


def full_disk(mount: Path):
    """A 2 MiB tmpfs filled up but a few KiB (needs root, as CI has), or None."""
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        return None
    with open(mount / "ballast", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return mount


def in_process(args: list[str], cwd: Path) -> Result:
    """train.py's main() in this process (what a fresh process runs, minus its start-up), in `cwd`; an exception
    that escapes main() is recorded as the traceback a user would have seen."""
    from hw3.cli.train import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except Exception:
                err.write(traceback.format_exc())
                code = None
    finally:
        os.chdir(here)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, table):
    results, _, _, (full, _) = table
    if results[name] is None:
        pytest.skip("no tmpfs to fill here (mounting one needs root)")
    (result, created), expected = results[name], CASES[name][1].replace("{full}", str(full))
    code = CASES[name][2] if len(CASES[name]) > 2 else 2  # hw3.errors: 2 a user error, 5 a busy run dir
    assert result.code == code, f"{name}: exit {result.code}\n{result.err[-2000:]}"
    assert not created or name in FOUND_WHILE_TRAINING, f"{name}: a run dir or runs/ was left behind"
    assert "Traceback" not in result.err, result.err[-2000:]
    lines = [line for line in result.err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], result.err[-2000:]
    assert len(lines[0]) < 400


def test_the_existing_run_dir_was_not_touched(table):
    _, before, after, _ = table
    assert before == after


def test_a_full_disk_at_the_first_launch_leaves_nothing_behind(table):
    *_, (_, left) = table
    if left is None:
        pytest.skip("no tmpfs to fill here (mounting one needs root)")
    assert left == ["ballast"]  # no run dir, no .lock


def test_fp16_on_cpu_is_a_warning_not_an_error(tmp_path):
    result = run_subprocess(
        ["--recipe", QUICK, "train.mixed_precision=fp16", "train.epochs=1", f"output_dir={tmp_path / 'r'}"],
        cwd=tmp_path,
    )
    assert result.code == 0, result.err[-2000:]
    assert "warning: train.mixed_precision=fp16 has no effect without CUDA" in result.err
