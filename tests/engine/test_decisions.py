"""The loop's decisions, driven by scripted validation results: when early stopping fires (min_delta boundary,
warm-up, both monitors), which epoch and which weights (model or EMA) are kept as the best, the tie rule, the
plateau schedule's exact lr per epoch (also across a kill and resume), the lr under batch-size schedules, and
gradient accumulation through the CLI. Training runs for real; only what the loop sees of validation is
scripted, so every expected value below is worked out by hand from the rules in the README."""

import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import (
    RECIPES,
    Killed,
    checkpoint_after_epoch,
    kill_at,
    read_metrics,
    read_summary,
    script_validation,
)

QUICK = RECIPES / "quickstart.yaml"
BASE = ["--recipe", QUICK, "log.trackers=[]", "train.keep_last=100", "train.epochs=10"]
JUST_ABOVE = 2**-10  # exactly representable, so "boundary + JUST_ABOVE" has no rounding


def run_scripted(train, monkeypatch, run_dir, script, *overrides):
    script_validation(monkeypatch, script)
    result = train(*BASE, *overrides, f"output_dir={run_dir}")
    assert result.code == 0, result.err
    return read_summary(run_dir)


def assert_best_weights_are(run_dir, epoch, source):
    """best/model.safetensors holds exactly the model's (or the EMA's) weights at the end of `epoch`."""
    best = load_file(str(run_dir / "best" / "model.safetensors"))
    file = "ema.safetensors" if source == "ema" else "model.safetensors"
    expected = load_file(str(checkpoint_after_epoch(run_dir, epoch) / file))
    assert best.keys() == expected.keys()
    assert all(torch.equal(best[k], expected[k]) for k in expected)
    other = load_file(str(checkpoint_after_epoch(run_dir, epoch + 1 if epoch == 0 else epoch - 1) / file))
    assert not all(torch.equal(best[k], other[k]) for k in expected)  # the weights do differ between epochs


# name: (overrides, script of (acc, loss) per epoch, expected best epoch, expected stopping epoch)
EARLY_STOP_CASES = {
    # acc up by exactly min_delta is the best so far but not an improvement for patience; a tie on accuracy goes
    # to the lower loss.
    "val_acc at the min_delta boundary": (
        ["early_stop.monitor=val_acc", "early_stop.min_delta=0.125", "early_stop.patience=2"],
        [(0.25, 1.0), (0.375, 1.0), (0.375, 0.5)],
        2,
        2,
    ),
    "val_acc just past the boundary": (
        ["early_stop.monitor=val_acc", "early_stop.min_delta=0.125", "early_stop.patience=2"],
        [(0.25, 1.0), (0.375 + JUST_ABOVE, 1.0), (0.375 + JUST_ABOVE, 1.5), (0.25, 0.1)],
        1,
        3,
    ),
    "val_loss at the min_delta boundary": (
        ["early_stop.monitor=val_loss", "early_stop.min_delta=0.125", "early_stop.patience=2"],
        [(0.5, 1.0), (0.5, 0.875), (0.75, 0.875)],
        2,
        2,
    ),
    "val_loss just past the boundary": (
        ["early_stop.monitor=val_loss", "early_stop.min_delta=0.125", "early_stop.patience=2"],
        [(0.5, 1.0), (0.5, 0.875 - JUST_ABOVE), (0.25, 0.875 - JUST_ABOVE), (0.9, 0.9)],
        1,
        3,
    ),
    # A full tie keeps the earlier epoch; epochs before warmup_epochs do not use up patience.
    "warm-up delays the count": (
        ["early_stop.monitor=val_acc", "early_stop.patience=1", "early_stop.warmup_epochs=3"],
        [(0.5, 1.0)] * 5,
        0,
        3,
    ),
}


@pytest.mark.parametrize("case", EARLY_STOP_CASES)
def test_early_stopping_and_best_weights_follow_the_script(train, monkeypatch, tmp_path, case):
    overrides, script, best_epoch, stop_epoch = EARLY_STOP_CASES[case]
    summary = run_scripted(train, monkeypatch, tmp_path / "run", [{"model": m} for m in script], *overrides)
    assert (summary["stopped_early"], summary["stopped_epoch"], summary["epochs_completed"]) == (
        True,
        stop_epoch,
        stop_epoch + 1,
    )
    assert (summary["best_epoch"], summary["best_source"]) == (best_epoch, "model")
    assert (summary["best_val_acc"], summary["best_val_loss"]) == script[best_epoch]
    rows = read_metrics(tmp_path / "run")
    assert [(r["val_acc"], r["val_loss"]) for r in rows] == script[: stop_epoch + 1]
    assert_best_weights_are(tmp_path / "run", best_epoch, "model")


