"""A run directory you can trust: one writer at a time (an OS lock the kernel drops when its holder dies), a
recipe that cannot change under a resumed run, a finished run that says so, one-line exits on signals at any
moment and on an unreachable Hub, and output that says what it did."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hw3.runs.layout import LOCK as LOCK_FILE
from hw3.runs.lock import RunDirLock

from helpers import RECIPES, ROOT, child_env, read_metrics, read_summary, run_subprocess

QUICK = RECIPES / "quickstart.yaml"
ONE_EPOCH = ["--recipe", QUICK, "train.epochs=1", "log.trackers=[]"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch quickstart run (a subprocess: its own lock, released when it exits)."""
    run_dir = tmp_path_factory.mktemp("rundir") / "done"
    result = run_subprocess([*ONE_EPOCH, f"output_dir={run_dir}"], cwd=ROOT)
    assert result.code == 0, result.err
    return run_dir


def test_a_busy_run_dir_stops_a_second_launch_at_once(train, tmp_path):
    holder = RunDirLock(tmp_path / "run")  # this process holds the lock, as a running launch would
    try:
        result = train(*ONE_EPOCH, f"output_dir={tmp_path / 'run'}")
    finally:
        holder.release()
    assert result.code == 5  # hw3.errors: the run dir is busy
    assert result.err.strip() == (
        f"error: output_dir: {tmp_path / 'run'} is in use by another hw3 run (pid {os.getpid()}); wait for it to "
        f"finish, or choose another output_dir"
    )
    assert [p.name for p in (tmp_path / "run").iterdir()] == [LOCK_FILE]  # nothing else touched


