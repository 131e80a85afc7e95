"""Training lifecycle: early stopping, best weights vs rolling checkpoints, exact resume after SIGKILL and
SIGTERM, the batch-size schedule, EMA/mixup, trackers, non-finite steps."""

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hw3.engine.build
from hw3.runs.checkpoints import list_checkpoints

from helpers import (
    METRIC_KEYS,
    RECIPES,
    RICH,
    ROOT,
    Killed,
    deterministic,
    kill_at,
    read_metrics,
    read_summary,
    run_subprocess,
)

QUICK = RECIPES / "quickstart.yaml"
# lr = 0 and no BatchNorm: the model never changes, so epoch 0 stays the best and later epochs never improve.
FROZEN = ["--recipe", QUICK, "model.name=simple_mlp", "optim.lr=0", "sched.name=none"]


def last_weights(run_dir: Path) -> dict:
    return load_file(str(list_checkpoints(run_dir)[-1] / "model.safetensors"))


def assert_same_run(a: Path, b: Path):
    assert deterministic(read_metrics(a)) == deterministic(read_metrics(b))
    wa, wb = last_weights(a), last_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ea, eb = (load_file(str(list_checkpoints(d)[-1] / "ema.safetensors")) for d in (a, b))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    sa, sb = read_summary(a), read_summary(b)
    assert (sa["test_acc"], sa["best_epoch"], sa["optimizer_steps"]) == (
        sb["test_acc"],
        sb["best_epoch"],
        sb["optimizer_steps"],
    )


def stop_then_rerun(run_dir: Path, crash: str) -> tuple:
    """Stop the run at `crash` (HW3_CRASH_AT), note the checkpoints it left, rerun the same command."""
    args = ["--recipe", QUICK, *RICH, f"output_dir={run_dir}"]
    stopped = run_subprocess(args, cwd=ROOT, HW3_CRASH_AT=crash)
    left = [(p.name, json.loads((p / "trainer_state.json").read_text())) for p in list_checkpoints(run_dir)]
    return stopped, left, run_subprocess(args, cwd=ROOT)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """The uninterrupted run, one SIGKILLed mid-epoch and one SIGTERMed mid-epoch, each rerun: two at a time
    (each child has one thread; two cores)."""
    root = tmp_path_factory.mktemp("lifecycle")
    with ThreadPoolExecutor(max_workers=2) as pool:
        whole = pool.submit(run_subprocess, ["--recipe", QUICK, *RICH, f"output_dir={root / 'whole'}"], cwd=ROOT)
        killed = pool.submit(stop_then_rerun, root / "killed", "train_step:50")  # epoch 1 has steps 41..82
        termed = pool.submit(stop_then_rerun, root / "termed", "train_step:60:TERM")
        result = whole.result()
        assert result.code == 0, result.err[-3000:]
        return root, killed.result(), termed.result()


@pytest.fixture(scope="module")
def uninterrupted(lifecycle):
    return lifecycle[0] / "whole"


def test_sigkill_mid_epoch_then_the_same_command_resumes_bit_for_bit(lifecycle):
    root, (crashed, left, resumed), _ = lifecycle
    assert crashed.code == -9
    assert [name for name, _ in left] == ["epoch0000-batch000041"]  # 1,294 at 32
    assert resumed.code == 0, resumed.err[-3000:]
    assert "resuming from" in resumed.out
    assert_same_run(root / "whole", root / "killed")


def test_sigterm_saves_mid_epoch_and_the_resume_is_exact(lifecycle):
    root, _, (stopped, left, resumed) = lifecycle
    assert stopped.code == 128 + 15, stopped.err[-3000:]
    assert stopped.err.strip().endswith(
        f"stopped by SIGTERM at epoch 1 batch 19; checkpoint {root / 'termed/checkpoints/epoch0001-batch000019'} "
        "saved; rerun the same command to continue"
    )
    assert "Traceback" not in stopped.err
    name, state = left[-1]
    assert name == "epoch0001-batch000019"  # 41 steps in epoch 0, 19 of epoch 1
    assert state["train"]["batch"] == 19 and state["processes"][0]["epoch"]["count"] == 19 * 32
    assert resumed.code == 0, resumed.err[-3000:]
    assert_same_run(root / "whole", root / "termed")


