"""Real 2-process gloo DDP on the CPU through `accelerate launch` with accelerate_configs/cpu_ddp.yaml."""

import re

import pytest
import torch

from helpers import RECIPES, ROOT, accelerate_bin, read_metrics, read_summary, run_command, run_subprocess

pytestmark = pytest.mark.multiproc


def launch_two(args, run_dir, cwd, *launcher_args, **env):
    """`accelerate launch --config_file accelerate_configs/cpu_ddp.yaml [LAUNCHER_ARGS] train.py ARGS
    output_dir=RUN_DIR`."""
    config = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
    cmd = [accelerate_bin(), "launch", "--config_file", config, *launcher_args, ROOT / "train.py", *args]
    cmd.append(f"output_dir={run_dir}")
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
    "optim.sam_variant=looksam",  # full SAM steps every other step, LookSAM's reuse in between
    "optim.sam_every=2",
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


def test_looksam_with_a_dataloader_and_plateau_stays_in_sync_on_two_processes(sam_runs):
    # Each process perturbs by its own gradient (pass 1 runs without all-reduce, as in the SAM paper's
    # m-sharpness), so 2-process SAM is not the 1-process run; but the weights (LookSAM's stored vector is
    # averaged over the processes), and plateau's decisions on the reduced validation metric, must agree on
    # every process.
    summary = read_summary(sam_runs / "two")
    assert summary["processes"] == 2 and summary["processes_in_sync"] is True
    two = read_metrics(sam_runs / "two")
    assert len(two) == 3 and two[-1]["train_loss"] < two[0]["train_loss"]


def every_value(rows):
    """Every metrics.jsonl value but the timings."""
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "images_per_s", "train_time_s")} for r in rows]


def same_final_weights(run_dir, reference) -> bool:
    from safetensors.torch import load_file

    final = "checkpoints/epoch0003-batch000021/model.safetensors"  # 647 images per process at 32: 21 steps
    mine, theirs = load_file(str(run_dir / final)), load_file(str(reference / final))
    return all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_two_processes_killed_mid_epoch_resume_with_every_value_equal(runs, tmp_path):
    """Killed after a mid-epoch checkpoint (step 30 = epoch 1, batch 9): each process resumes its own running
    sums of the interrupted epoch (train_loss, train_acc, counts), not process 0's."""
    reference = runs[0] / "two"
    args = [*ARGS, "train.checkpoint_every_steps=10"]
    killed = launch_two(args, tmp_path / "run", tmp_path, HW3_CRASH_AT="train_step:35")  # both processes
    assert killed.code != 0
    resumed = launch_two(args, tmp_path / "run", tmp_path)
    assert resumed.code == 0, resumed.err[-3000:]
    assert "resuming from" in resumed.out and "epoch0001-batch000009" in resumed.out
    assert every_value(read_metrics(tmp_path / "run")) == every_value(read_metrics(reference))
    assert same_final_weights(tmp_path / "run", reference)


def test_an_elastic_restart_resumes_inside_the_epoch_and_ends_equal(runs, tmp_path):
    """`--max_restarts 1`, one worker SIGKILLed mid-epoch: the survivor says what happened and exits on its own
    (torchrun never has to SIGKILL it), the restarted workers resume from the step-30 checkpoint, and the run ends
    as the uninterrupted one did."""
    reference = runs[0] / "two"
    args = [*ARGS, "train.checkpoint_every_steps=10"]
    once = tmp_path / "fired"
    result = launch_two(
        args, tmp_path / "run", tmp_path, "--max_restarts", "1", HW3_CRASH_AT="train_step:35@1", HW3_CRASH_ONCE=once
    )
    assert result.code == 0, result.err[-3000:]
    assert once.exists()
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: process 1 (pid ")
    assert " of 2 is gone during training (" in errors[0] and errors[0].endswith(
        "; the newest checkpoint is "
        f"{tmp_path / 'run/checkpoints/epoch0001-batch000009'}; rerun the same command to resume"
    )
    assert "forcefully exiting" not in result.err  # the survivor did not hang
    assert f"resuming from {tmp_path / 'run/checkpoints/epoch0001-batch000009'}" in result.out
    assert every_value(read_metrics(tmp_path / "run")) == every_value(read_metrics(reference))
    assert same_final_weights(tmp_path / "run", reference)


def test_a_stuck_peer_ends_the_run_at_the_collective_timeout(tmp_path):
    result = launch_two(
        [*ARGS, "train.collective_timeout_minutes=0.05"], tmp_path / "run", tmp_path, HW3_CRASH_AT="train_step:5:HANG@1"
    )
    assert result.code != 0
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.err[-3000:]
    assert errors[0].startswith("error: a collective between the 2 processes failed during training (")
    assert errors[0].endswith(
        "; the newest checkpoint is none yet (the run starts over); rerun the same command to resume"
    )


@pytest.mark.parametrize(
    "override, said",
    [
        ("optim.lrr=0.1", "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("data.name=mnist", "data.name=mnist: files not found (or corrupt) under"),
    ],
    ids=["recipe typo", "missing data"],
)
def test_a_user_error_is_said_once_by_the_main_process(tmp_path, override, said):
    result = launch_two([*ARGS, override, f"data.root={tmp_path / 'none'}"], tmp_path / "run", tmp_path)
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {said}"), result.err[-3000:]  # the main process said it
    assert "Traceback" not in "".join(line for line in result.err.splitlines() if "hw3" in line)
    assert result.code == 1  # accelerate's launcher turns any failed process into 1
    assert not (tmp_path / "run").exists()


def test_a_signal_at_the_last_step_of_an_epoch_is_agreed_there(tmp_path):
    """Process 0 alone gets SIGTERM at the epoch's last step (21 steps, log.log_every=50): the look at that step
    is where the processes agree, so both save mid-epoch there, before validation."""
    result = launch_two(ARGS, tmp_path / "run", tmp_path, HW3_CRASH_AT="train_step:21:TERM@0")
    said = [line for line in result.err.splitlines() if line.startswith("stopped by")]
    assert said and said[0].startswith("stopped by SIGTERM at epoch 0 batch 21; checkpoint "), result.err[-3000:]


def test_sam_pass_one_is_per_process_and_pass_two_is_synchronized(tmp_path):
    """tests/ddp_sam_step.py checks one SAM training step on each of 2 processes against a per-process reference,
    and counts DDP's all-reduces: none in SAM's first pass, none before the last micro-batch of an accumulated
    step."""
    config = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
    script = ROOT / "tests" / "dist" / "ddp_sam_step.py"
    result = run_command([accelerate_bin(), "launch", "--config_file", config, script], cwd=tmp_path, timeout=300)
    assert result.code == 0, result.out[-2000:] + result.err[-3000:]
    ranks = sorted(re.findall(r"rank (\d): SAM step matches the per-process reference", result.out))
    assert ranks == ["0", "1"]  # (the two processes' lines may interleave)
