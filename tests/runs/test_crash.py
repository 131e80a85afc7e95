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


def edit_a_manifest_key(run_dir):
    """The newest checkpoint's manifest with one letter of a key changed (still valid JSON)."""
    manifest = list_checkpoints(run_dir)[-1] / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"bytes"', '"bytez"', 1))


def damage_the_only_checkpoint(run_dir):
    (only,) = list_checkpoints(run_dir)
    with open(only / "model.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\xff" * 64)


SCENARIOS = {
    **{stage: [crash] for stage, crash in STAGES.items()},
    "two crashes in a row": ["train_step:30", "validation:2"],
    # after the crash, damage: the newest of two checkpoints (the older one is used), the only one (start over)
    "a manifest key edited": ["train_step:100", edit_a_manifest_key],  # epoch 2 (41 + 41 steps of 32, then 64s)
    "the only checkpoint damaged": ["train_step:50", damage_the_only_checkpoint],  # epoch 1
}


def crash_then_rerun(run_dir, steps: list) -> dict:
    """Kill the run at each crash of `steps` in turn (SIGKILL, from inside: HW3_CRASH_AT) and apply each damage
    function after it, keep a copy of what that left, then rerun the same command to the end."""
    args = [*ARGS, f"output_dir={run_dir}"]
    codes = []
    for step in steps:
        if callable(step):
            step(run_dir)
        else:
            codes.append(run_subprocess(args, cwd=ROOT, HW3_CRASH_AT=step).code)
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
    assert outcome["crash_codes"] == [-9] * sum(isinstance(step, str) for step in SCENARIOS[stage])
    if all(isinstance(step, str) for step in SCENARIOS[stage]):  # (a damaged one does not match, by design)
        assert_checkpoints_match_reference(folder / "after-the-crash", reference)
    assert outcome["resumed"].code == 0, outcome["resumed"].err[-3000:]
    run = folder / "run"
    assert deterministic(read_metrics(run)) == deterministic(read_metrics(reference))
    assert_checkpoints_match_reference(run, reference)
    assert [p.name for p in list_checkpoints(run)] == [p.name for p in list_checkpoints(reference)]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    best, ref_best = tensors(run / "best"), tensors(reference / "best")
    assert all(torch.equal(best[k], ref_best[k]) for k in ref_best)


def test_damage_found_on_the_rerun_is_one_line_naming_it(outcomes):
    """The reruns above that met a damaged checkpoint said so in one line each, and kept it aside."""
    _, scenarios = outcomes
    folder, outcome = scenarios["a manifest key edited"]
    said = [line for line in outcome["resumed"].err.splitlines() if line.startswith("warning:")]
    assert len(said) == 1 and "manifest.json is damaged; moved aside to damaged-epoch0001-batch000041" in said[0], said
    assert "resuming from" in outcome["resumed"].out and "checkpoints/epoch0000-batch000041" in outcome["resumed"].out
    folder, outcome = scenarios["the only checkpoint damaged"]
    said = [line for line in outcome["resumed"].err.splitlines() if line.startswith("warning:")]
    assert len(said) == 1 and said[0].endswith("they are moved aside (damaged-*) and the run starts over from epoch 0")
    assert (folder / "run" / "checkpoints" / "damaged-epoch0000-batch000041").is_dir()
