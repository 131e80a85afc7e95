"""Real 2-process gloo DDP on the CPU through `accelerate launch` with accelerate_configs/cpu_ddp.yaml."""

import re

import pytest
import torch

from helpers import RECIPES, ROOT, accelerate_bin, read_metrics, read_summary, run_command, run_subprocess

pytestmark = pytest.mark.multiproc


def launch_two(args, run_dir, cwd, **env):
    """`accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py ARGS output_dir=RUN_DIR`."""
    config = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
    cmd = [accelerate_bin(), "launch", "--config_file", config, ROOT / "train.py", *args, f"output_dir={run_dir}"]
    return run_command(cmd, cwd=cwd, timeout=400, **env)


# A step schedule halving the lr every epoch: a prepared StepLR would halve it twice per epoch on 2 processes.
ARGS = [
    "--recipe",
    RECIPES / "quickstart.yaml",
    "train.epochs=4",
    "sched.name=step",
    "sched.step_size=1",
    "sched.gamma=0.5",
    "data.max_eval_samples=101",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    ddp = launch_two(ARGS, tmp / "two", tmp)
    single = run_subprocess([*ARGS, f"output_dir={tmp / 'one'}"], cwd=tmp)
    return tmp, ddp, single


def test_two_processes_train_in_sync_and_write_one_run_dir(runs):
    tmp, ddp, single = runs
    assert ddp.code == 0, ddp.err[-3000:]
    assert single.code == 0, single.err[-3000:]
    summary = read_summary(tmp / "two")
    assert summary["processes"] == 2 and summary["processes_in_sync"] is True
    assert sorted(p.name for p in tmp.iterdir()) == ["one", "two"]
    assert len(read_metrics(tmp / "two")) == 4  # one writer, not two
    assert ddp.out.count("epoch   0 |") == 1


def test_lr_and_counts_do_not_depend_on_the_number_of_processes(runs):
    tmp, _, _ = runs
    two, one = read_metrics(tmp / "two"), read_metrics(tmp / "one")
    assert [r["lr"] for r in two] == [r["lr"] for r in one]
    assert [round(r["lr"] / two[0]["lr"], 6) for r in two] == [1.0, 0.5, 0.25, 0.125]
    # 101 test images over 2 processes (51 + 50): every image counted exactly once.
    assert read_summary(tmp / "two")["test_images"] == read_summary(tmp / "one")["test_images"] == 101


def test_accuracy_matches_one_process_with_the_same_global_batch(runs):
    tmp, _, _ = runs
    two, one = read_metrics(tmp / "two"), read_metrics(tmp / "one")
    # Same global batches, same data order; only BatchNorm statistics are per process.
    assert abs(two[-1]["val_acc"] - one[-1]["val_acc"]) <= 0.03
    assert abs(read_summary(tmp / "two")["test_acc"] - read_summary(tmp / "one")["test_acc"]) <= 0.03
    assert abs(two[0]["train_loss"] - one[0]["train_loss"]) <= 0.05


SAM_ARGS = [
    "--recipe",
    RECIPES / "quickstart.yaml",
    "train.epochs=3",
    "optim.name=sam",
    "optim.base=adamw",
    "sched.name=plateau",
    "sched.patience=0",
    "sched.monitor=val_acc",
    "data.loader=dataloader",
    "data.num_workers=1",
]


@pytest.fixture(scope="module")
def sam_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp-sam")
    ddp = launch_two(SAM_ARGS, tmp / "two", tmp)
    assert ddp.code == 0, ddp.err[-3000:]
    return tmp


def test_sam_with_a_dataloader_and_plateau_stays_in_sync_on_two_processes(sam_runs):
    # Each process perturbs by its own gradient (pass 1 runs without all-reduce, as in the SAM paper's
    # m-sharpness), so 2-process SAM is not the 1-process run; but the weights, and plateau's decisions on the
    # reduced validation metric, must agree on every process.
    summary = read_summary(sam_runs / "two")
    assert summary["processes"] == 2 and summary["processes_in_sync"] is True
    two = read_metrics(sam_runs / "two")
    assert len(two) == 3 and two[-1]["train_loss"] < two[0]["train_loss"]


def test_two_processes_killed_mid_epoch_resume_bit_for_bit(runs, tmp_path):
    from safetensors.torch import load_file

    from test_lifecycle import deterministic

    reference = runs[0] / "two"
    crashed = launch_two(ARGS, tmp_path / "run", tmp_path, HW3_CRASH_AT="train_step:30")  # epoch 1 of 4
    assert crashed.code != 0
    resumed = launch_two(ARGS, tmp_path / "run", tmp_path)
    assert resumed.code == 0, resumed.err[-3000:]
    assert "resuming from" in resumed.out
    assert deterministic(read_metrics(tmp_path / "run")) == deterministic(read_metrics(reference))
    final = "checkpoints/epoch0003-batch000021/model.safetensors"  # 647 images per process at 32
    mine, theirs = load_file(str(tmp_path / "run" / final)), load_file(str(reference / final))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_sam_pass_one_is_per_process_and_pass_two_is_synchronized(tmp_path):
    """tests/ddp_sam_step.py checks one SAM training step on each of 2 processes against a per-process reference,
    and counts DDP's all-reduces: none in SAM's first pass, none before the last micro-batch of an accumulated
    step."""
    config = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
    script = ROOT / "tests" / "ddp_sam_step.py"
    result = run_command([accelerate_bin(), "launch", "--config_file", config, script], cwd=tmp_path, timeout=300)
    assert result.code == 0, result.out[-2000:] + result.err[-3000:]
    ranks = sorted(re.findall(r"rank (\d): SAM step matches the per-process reference", result.out))
    assert ranks == ["0", "1"]  # (the two processes' lines may interleave)
