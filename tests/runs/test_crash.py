"""Crash harness: SIGKILL a run at each stage, rerun the same command, and compare with an uninterrupted run,
bit for bit (metrics.jsonl and weights). Every checkpoint a crash leaves behind must equal the uninterrupted
run's checkpoint of the same name, or not look complete at all."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

from hw3.runs.checkpoints import list_checkpoints

from helpers import RECIPES, RICH, ROOT, deterministic, read_metrics, run_subprocess

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


SCENARIOS = {
    **{stage: [crash] for stage, crash in STAGES.items()},
    "two crashes in a row": ["train_step:30", "validation:2"],
}


def crash_then_rerun(run_dir, crashes: list[str]) -> dict:
    """Kill the run at each of `crashes` in turn (SIGKILL, from inside: HW3_CRASH_AT), keep a copy of what the last
    crash left, then rerun the same command to the end."""
    args = [*ARGS, f"output_dir={run_dir}"]
    codes = [run_subprocess(args, cwd=ROOT, HW3_CRASH_AT=crash).code for crash in crashes]
    shutil.copytree(run_dir, run_dir.with_name("after-the-crash"))
    resumed = run_subprocess(args, cwd=ROOT)
    return dict(crash_codes=codes, resumed=resumed)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """The uninterrupted reference and every scenario, two at a time (each child has one thread; two cores)."""
    root = tmp_path_factory.mktemp("crash")

    def reference():
        result = run_subprocess([*ARGS, f"output_dir={root / 'reference'}"], cwd=ROOT)
        assert result.code == 0, result.err[-3000:]
        return root / "reference"

    with ThreadPoolExecutor(max_workers=2) as pool:
        ref = pool.submit(reference)
        runs = {name: pool.submit(crash_then_rerun, root / f"s{i}" / "run", crashes)
                for i, (name, crashes) in enumerate(SCENARIOS.items())}  # fmt: skip
        return ref.result(), {name: (root / f"s{i}", run.result()) for i, (name, run) in enumerate(runs.items())}


def tensors(folder, name="model.safetensors"):
    return load_file(str(folder / name))


def assert_checkpoints_match_reference(run_dir, reference):
    for ckpt in list_checkpoints(run_dir):
        json.loads((ckpt / "trainer_state.json").read_text())
        torch.load(ckpt / "optimizer.bin", weights_only=True)
        mine, theirs = tensors(ckpt), tensors(reference / "checkpoints" / ckpt.name)
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), f"{ckpt.name} differs from the reference"


@pytest.mark.parametrize("stage", SCENARIOS)
def test_kill_then_rerun_equals_the_uninterrupted_run(stage, outcomes):
    reference, scenarios = outcomes
    folder, outcome = scenarios[stage]
    assert outcome["crash_codes"] == [-9] * len(SCENARIOS[stage])
    assert_checkpoints_match_reference(folder / "after-the-crash", reference)
    assert outcome["resumed"].code == 0, outcome["resumed"].err[-3000:]
    run = folder / "run"
    assert deterministic(read_metrics(run)) == deterministic(read_metrics(reference))
    assert_checkpoints_match_reference(run, reference)
    assert [p.name for p in list_checkpoints(run)] == [p.name for p in list_checkpoints(reference)]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    best, ref_best = tensors(run / "best"), tensors(reference / "best")
    assert all(torch.equal(best[k], ref_best[k]) for k in ref_best)
