"""The training loop: fit (epochs), train_one_epoch (steps), finish_epoch (validation and the decisions it drives).

The step itself is hw3.engine.step.train_step; what happens between two steps is hw3.engine.boundary. The step
never reads a value back from the device; the host looks every `log.log_every` steps and at the end of an epoch,
so a GPU is never left waiting for the host to queue the next step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from hw3.dist.faults import crash_point
from hw3.engine.boundary import (
    Interrupted,
    after_step,
    checkpoint,
    checkpoint_due,
    interrupted,
    look_at_device,
    progress_bar,
    reason_to_stop,
)
from hw3.engine.build import Run, batch_size_for
from hw3.engine.evaluation import evaluate_on_val
from hw3.engine.step import Micro, micro_batch_weights, train_step
from hw3.optim import applied_lr, head_parameters
from hw3.optim.schedules import batch_scale, set_lr


def fit(run: Run) -> None:
    """Train epoch after epoch until train.epochs or early stopping, a checkpoint after each. A signal or
    train.max_steps stops the launch inside an epoch (hw3.engine.boundary: Interrupted, MaxStepsReached)."""
    run.last_checkpoint = time.monotonic()  # the clock of timed checkpoints and of wall_time_s starts here
    train_cfg, state = run.cfg.train, run.state
    while state.epoch < train_cfg.epochs and state.stopped is None:
        epoch = state.epoch
        metrics = train_one_epoch(run, epoch, batch_size_for(train_cfg, epoch))
        trained = state.batch  # batches of this epoch: all of them
        state.stopped = finish_epoch(run, epoch, metrics)  # early stopping, or a trial the study prunes
        checkpoint(run, (epoch, trained))
        crash_point("after_save")
        if interrupted(run, agree=True):
            raise Interrupted(run.agreed_signal)


@dataclass
class EpochPlan:
    """One epoch's batches at one global batch size: per-process sizes, loss weights within an accumulated step,
    the lr scale of that batch size, and the batches from where the epoch resumes."""

    sizes: list[int]
    weights: list[float]
    accum: int
    lr_scale: float
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def of(cls, run: Run, epoch: int, batch_size: int) -> "EpochPlan":
        train_cfg = run.cfg.train
        sizes = run.data.batch_sizes(batch_size, epoch)
        return cls(
            sizes,
            micro_batch_weights(sizes, train_cfg.grad_accum_steps),
            train_cfg.grad_accum_steps,
            batch_scale(train_cfg.lr_scaling, batch_size, batch_size_for(train_cfg, 0)),
            iter(run.data.train_batches(epoch, batch_size, run.state.batch)),
        )

    def step(self, first: int) -> tuple[int, Iterator[Micro]]:
        """(the batch after this step, its micro-batches) for the step starting at batch `first`."""
        last = min(first + self.accum, len(self.sizes))
        # zip stops at the end of the range without taking the next batch
        batches = zip(range(first, last), self.batches)  # noqa: B905
        return last, ((x, y, self.weights[i], i == last - 1) for i, (x, y) in batches)


def train_one_epoch(run: Run, epoch: int, batch_size: int) -> dict:
    """Train `epoch` from batch run.state.batch on (> 0 when resuming mid-epoch); returns its train metrics."""
    state, log_every = run.state, run.cfg.log.log_every
    plan = EpochPlan.of(run, epoch, batch_size)
    run.model.train()
    freeze_backbone(run, frozen=epoch < run.cfg.train.freeze_backbone_epochs)
    bar = progress_bar(run, len(plan.sizes), epoch)
    started = time.perf_counter()
    try:
        while state.batch < len(plan.sizes):
            first = state.batch
            last, micro = plan.step(first)
            set_lr(run.optimizer, run.schedule, state.step, plan.lr_scale)
            look = (state.step + 1) % log_every == 0 or last == len(plan.sizes)  # the host reads the device
            if run.compile_guard.new_shape(plan.sizes[first:last]):  # torch.compile compiles: fall back on failure
                run.compile_guard.first_step(run, micro, look, train_step)
            else:
                train_step(run, micro, measure_norm=look)
            state.batch = last
            after_step(run, bar, last - first)
            if look:
                look_at_device(run, bar)
            stop = reason_to_stop(run)
            if stop is not None or (last < len(plan.sizes) and checkpoint_due(run)):
                run.sums.seconds += time.perf_counter() - started
                started = time.perf_counter()
                checkpoint(run, (epoch, state.batch))
                if stop is not None:
                    raise stop
    finally:
        if bar is not None:
            bar.close()
    run.sums.seconds += time.perf_counter() - started
    return epoch_metrics(run, batch_size)


def freeze_backbone(run: Run, frozen: bool) -> None:
    """train.freeze_backbone_epochs: in those epochs everything but the classifier head has no gradient (so the
    optimizer neither moves it nor keeps state for it) and its BatchNorm layers run in eval mode (their
    statistics do not move either); afterwards all of it trains. A function of the epoch: a resume lands on the
    same side of the switch."""
    if run.cfg.train.freeze_backbone_epochs == 0:
        return
    head = head_parameters(run.net)
    for p in run.net.parameters():
        p.requires_grad_(not frozen or p in head)
    if frozen:
        head_modules = set(run.net.get_submodule(run.net.pretrained_cfg["classifier"]).modules())
        for module in run.net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module not in head_modules:
                module.eval()


def epoch_metrics(run: Run, batch_size: int) -> dict:
    """The epoch's training metrics from its sums, reduced over processes and read in one go."""
    totals, sums = run.sums.totals(run.accelerator), run.sums
    count = max(totals["count"], 1)
    skipped = int(totals["skipped"]) // run.accelerator.num_processes  # every process counted the same steps
    run.state.skipped_steps += skipped
    run.state.unreadable_samples += int(totals["unreadable"])
    run.state.train_time_s += sums.seconds
    return dict(
        train_loss=totals["loss"] / count,
        train_acc=totals["correct"] / count,
        lr=applied_lr(run.optimizer),  # as applied at the epoch's last step, whatever set it
        batch_size=batch_size,
        epoch_time_s=sums.seconds,
        images_per_s=totals["count"] / max(sums.seconds, 1e-9),
        # each process measured the same all-reduced norm: average over the samples of one of them
        grad_norm=totals["grad_norm"] / max(totals["norm_samples"], 1),
        skipped_steps=skipped,
        unreadable_samples=int(totals["unreadable"]),
        loss_scale=run.scaler.get_scale() if run.scaler is not None else None,
        # what the run has spent so far: forward/backward passes over the training split, and training seconds
        passes=run.state.image_passes / run.data.num_train,
        train_time_s=run.state.train_time_s,
    )