@pytest.mark.parametrize(
    "script, best_epoch, source",
    [
        # the EMA is best at epoch 1 ...
        ([{"model": (0.5, 1.0), "ema": (0.4, 1.0)}, {"model": (0.6, 1.0), "ema": (0.7, 1.0)}], 1, "ema"),
        # ... or the raw model is, while the EMA leads in the other epochs
        ([{"model": (0.5, 1.0), "ema": (0.6, 1.0)}, {"model": (0.8, 1.0), "ema": (0.7, 1.0)}], 1, "model"),
    ],
)
def test_the_best_weights_come_from_the_model_or_its_ema(train, monkeypatch, tmp_path, script, best_epoch, source):
    script = script + [{"model": (0.65, 1.0), "ema": (0.62, 1.0)}]
    summary = run_scripted(train, monkeypatch, tmp_path / "run", script, "train.ema_decay=0.9", "train.epochs=3")
    assert (summary["best_epoch"], summary["best_source"]) == (best_epoch, source)
    assert summary["best_val_acc"] == script[best_epoch][source][0]
    rows = read_metrics(tmp_path / "run")
    assert [r["val_acc"] for r in rows] == [s["model"][0] for s in script]  # the log shows the raw model
    assert_best_weights_are(tmp_path / "run", best_epoch, source)


# Plateau, patience 1, gamma 0.5, lr 0.01, floor 0.0025: better for epochs 1-2, flat after -> cut after epoch 4;
# flat -> cut after epoch 6; better at epoch 7, flat after it -> a third cut after epoch 9, held at the floor. Read
# the other way round (minimizing accuracy, maximizing loss), the first cut would come after epoch 2.
PLATEAU = ["sched.name=plateau", "sched.patience=1", "sched.gamma=0.5", "sched.min_lr=0.0025", "optim.lr=0.01"]
PLATEAU_LRS = [0.01] * 5 + [0.005] * 2 + [0.0025] * 4
PLATEAU_SCRIPTS = {
    "val_loss": [(0.5, loss) for loss in [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.5, 0.5, 0.5, 0.5]],
    "val_acc": [(acc, 1.0) for acc in [0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.8, 0.8, 0.8, 0.8]],
}


@pytest.mark.parametrize("monitor", PLATEAU_SCRIPTS)
def test_plateau_cuts_the_lr_on_the_monitored_metric(train, monkeypatch, tmp_path, monitor):
    script = [{"model": m} for m in PLATEAU_SCRIPTS[monitor]]
    run_scripted(train, monkeypatch, tmp_path / "run", script, *PLATEAU, f"sched.monitor={monitor}", "train.epochs=11")
    assert [r["lr"] for r in read_metrics(tmp_path / "run")] == pytest.approx(PLATEAU_LRS, rel=1e-12)


def test_plateau_state_survives_a_kill_after_a_cut(train, monkeypatch, tmp_path):
    script = [{"model": m} for m in PLATEAU_SCRIPTS["val_loss"]]
    args = [*PLATEAU, "train.epochs=11", f"output_dir={tmp_path / 'run'}"]
    script_validation(monkeypatch, script)
    kill_at(monkeypatch, "after_save", 6)  # after epoch 5's checkpoint: one cut made, the next one half-counted
    with pytest.raises(Killed):
        train(*BASE, *args)
    monkeypatch.undo()
    script_validation(monkeypatch, script)
    resumed = train(*BASE, *args)
    assert resumed.code == 0, resumed.err
    assert [r["lr"] for r in read_metrics(tmp_path / "run")] == pytest.approx(PLATEAU_LRS, rel=1e-12)


# Batch-size schedules: the lr is optim.lr at the batch size of epoch 0 (the schedule's, when it has an entry for
# epoch 0, whatever train.batch_size says), scaled by the batch size ratio.
@pytest.mark.parametrize(
    "schedule, batch_size, scaling, sizes, lrs",
    [
        ("{0: 16, 1: 32, 3: 64}", 128, "none", [16, 32, 32, 64], [0.01, 0.01, 0.01, 0.01]),
        ("{0: 16, 1: 32, 3: 64}", 128, "linear", [16, 32, 32, 64], [0.01, 0.02, 0.02, 0.04]),
        (
            "{0: 16, 1: 32, 3: 64}",
            128,
            "sqrt",
            [16, 32, 32, 64],
            [0.01, 0.01 * math.sqrt(2), 0.01 * math.sqrt(2), 0.02],
        ),
        ("{2: 64}", 32, "linear", [32, 32, 64, 64], [0.01, 0.01, 0.02, 0.02]),
    ],
)
def test_batch_size_schedule_sets_the_absolute_lr(train, tmp_path, schedule, batch_size, scaling, sizes, lrs):
    result = train(
        *BASE,
        "sched.name=none",
        "optim.lr=0.01",
        "train.epochs=4",
        f"train.batch_size={batch_size}",
        f"train.batch_size_schedule={schedule}",
        f"train.lr_scaling={scaling}",
        f"output_dir={tmp_path / 'run'}",
    )
    assert result.code == 0, result.err
    rows = read_metrics(tmp_path / "run")
    assert [r["batch_size"] for r in rows] == sizes
    assert [r["lr"] for r in rows] == pytest.approx(lrs, rel=1e-12)