def test_the_rich_run_logs_its_batch_sizes(uninterrupted):
    # The exact lr under batch-size schedules and plateau cuts is checked in test_decisions.py.
    rows = read_metrics(uninterrupted)
    assert [r["batch_size"] for r in rows] == [32, 32, 64, 64]


def test_early_stopping_fires_on_time_and_keeps_the_best(train, tmp_path):
    args = [
        *FROZEN,
        "early_stop.patience=2",
        "train.epochs=20",
        "train.keep_last=1",
        f"output_dir={tmp_path / 'run'}",
    ]
    result = train(*args)
    assert result.code == 0, result.err
    summary = read_summary(tmp_path / "run")
    assert summary["stopped_early"] is True and summary["epochs_completed"] == 3 and summary["stopped_epoch"] == 2
    assert summary["best_epoch"] == 0
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch0002-batch000021"]  # keep_last=1 ...
    assert json.loads((tmp_path / "run" / "best" / "meta.json").read_text())["epoch"] == 0  # ... best kept apart
    again = train(*args)  # rerunning a finished run trains nothing more
    assert again.code == 0 and read_summary(tmp_path / "run")["epochs_completed"] == 3


def test_early_stopping_state_survives_a_resume(train, tmp_path, monkeypatch):
    args = [*FROZEN, "early_stop.patience=3", "train.epochs=20", f"output_dir={tmp_path / 'run'}"]
    kill_at(monkeypatch, "after_save", 2)  # after epoch 1: one epoch without improvement so far
    with pytest.raises(Killed):
        train(*args)
    monkeypatch.undo()
    assert train(*args).code == 0
    assert read_summary(tmp_path / "run")["epochs_completed"] == 4  # stops after epoch 3, not 1 + 4