def test_a_killed_holder_leaves_no_stale_lock(train, tmp_path):
    run_dir = tmp_path / "run"
    code = (
        "import time; from pathlib import Path; from hw3.runs.lock import RunDirLock; "
        f"lock = RunDirLock(Path({str(run_dir)!r})); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=child_env())
    assert holder.stdout.readline().strip() == "held"
    busy = train(*ONE_EPOCH, f"output_dir={run_dir}")
    assert busy.code == 5 and f"(pid {holder.pid})" in busy.err
    holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock
    holder.wait()
    result = train(*ONE_EPOCH, f"output_dir={run_dir}")
    assert result.code == 0, result.err
    assert read_summary(run_dir)["epochs_completed"] == 1


def test_a_recipe_that_fails_to_build_leaves_no_run_dir(train, tmp_path):
    result = train(*ONE_EPOCH, "data.name=mnist", f"data.root={tmp_path / 'nothing'}", f"output_dir={tmp_path / 'r'}")
    assert result.code == 2 and "data.name=mnist: files not found" in result.err
    assert not (tmp_path / "r").exists()


def test_a_finished_run_says_so_and_does_nothing(train, finished):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    again = train(*ONE_EPOCH, f"output_dir={finished}")
    summary = read_summary(finished)
    assert again.code == 0, again.err
    assert again.out.strip() == (
        f"{finished} is complete (done: 1 epochs, best val_acc {summary['best_val_acc']:.4g} at epoch 0, test acc "
        f"{summary['test_acc']:.2%}); nothing to do"
    )
    after = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    assert after == {p: t for p, t in before.items() if p.name != LOCK_FILE}  # nothing retrained, retested, rewritten


def test_another_recipe_is_refused_and_the_record_kept(train, finished):
    config = (finished / "config.yaml").read_text()
    refused = train(*ONE_EPOCH, "optim.lr=0.5", f"output_dir={finished}")
    assert refused.code == 2
    assert "was trained with another recipe (optim.lr 0.003 -> 0.5)" in refused.err
    assert "train.resume=never train.overwrite=true" in refused.err
    assert (finished / "config.yaml").read_text() == config
    assert yaml.safe_load(config)["optim"]["lr"] == 0.003


def test_keys_that_do_not_shape_the_run_may_change(train, finished):
    result = train(*ONE_EPOCH, "log.log_every=7", "train.keep_last=5", "data.root=elsewhere", f"output_dir={finished}")
    assert result.code == 0 and "is complete" in result.out


def test_extending_epochs_needs_the_opt_in_and_says_what_the_lr_does(train, tmp_path):
    run_dir = tmp_path / "run"
    assert train(*ONE_EPOCH, f"output_dir={run_dir}").code == 0
    refused = train("--recipe", QUICK, "train.epochs=3", "log.trackers=[]", f"output_dir={run_dir}")
    assert refused.code == 2 and "train.epochs: 1 -> 3 for the run in" in refused.err
    assert "set train.extend_epochs=true to lay it out again over 3" in refused.err
    args = ["--recipe", QUICK, "train.epochs=3", "train.extend_epochs=true", "log.trackers=[]", f"output_dir={run_dir}"]
    extended = train(*args)
    assert extended.code == 0, extended.err
    # cosine over 1 epoch ended at lr 0 (step 21); laid out over 3 epochs, step 21 is a third of the way down
    assert (
        "train.epochs 1 -> 3 (train.extend_epochs): the cosine schedule is laid out again over 3 epochs; the lr "
        in (extended.out)
    )
    assert "where the run resumes (step 21) goes from 0 to 0.00225" in extended.out
    summary = read_summary(run_dir)
    assert summary["epochs"] == 3 and summary["epochs_completed"] == 3 and len(read_metrics(run_dir)) == 3
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 1  # the original record
    assert [launch["argv"][-3:] for launch in summary["launches"]] == [
        ["train.epochs=1", "log.trackers=[]", f"output_dir={run_dir}"],
        ["train.extend_epochs=true", "log.trackers=[]", f"output_dir={run_dir}"],
    ]
    command = (run_dir / "command.txt").read_text()
    assert command.count("argv: ") == 2 and "train.extend_epochs=true" in command
    again = train("--recipe", QUICK, "train.epochs=3", "log.trackers=[]", f"output_dir={run_dir}")
    assert again.code == 0 and "is complete" in again.out  # 3 is now the run's length: no opt-in needed


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_is_one_line(tmp_path, signum, code):
    name = signal.Signals(signum).name.removeprefix("SIG")
    result = run_subprocess([*ONE_EPOCH, f"output_dir={tmp_path / 'run'}"], tmp_path, HW3_CRASH_AT=f"start_up:1:{name}")
    assert result.code == code, result.err
    assert result.err.strip() == (
        f"stopped by SIG{name} during start-up, before any checkpoint; rerun the same command to start"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data.name=hf", "data.path=hw3-tests/no-such-dataset"], "data.path=hw3-tests/no-such-dataset: could not"),
        (["model.name=resnet18", "model.pretrained=true"], "model.pretrained: resnet18's weights are not in the"),
    ],
    ids=["dataset", "pretrained weights"],
)
def test_an_unreachable_hub_fails_in_seconds_in_one_line(tmp_path, args, expected):
    """No HF_HUB_OFFLINE, and a Hub endpoint that refuses connections: huggingface_hub alone would retry for
    half a minute, printing every retry."""
    env = {k: v for k, v in child_env().items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *map(str, [*ONE_EPOCH, *args, f"output_dir={tmp_path / 'r'}"])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert "offline" in lines[0] or "not in the local cache" in lines[0]


def test_a_failed_download_takes_back_what_it_created_and_names_the_files(monkeypatch, tmp_path):
    from torchvision.datasets import MNIST

    from hw3.config import DataConfig
    from hw3.data.sources import load_source
    from hw3.errors import UserError

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/mnist/"])  # refuses at once
    root = tmp_path / "data"
    with pytest.raises(UserError) as e:
        load_source(DataConfig(name="mnist", root=str(root), download=True))
    message = str(e.value)
    assert message.startswith(f"data.name=mnist: download into {root} failed (")
    assert "put the files there yourself: MNIST/raw/{train-images-idx3-ubyte,train-labels-idx1-ubyte," in message
    assert "\n" not in message and not root.exists()


def test_smoke_runs_say_what_they_are_and_test(train, tmp_path):
    result = train("--recipe", RECIPES / "cifar100_sam.yaml", "smoke=true", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    assert "data: synthetic stand-in for cifar100 (smoke mode), 8 train / 8 val / 8 test images" in result.out
    assert " 0 img/s" not in result.out
    summary = read_summary(tmp_path / "run")
    assert summary["epochs_completed"] == 1 and summary["optimizer_steps"] == 2 and summary["test_images"] == 8


def test_evaluate_says_where_it_wrote(finished, capsys):
    from hw3.cli.evaluate import main as evaluate_main

    assert evaluate_main([str(finished), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f"-> {finished / 'eval' / 'val-best'}")
    assert json.loads((finished / "eval" / "val-best" / "metrics.json").read_text())["count"] == 144


def test_checkpoints_are_named_after_the_epoch_they_end(finished):
    names = [p.name for p in (finished / "checkpoints").iterdir()]
    assert names == ["epoch0000-batch000021"]  # epoch 0, all its 21 batches


def test_the_lock_file_is_not_a_run(tmp_path):
    RunDirLock(tmp_path / "r").release(keep=False)
    assert not (tmp_path / "r").exists()
    Path(tmp_path / "r").mkdir()
    RunDirLock(tmp_path / "r").release(keep=False)
    assert (tmp_path / "r").exists()  # it existed before: not this lock's to remove


def applied_lr(checkpoint: Path) -> float:
    """The lr the optimizer applied at the step a checkpoint was saved (its first group, without its lr scale)."""
    group = torch.load(checkpoint / "optimizer.bin", weights_only=True)["param_groups"][0]
    return group["lr"] / group.get("lr_scale", 1.0)


def test_max_steps_stops_one_launch_and_the_run_continued_without_it_ends_as_an_uninterrupted_one(train, tmp_path):
    """train.max_steps is a limit of one launch, never the run's length: the launch stops after the run's 5th
    step with a checkpoint there (the schedule never hears of it); the same command has nothing to do; without
    it, the run ends bit for bit where a run that never had it ends."""
    two = ["--recipe", QUICK, "train.epochs=2", "log.trackers=[]"]
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert train(*two, f"output_dir={reference}").code == 0
    stopped = train(*two, "train.max_steps=5", f"output_dir={run_dir}")
    assert stopped.code == 0, stopped.err
    assert stopped.out.strip().splitlines()[-1] == (
        f"stopped at train.max_steps=5 (epoch 0, batch 5); checkpoint {run_dir / 'checkpoints/epoch0000-batch000005'}"
        " saved; rerun without train.max_steps, or with a larger one, to continue"
    )
    assert not (run_dir / "summary.json").exists() and read_metrics(run_dir) == []
    again = train(*two, "train.max_steps=5", f"output_dir={run_dir}")
    assert again.code == 0 and again.out.strip() == (
        f"{run_dir} stopped at train.max_steps=5 (step 5: epoch 0, batch 5); rerun without train.max_steps, or with "
        "a larger one, to continue"
    )
    assert train(*two, "train.max_steps=30", f"output_dir={run_dir}").code == 0  # a larger one: into epoch 1
    resumed = train(*two, f"output_dir={run_dir}")
    assert resumed.code == 0, resumed.err
    assert read_metrics(run_dir) == [
        {**row, **{k: read_metrics(run_dir)[i][k] for k in ("epoch_time_s", "images_per_s", "train_time_s")}}
        for i, row in enumerate(read_metrics(reference))
    ]  # every value but the timings
    final = "checkpoints/epoch0001-batch000021/model.safetensors"
    mine, theirs = load_file(str(run_dir / final)), load_file(str(reference / final))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert read_summary(run_dir)["test_acc"] == read_summary(reference)["test_acc"]


def test_a_checkpoint_named_by_train_resume_is_checked_like_any_resume_and_the_lr_logged_is_the_lr_applied(
    train, tmp_path
):
    """train.resume=PATH used to skip the recipe check: a changed lr was logged (x its schedule factor) while the
    optimizer applied the checkpoint's own. Now it is refused like any other change of recipe, and the lr in
    metrics.jsonl is read from the optimizer."""
    run_dir = tmp_path / "run"
    assert train(*ONE_EPOCH, f"output_dir={run_dir}").code == 0
    checkpoint = run_dir / "checkpoints" / "epoch0000-batch000021"
    extend = ["--recipe", QUICK, "train.epochs=2", "train.extend_epochs=true", "log.trackers=[]"]
    refused = train(*extend, f"train.resume={checkpoint}", "optim.lr=0.5", f"output_dir={run_dir}")
    assert refused.code == 2
    assert refused.err.strip() == (
        f"error: train.resume: {checkpoint} is a checkpoint of {run_dir}, which was trained with another recipe "
        "(optim.lr 0.003 -> 0.5); use another output_dir, or train.resume=never train.overwrite=true to start it over"
    )
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 0.003
    extended = train(*extend, f"train.resume={checkpoint}", f"output_dir={run_dir}")
    assert extended.code == 0, extended.err
    rows = read_metrics(run_dir)
    assert [row["lr"] for row in rows] == [
        applied_lr(run_dir / "checkpoints" / name) for name in ("epoch0000-batch000021", "epoch0001-batch000021")
    ]