def test_gradient_accumulation_equals_the_full_batch(train, tmp_path):
    """1,294 training images: 18 steps of 72 (the last 70), or 54 micro-batches of 24 in groups of 3 (the last
    group 24 + 24 + 22). No BatchNorm and no dropout (simple_mlp), so the two runs are the same computation."""
    common = [*BASE, "model.name=simple_mlp", "optim.name=sgd", "optim.lr=0.05", "train.epochs=2"]
    assert train(*common, "train.batch_size=72", f"output_dir={tmp_path / 'full'}").code == 0
    accumulated = train(
        *common, "train.batch_size=24", "train.grad_accum_steps=3", f"output_dir={tmp_path / 'accumulated'}"
    )
    assert accumulated.code == 0, accumulated.err
    full, acc = read_summary(tmp_path / "full"), read_summary(tmp_path / "accumulated")
    assert full["optimizer_steps"] == acc["optimizer_steps"] == 36
    rows_full, rows_acc = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "accumulated")
    assert [r["lr"] for r in rows_full] == [r["lr"] for r in rows_acc]
    assert [r["train_loss"] for r in rows_acc] == pytest.approx([r["train_loss"] for r in rows_full], rel=1e-5)
    a = load_file(str(checkpoint_after_epoch(tmp_path / "full", 1) / "model.safetensors"))
    b = load_file(str(checkpoint_after_epoch(tmp_path / "accumulated", 1) / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    start = load_file(str(checkpoint_after_epoch(tmp_path / "full", 0) / "model.safetensors"))
    assert not all(torch.allclose(a[k], start[k], rtol=1e-4, atol=1e-6) for k in a)  # it did train


# ----------------------------------------------------------------------------------------------------------
# The epoch's last step is a boundary too: an epoch of 21 steps is not a multiple of log.log_every=50, yet what
# the host checks at its looks happens there.


def test_the_non_finite_guard_looks_at_the_last_step_of_the_epoch(train, tmp_path):
    # lr 1e38: the first step is finite and throws the weights out of float32's range; every later one is not
    args = ["optim.name=sgd", "optim.lr=1e38", "train.max_bad_steps=3", "log.log_every=50"]
    result = train(*BASE, *args, f"output_dir={tmp_path}")
    assert result.code == 1
    assert result.err.strip() == (
        "error: 20 consecutive non-finite steps (loss or gradient) by epoch 0, step 21 (train.max_bad_steps=3); "
        "last good checkpoint: none"
    )


def test_the_gradient_norm_is_sampled_at_the_last_step_of_an_epoch(train, tmp_path):
    norms = {}
    for log_every in (50, 21):  # 50: only the epochs' last steps look; 21: exactly those steps too
        assert (
            train(*BASE, "train.epochs=2", f"log.log_every={log_every}", f"output_dir={tmp_path / str(log_every)}").code
            == 0
        )
        norms[log_every] = [row["grad_norm"] for row in read_metrics(tmp_path / str(log_every))]
    assert norms[50] == norms[21] and all(norm > 0 for norm in norms[50])


def test_the_ema_is_validated_under_the_same_mixed_precision_as_the_model(train, tmp_path):
    """bf16 (autocast on the CPU too): with lr 0 the EMA's weights stay the model's, bit for bit, so the two must
    validate to the same numbers; the EMA's copy used to run in fp32 while the model ran under autocast."""
    args = ["--recipe", QUICK, "model.name=simple_mlp", "optim.lr=0", "sched.name=none", "train.ema_decay=0.9"]
    args += ["train.mixed_precision=bf16", "train.epochs=1", "log.trackers=[]", f"output_dir={tmp_path / 'run'}"]
    assert train(*args).code == 0
    (row,) = read_metrics(tmp_path / "run")
    assert (row["ema_val_loss"], row["ema_val_acc"]) == (row["val_loss"], row["val_acc"])
    fp32 = train(*args[:-2], "train.mixed_precision=no", "log.trackers=[]", f"output_dir={tmp_path / 'fp32'}")
    assert fp32.code == 0 and read_metrics(tmp_path / "fp32")[0]["val_loss"] != row["val_loss"]  # bf16 did apply
