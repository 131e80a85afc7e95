"""hw3.optim.schedules: the lr trace of each schedule equals torch's own scheduler's over a short run."""

import pytest
import torch

from hw3.config import SchedConfig
from hw3.optim.schedules import Layout, batch_scale, build_schedule

EPOCHS, STEPS, LR = 6, 10, 0.1
STARTS = Layout([(0, STEPS)], EPOCHS)  # every epoch STEPS steps long


def torch_trace(make, per_step: bool, metrics=None) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = make(opt)
    trace = []
    for step in range(EPOCHS * STEPS):
        trace.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_step:
            sched.step()
        elif (step + 1) % STEPS == 0:
            sched.step(metrics[step // STEPS]) if metrics else sched.step()
    return trace


def our_trace(cfg: SchedConfig, metrics=None) -> list[float]:
    schedule = build_schedule(cfg, LR, STARTS)
    trace = []
    for step in range(EPOCHS * STEPS):
        trace.append(LR * schedule.factor(step))
        if metrics and (step + 1) % STEPS == 0:
            value = metrics[step // STEPS]
            schedule.end_of_epoch(dict(acc=value, loss=value))
    return trace


CASES = {
    "none": (SchedConfig(name="none"), lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0), False),
    "step": (
        SchedConfig(name="step", step_size=2, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        False,
    ),
    "multistep": (
        SchedConfig(name="multistep", milestones=[1, 4], gamma=0.1),
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[1, 4], gamma=0.1),
        False,
    ),
    "cosine": (
        SchedConfig(name="cosine", warmup_epochs=1.5, warmup_start_factor=0.1, min_lr=0.001),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=15),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=EPOCHS * STEPS - 15, eta_min=0.001),
            ],
            milestones=[15],
        ),
        True,
    ),
    "onecycle": (
        SchedConfig(name="onecycle", pct_start=0.3, div_factor=25.0, final_div_factor=1e4),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=LR,
            total_steps=EPOCHS * STEPS,
            pct_start=0.3,
            div_factor=25.0,
            final_div_factor=1e4,
            cycle_momentum=False,
        ),
        True,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_trace_matches_torch(name):
    cfg, make, per_step = CASES[name]
    ours, theirs = our_trace(cfg), torch_trace(make, per_step)
    assert len(ours) == len(theirs) == EPOCHS * STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-9


@pytest.mark.parametrize(
    "monitor, metrics",
    [
        ("val_loss", [1.0, 0.9, 0.95, 0.97, 0.89, 0.99]),
        ("val_acc", [0.5, 0.6, 0.6, 0.55, 0.61, 0.6]),
    ],
)
def test_plateau_matches_torch(monitor, metrics):
    cfg = SchedConfig(name="plateau", monitor=monitor, patience=1, gamma=0.5, threshold=1e-4, min_lr=0.03)
    mode = "min" if monitor == "val_loss" else "max"
    theirs = torch_trace(
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode=mode, factor=0.5, patience=1, threshold=1e-4, min_lr=0.03
        ),
        False,
        metrics,
    )
    ours = our_trace(cfg, metrics)
    assert ours == pytest.approx(theirs, abs=1e-12) and min(ours) >= 0.03 and ours[-1] < ours[0]


def test_plateau_state_round_trips():
    cfg = SchedConfig(name="plateau", patience=0, gamma=0.5)
    a = build_schedule(cfg, LR, STARTS)
    for m in (1.0, 2.0, 3.0):
        a.end_of_epoch(dict(acc=m, loss=m))
    b = build_schedule(cfg, LR, STARTS)
    b.load_state_dict(a.state_dict())
    assert b.factor(0) == a.factor(0) == 0.25


def test_batch_size_scaling():
    assert batch_scale("none", 256, 64) == 1.0
    assert batch_scale("linear", 256, 64) == 4.0
    assert batch_scale("sqrt", 256, 64) == 2.0


def test_warmup_follows_a_batch_size_schedule():
    # Epoch 0 has 10 steps, epoch 1 has 4 (a larger batch): 1.5 warm-up epochs end at step 10 + 2.
    sched = build_schedule(
        SchedConfig(name="cosine", warmup_epochs=1.5), LR, Layout([(0, 10), (1, 4)], 3)
    )  # epochs of 10, 4 and 4 steps
    assert sched.warmup == 12 and sched.factor(12) == 1.0 and sched.factor(11) < 1.0