def finish_epoch(run: Run, epoch: int, train: dict) -> Optional[str]:
    """Validate, keep the best weights, log, step the plateau schedule, decide early stopping and, for a trial of
    hw3.search, whether the study prunes it; returns why the run stops here ("early_stop", "pruned") or None."""
    crash_point("validation")
    results = evaluate_on_val(run)
    raw = results[0][1]
    row = dict(epoch=epoch, train_loss=train.pop("train_loss"), train_acc=train.pop("train_acc"))
    row.update(val_loss=raw["loss"], val_acc=raw["acc"], **train)
    if run.ema is not None:
        row.update(ema_val_loss=results[1][1]["loss"], ema_val_acc=results[1][1]["acc"])
    improved = run.best.offer(epoch, results)
    best_of_epoch = max((metrics for _, metrics, _ in results), key=run.best.monitor.rank)
    stop = "early_stop" if run.early_stop.should_stop(epoch, best_of_epoch) else None
    if run.trial is not None and run.trial.should_stop(epoch, run.best.monitor.value(best_of_epoch)):
        stop = "pruned"
    run.schedule.end_of_epoch(raw)
    run.state.history.append(row)
    run.state.epoch, run.state.batch = epoch + 1, 0
    run.sums.reset()
    run.tracker.epoch(row, improved)
    if row["loss_scale"] is not None and row["loss_scale"] < 1.0:
        run.accelerator.print(
            f"warning: the fp16 loss scale fell to {row['loss_scale']:g}: gradients overflow even "
            f"unscaled; bf16 (or a lower lr) avoids this"
        )
    return stop