def test_warmup_epochs_delay_early_stopping(train, tmp_path):
    result = train(
        *FROZEN,
        "early_stop.patience=2",
        "early_stop.warmup_epochs=3",
        "train.epochs=20",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 0 and read_summary(tmp_path / "run")["epochs_completed"] == 5


def test_ema_is_evaluated_checkpointed_and_eligible(train, tmp_path):
    result = train("--recipe", QUICK, "train.ema_decay=0.9", "train.epochs=3", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    assert "(ema " in result.out
    assert (list_checkpoints(tmp_path / "run")[-1] / "ema.safetensors").is_file()
    # which of the two becomes the best is checked with scripted results in test_decisions.py; here the run's
    # own numbers: the summary names the source whose validation accuracy was the best of the run
    rows, summary = read_metrics(tmp_path / "run"), read_summary(tmp_path / "run")
    best_row = rows[summary["best_epoch"]]
    key = "val_acc" if summary["best_source"] == "model" else "ema_val_acc"
    assert summary["best_val_acc"] == best_row[key] == max(max(r["val_acc"], r["ema_val_acc"]) for r in rows)


def test_mixup_cutmix_and_label_smoothing_train(train, tmp_path):
    result = train(
        "--recipe",
        QUICK,
        "train.mixup=0.2",
        "train.cutmix=0.2",
        "train.label_smoothing=0.1",
        "train.epochs=6",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 0, result.err
    assert read_summary(tmp_path / "run")["test_acc"] > 0.9


def test_resume_never_and_overwrite(train, tmp_path):
    args = ["--recipe", QUICK, "train.epochs=1", f"output_dir={tmp_path / 'run'}"]
    assert train(*args).code == 0
    refused = train(*args, "train.resume=never")
    assert refused.code == 2 and "already holds a run" in refused.err
    assert (tmp_path / "run" / "summary.json").is_file()  # untouched
    assert train(*args, "train.resume=never", "train.overwrite=true").code == 0
    first = list_checkpoints(tmp_path / "run")[0]
    fork = ["--recipe", QUICK, "train.epochs=2", f"train.resume={first}", f"output_dir={tmp_path / 'other'}"]
    refused = train(*fork)  # checked like any resume: 1 -> 2 epochs re-lays the schedule
    assert refused.code == 2 and "train.epochs: 1 -> 2 for the run in" in refused.err
    assert train(*fork, "train.extend_epochs=true").code == 0
    assert len(read_metrics(tmp_path / "other")) == 2
    missing = train(*args, f"train.resume={tmp_path / 'nope'}")
    assert missing.code == 2 and "is not a checkpoint folder" in missing.err


def test_overwrite_refuses_a_folder_that_is_not_a_run(train, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    result = train("--recipe", QUICK, f"output_dir={precious}", "train.overwrite=true")
    assert result.code == 2 and "refusing to delete" in result.err
    assert (precious / "thesis.tex").read_text() == "do not delete"
    result = train("--recipe", QUICK, f"output_dir={precious}")
    assert result.code == 2 and "holds no hw3 checkpoint" in result.err


def test_tensorboard_events_hold_the_scalars(train, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train("--recipe", QUICK, "train.epochs=2", f"output_dir={tmp_path / 'run'}").code == 0
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "hw3"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(METRIC_KEYS[1:]) | {"grad_norm", "skipped_steps"} <= tags
    rows = read_metrics(tmp_path / "run")
    assert [e.value for e in acc.Scalars("val_acc")] == pytest.approx([r["val_acc"] for r in rows])


def test_wandb_offline_history_and_resumed_run_id(train, tmp_path):
    args = [
        "--recipe",
        QUICK,
        "log.trackers=[wandb]",
        "log.run_name=quick",
        "log.tags=[test]",
        f"output_dir={tmp_path / 'run'}",
    ]
    assert train(*args, "train.epochs=1").code == 0
    assert train(*args, "train.epochs=2", "train.extend_epochs=true").code == 0
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    ids = {re.match(r"offline-run-\d{8}_\d{6}-([0-9a-z]+)", r.name).group(1) for r in runs}
    assert len(runs) == 2 and len(ids) == 1  # one run id, continued (wandb adds "-1" to a folder name taken)
    history = b"".join(f.read_bytes() for r in runs for f in r.glob("*.wandb"))
    assert b"val_acc" in history and b"train_loss" in history


def planted_nan(monkeypatch, bad_steps):
    """The loss becomes NaN on the given (0-based) forward calls."""
    real = hw3.engine.build.make_loss
    calls = {"n": 0}

    def make(cfg):
        inner = real(cfg)

        def loss(logits, targets):
            value = inner(logits, targets)
            calls["n"] += 1
            return value * float("nan") if calls["n"] - 1 in bad_steps else value

        return loss

    monkeypatch.setattr(hw3.engine.build, "make_loss", make)


def test_planted_nan_steps_are_skipped_and_counted(train, tmp_path, monkeypatch):
    planted_nan(monkeypatch, {25, 26, 27})
    result = train("--recipe", QUICK, "train.epochs=3", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    rows = read_metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in rows] == [0, 3, 0]
    assert read_summary(tmp_path / "run")["skipped_steps"] == 3 and read_summary(tmp_path / "run")["test_acc"] > 0.9


def test_consecutive_nan_steps_stop_the_run_cleanly(train, tmp_path, monkeypatch):
    """Steps 1-30 are fine, every later one is NaN. The host looks at the device every log.log_every=5 steps
    (and at the end of each 21-step epoch): at step 35 it sees 5 non-finite steps in a row and stops."""
    planted_nan(monkeypatch, set(range(30, 10_000)))
    args = ["--recipe", QUICK, "train.epochs=5", "train.max_bad_steps=5", "log.log_every=5"]
    result = train(*args, f"output_dir={tmp_path / 'run'}")
    assert result.code == 1
    assert "error: 5 consecutive non-finite steps (loss or gradient) by epoch 1, step 35 " in result.err
    assert "(train.max_bad_steps=5); last good checkpoint: " in result.err and "epoch0000-batch000021" in result.err
    summary = read_summary(tmp_path / "run")
    assert summary["stopped_reason"] == "non_finite" and summary["epochs_completed"] == 1
    assert summary["skipped_steps"] == 5
    weights = last_weights(tmp_path / "run")
    assert all(t.isfinite().all() for t in weights.values() if t.is_floating_point())
