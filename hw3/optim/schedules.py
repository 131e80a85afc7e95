"""Learning-rate schedules as functions of training progress.

The loop sets every param group's lr before every optimizer step:

    lr = initial_lr * schedule.factor(step) * batch-size scaling

`step` counts optimizer steps taken so far, over the whole run, and `layout.start(e)` is the step at which
epoch e starts (steps per epoch change with a batch-size schedule). The formulas are torch's own (StepLR,
MultiStepLR, LinearLR + CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau; the tests compare traces), but as a
pure function of progress they cannot be stepped twice by accelerate's per-process scheduler stepping, they
compose with batch-size scaling, and resuming needs only `step` (plus plateau's few counters).
"""

from __future__ import annotations

import bisect
import math
from typing import Callable

from hw3.config import SchedConfig
from hw3.config.names import Registry
from hw3.config.rules import at_least, between, check_section
from hw3.runs.metrics import MONITORS, Monitor

RULES = {
    "min_lr": at_least(0),
    "warmup_epochs": at_least(0),
    "step_size": at_least(1),
    "gamma": between(0, 1, closed_low=False, closed_high=True),
    "pct_start": between(0, 1, closed_low=False),
    "patience": at_least(0),
}


def check_sched(cfg: SchedConfig) -> None:
    """The `sched` section: ranges, the schedule's name, plateau's monitor."""
    check_section(cfg, "sched", RULES, {"monitor": MONITORS})
    SCHEDULES.get(cfg.name, "sched.name")


class Layout:
    """The optimizer step at which each epoch starts, without a list per epoch: steps per epoch are constant
    between the keys of a batch-size schedule, so `segments` [(first epoch, steps per epoch), ...] say it all,
    and a run of 10^12 epochs costs nothing up front.
    """

    def __init__(self, segments: list[tuple[int, int]], epochs: int):
        self.segments, self.epochs = sorted(segments), epochs
        self.total = self.start(epochs)

    def start(self, epoch: int) -> int:
        step = 0
        for i, (first, steps) in enumerate(self.segments):
            end = self.segments[i + 1][0] if i + 1 < len(self.segments) else None
            if epoch <= first:
                break
            step += (min(epoch, end) - first if end is not None else epoch - first) * steps
        return step

    def epoch_of(self, step: int) -> int:
        """The last epoch in [0, epochs] that starts at or before `step` (binary search over start())."""
        low, high = 0, self.epochs
        while low < high:
            mid = (low + high + 1) // 2
            if self.start(mid) <= step:
                low = mid
            else:
                high = mid - 1
        return low


class Schedule:
    """Constant lr (sched.name=none); the base of the others."""

    def __init__(self, cfg: SchedConfig, lr: float, layout: Layout):
        self.cfg, self.lr, self.layout = cfg, lr, layout
        self.total = layout.total

    def epoch_of(self, step: int) -> int:
        return self.layout.epoch_of(step)

    def factor(self, step: int) -> float:
        return 1.0

    def end_of_epoch(self, metrics: dict) -> None:
        """Called with the validation results {"acc", "loss"} (the same on every process) after each epoch."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


SCHEDULES: Registry[Callable[[SchedConfig, float, Layout], Schedule]] = Registry("schedule")
SCHEDULES.register("none")(Schedule)


@SCHEDULES.register("step")
class StepSchedule(Schedule):
    def factor(self, step: int) -> float:
        return self.cfg.gamma ** (self.epoch_of(step) // self.cfg.step_size)


@SCHEDULES.register("multistep")
class MultiStepSchedule(Schedule):
    def factor(self, step: int) -> float:
        return self.cfg.gamma ** bisect.bisect_right(sorted(self.cfg.milestones), self.epoch_of(step))


@SCHEDULES.register("cosine")
class CosineSchedule(Schedule):
    """Linear warm-up over `warmup_epochs`, then a half cosine from lr down to min_lr at the last step."""

    def __init__(self, cfg: SchedConfig, lr: float, layout: Layout):
        super().__init__(cfg, lr, layout)
        whole = min(int(cfg.warmup_epochs), layout.epochs)
        frac = cfg.warmup_epochs - whole
        start, nxt = layout.start(whole), layout.start(min(whole + 1, layout.epochs))
        self.warmup = min(self.total, start + int(frac * (nxt - start)))

    def factor(self, step: int) -> float:
        if step < self.warmup:
            start = self.cfg.warmup_start_factor
            return start + (1.0 - start) * step / self.warmup
        floor = self.cfg.min_lr / self.lr if self.lr > 0 else 0.0
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return floor + (1.0 - floor) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


@SCHEDULES.register("onecycle")
class OneCycleSchedule(Schedule):
    """torch's OneCycleLR (two phases, cosine annealing) without momentum cycling."""

    def factor(self, step: int) -> float:
        start, final = 1.0 / self.cfg.div_factor, 1.0 / (self.cfg.div_factor * self.cfg.final_div_factor)
        peak_at = self.cfg.pct_start * self.total - 1
        if step <= peak_at:
            a, b, pct = start, 1.0, step / peak_at if peak_at > 0 else 1.0
        else:
            a, b, pct = 1.0, final, (step - peak_at) / max(1e-12, self.total - 1 - peak_at)
        return b + (a - b) / 2.0 * (1 + math.cos(math.pi * min(pct, 1.0)))


@SCHEDULES.register("plateau")
class PlateauSchedule(Schedule):
    """torch's ReduceLROnPlateau (relative threshold, no cooldown) on the reduced validation metric."""

    def __init__(self, cfg: SchedConfig, lr: float, layout: Layout):
        super().__init__(cfg, lr, layout)
        self.monitor = Monitor(cfg.monitor)
        self.current, self.best, self.bad_epochs = 1.0, None, 0

    def factor(self, step: int) -> float:
        return self.current

    def end_of_epoch(self, metrics: dict) -> None:
        value = self.monitor.value(metrics)
        margin = abs(self.best) * self.cfg.threshold if self.best is not None else 0.0
        if self.monitor.better(value, self.best, margin):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.cfg.patience:
            floor = self.cfg.min_lr / self.lr if self.lr > 0 else 0.0
            self.current, self.bad_epochs = max(self.current * self.cfg.gamma, floor), 0

    def state_dict(self) -> dict:
        return dict(current=self.current, best=self.best, bad_epochs=self.bad_epochs)

    def load_state_dict(self, state: dict) -> None:
        self.current, self.best, self.bad_epochs = state["current"], state["best"], state["bad_epochs"]


def build_schedule(cfg: SchedConfig, lr: float, layout: Layout) -> Schedule:
    """The schedule `sched.name` names, laid out over `layout`."""
    return SCHEDULES.get(cfg.name, "sched.name")(cfg, lr, layout)


def batch_scale(mode: str, batch_size: int, base_batch_size: int) -> float:
    """lr multiplier for a scheduled batch size: none, linear (Goyal et al.), or sqrt (Krizhevsky)."""
    ratio = batch_size / base_batch_size
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[mode]


def set_lr(optimizer, schedule: Schedule, step: int, scale: float = 1.0) -> None:
    """Write the lr for optimizer step `step` into every param group."""
    factor = schedule.factor(step) * scale
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
