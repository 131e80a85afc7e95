"""Crash harness: SIGKILL a run at each stage, rerun the same command, and compare with an uninterrupted run,
bit for bit (metrics.jsonl and weights). Every checkpoint a crash leaves behind must equal the uninterrupted
run's checkpoint of the same name, or not look complete at all."""

import json

import pytest
import torch
from safetensors.torch import load_file

from hw3.checkpoint import list_checkpoints

from helpers import RECIPES, ROOT, read_metrics, run_subprocess
from test_lifecycle import RICH, deterministic

pytestmark = pytest.mark.slow
ARGS = ["--recipe", RECIPES / "quickstart.yaml", *RICH, "train.keep_last=10"]

# The lifecycle tests cover a kill in the middle of epoch 1 and SIGTERM; here every other stage.
STAGES = {
    "during the first epoch (no checkpoint yet)": "train_step:20",
    "during validation": "validation:2",
    "during the first checkpoint save": "checkpoint_save:1",
    "during a checkpoint save": "checkpoint_save:3",
    "right after a save": "after_save:2",
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("crash") / "reference"
    result = run_subprocess([*ARGS, f"output_dir={run_dir}"], cwd=ROOT)
    assert result.code == 0, result.err[-3000:]
    return run_dir


def tensors(folder, name="model.safetensors"):
    return load_file(str(folder / name))


def assert_checkpoints_match_reference(run_dir, reference):
    for ckpt in list_checkpoints(run_dir):
        json.loads((ckpt / "trainer_state.json").read_text())
        torch.load(ckpt / "optimizer.bin", weights_only=True)
        mine, theirs = tensors(ckpt), tensors(reference / "checkpoints" / ckpt.name)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), f"{ckpt.name} differs from the reference"


@pytest.mark.parametrize("stage", STAGES)
def test_kill_then_rerun_equals_the_uninterrupted_run(stage, reference, tmp_path):
    args = [*ARGS, f"output_dir={tmp_path / 'run'}"]
    crashed = run_subprocess(args, cwd=ROOT, HW3_CRASH_AT=STAGES[stage])
    assert crashed.code == -9, crashed.err[-2000:]
    assert_checkpoints_match_reference(tmp_path / "run", reference)
    resumed = run_subprocess(args, cwd=ROOT)
    assert resumed.code == 0, resumed.err[-3000:]
    assert deterministic(read_metrics(tmp_path / "run")) == deterministic(read_metrics(reference))
    assert_checkpoints_match_reference(tmp_path / "run", reference)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [p.name for p in list_checkpoints(reference)]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    best, ref_best = tensors(tmp_path / "run" / "best"), tensors(reference / "best")
    assert all(torch.equal(best[k], ref_best[k]) for k in ref_best)


def test_two_crashes_in_a_row(reference, tmp_path):
    args = [*ARGS, f"output_dir={tmp_path / 'run'}"]
    assert run_subprocess(args, cwd=ROOT, HW3_CRASH_AT="train_step:30").code == -9
    assert run_subprocess(args, cwd=ROOT, HW3_CRASH_AT="validation:2").code == -9  # epoch 2's validation
    assert run_subprocess(args, cwd=ROOT).code == 0
    assert deterministic(read_metrics(tmp_path / "run")) == deterministic(read_metrics(reference))
    assert_checkpoints_match_reference(tmp_path / "run", reference)
