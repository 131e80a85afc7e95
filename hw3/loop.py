"""The training loop: fit (epochs), train_one_epoch (steps), train_step (one optimizer step), finish_epoch
(validation and the decisions it drives).

The step never reads a value back from the device: losses, accuracy counts, gradient norms, whether a step was
finite and how many were not all stay device tensors. The host looks at them every `log.log_every` steps and at
the end of an epoch (look_at_device), which is where train.max_bad_steps is enforced, processes agree on a
signal and the progress bar moves. A GPU is then never left waiting for the host to queue the next step.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, Optional

import psutil
import torch

from hw3.build import Run, batch_size_for, eval_batch_size
from hw3.checkpoint import list_checkpoints, save_checkpoint
from hw3.evaluation import evaluate
from hw3.faults import crash_point
from hw3.optim import head_parameters, routing_table
from hw3.optim.nonfinite import found_inf, step_unless, total_norm
from hw3.optim.sam import FULL, MOMENTUM, REUSE
from hw3.optim.schedules import batch_scale, set_lr
from hw3.signals import SIGNALS

Micro = tuple[torch.Tensor, torch.Tensor, float, bool]  # images, labels, loss weight, last of its step


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived (args[0]: the signal number); a checkpoint was saved at the last step boundary."""


class NonFinite(Exception):
    """Too many consecutive non-finite steps; the last good checkpoint is untouched."""


def fit(run: Run) -> None:
    """Train epoch after epoch until train.epochs, early stopping or train.max_steps; a checkpoint after each."""
    started = time.perf_counter()
    train_cfg, state = run.cfg.train, run.state
    while state.epoch < train_cfg.epochs and state.stopped is None:
        if train_cfg.max_steps is not None and state.step >= train_cfg.max_steps:
            state.stopped = "max_steps"
            break
        epoch = state.epoch
        metrics = train_one_epoch(run, epoch, batch_size_for(train_cfg, epoch))
        trained = state.batch  # batches of this epoch (all of them, unless train.max_steps cut it short)
        state.stopped = finish_epoch(run, epoch, metrics)  # early stopping, or a trial the study prunes
        if train_cfg.max_steps is not None and state.step >= train_cfg.max_steps:
            state.stopped = state.stopped or "max_steps"
        state.wall_time_s += time.perf_counter() - started
        started = time.perf_counter()
        checkpoint(run, (epoch, trained))
        crash_point("after_save")
        if interrupted(run, agree=True):
            raise Interrupted(run.agreed_signal)


def train_one_epoch(run: Run, epoch: int, batch_size: int) -> dict:
    """Train `epoch` from batch run.state.batch on (> 0 when resuming mid-epoch); returns its train metrics."""
    train_cfg, state, log_every = run.cfg.train, run.state, run.cfg.log.log_every
    run.model.train()
    freeze_backbone(run, frozen=epoch < train_cfg.freeze_backbone_epochs)
    sizes = run.data.batch_sizes(batch_size)
    weights = micro_batch_weights(sizes, train_cfg.grad_accum_steps)
    scale = batch_scale(train_cfg.lr_scaling, batch_size, batch_size_for(train_cfg, 0))
    batches = iter(run.data.train_batches(epoch, batch_size, state.batch))
    bar = progress_bar(run, len(sizes), epoch)
    started = time.perf_counter()
    while state.batch < len(sizes):
        first, last = state.batch, min(state.batch + train_cfg.grad_accum_steps, len(sizes))
        # this step's micro-batches (zip stops at the end of the range without taking the next batch)
        micro = ((x, y, weights[i], i == last - 1) for i, (x, y) in zip(range(first, last), batches))  # noqa: B905
        run.sums.lr_factor = set_lr(run.optimizer, run.schedule, state.step, scale)
        # The host looks every log.log_every steps and at the last step of the epoch (or of train.max_steps).
        final = last == len(sizes) or (train_cfg.max_steps is not None and state.step + 1 >= train_cfg.max_steps)
        look = (state.step + 1) % log_every == 0 or final
        if run.compile_guard.new_shape(sizes[first:last]):  # torch.compile compiles now: fall back if it fails
            run.compile_guard.first_step(run, micro, look, train_step)
        else:
            train_step(run, micro, measure_norm=look)
        state.batch = last
        if state.launches and "startup_s" not in state.launches[-1]:  # this launch's first step: its start-up
            state.launches[-1]["startup_s"] = round(time.time() - psutil.Process().create_time(), 2)
        crash_point("train_step")
        if bar is not None:
            bar.update(last - first)
        if look:
            look_at_device(run, bar)
        if interrupted(run) or (not final and checkpoint_due(run)):
            run.sums.seconds += time.perf_counter() - started
            started = time.perf_counter()
            checkpoint(run, (epoch, state.batch))
            if run.agreed_signal:
                raise Interrupted(run.agreed_signal)
        if final and last < len(sizes):
            break
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


def checkpoint(run: Run, position: tuple[int, int]) -> None:
    """The full training state at `position` (epoch, batches of it trained); restarts the interval's clock."""
    save_checkpoint(
        run.accelerator, run.run_dir, position, run.components(), run.own(), run.tensors(), run.cfg.train.keep_last
    )
    run.last_checkpoint = time.monotonic()
    run.checkpoint_due = False


def checkpoint_due(run: Run) -> bool:
    """A mid-epoch checkpoint after this step? train.checkpoint_every_steps counts optimizer steps (the same on
    every process); train.checkpoint_every_minutes is the main process's clock, agreed at the host's looks."""
    every = run.cfg.train.checkpoint_every_steps
    return run.checkpoint_due or (every is not None and run.state.step % every == 0)


def train_step(run: Run, micro_batches: Iterator[Micro], measure_norm: bool) -> None:
    """One optimizer step, top to bottom: forward, loss and backward of each micro-batch (one, or
    train.grad_accum_steps), or SAM's passes; clipping, the update (undone on the device when a gradient is not
    finite), the EMA, the running sums and the passes spent. Nothing here waits for the device."""
    scaler, sums, train_cfg = run.scaler, run.sums, run.cfg.train
    if run.sam is not None:
        (x, y, _, _), *_ = micro_batches  # SAM takes the whole batch in one micro-batch (no accumulation)
        passes, images = sam_passes(run, x, y), len(y)
    else:
        passes, images = 1, 0
        for x, y, weight, last in micro_batches:
            # Gradients are all-reduced on the last micro-batch of a step only.
            forward_backward(run, x, y, weight, sync=last)
            images += len(y)
    params = [p for p in run.net.parameters() if p.grad is not None]
    grads = [p.grad for p in params]
    if scaler is not None:
        scaler.unscale_(run.optimizer)  # once, before clipping and the finiteness check
    norm = None
    if train_cfg.max_grad_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, train_cfg.max_grad_norm, foreach=True)  # norm before clipping
    elif measure_norm:
        norm = total_norm(grads)
    bad = found_inf(grads, norm)
    step_unless(run.optimizer, bad)
    if scaler is not None:
        scaler.update()  # lowers the loss scale after an overflow, on the device
    run.optimizer.zero_grad(set_to_none=True)
    run.state.step += 1
    run.state.image_passes += passes * images * run.accelerator.num_processes  # counted, host-side
    if run.ema is not None:
        run.ema.update_unless(run.net, bad, run.state.step)
    sums.add_step(norm, bad)
    run.bad_steps.add(bad)
    if run.state.step == 1 and (run.cfg.optim.base if run.sam else run.cfg.optim.name) == "muon":
        run.tracker.write("optimizer_routing.md", routing_table(run.net, run.optimizer))


def forward_backward(run: Run, x, y, weight: float = 1.0, sync: bool = True, targets=None) -> None:
    """One forward/backward pass of a batch, mixed by mixup (when on) unless `targets` are given; gradients
    all-reduced only with `sync`; the pass is added to the epoch's running sums."""
    if targets is None:
        x, targets = mix(run.mixup, x, y) if run.mixup is not None else (x, y)
    with contextlib.nullcontext() if sync else run.accelerator.no_sync(run.model):
        if run.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        logits = run.model(x)
        loss = run.loss_fn(logits, targets)
        backward(run, loss if weight == 1.0 else loss * weight)
    run.sums.add_batch(loss.detach(), logits.detach(), y)  # now: a CUDA-graph replay reuses these buffers


def sam_passes(run: Run, x: torch.Tensor, y: torch.Tensor) -> int:
    """SAM's forward/backward passes for this step (hw3.optim.sam, SAM.kind); returns how many ran.

    A full step, per slice of the batch (optim.sam_batch_splits; one slice: plain SAM): pass 1 without
    all-reduce (each process, each slice, perturbs by its own gradient), then pass 2 at w + e(w), the slices'
    pass-2 gradients accumulated and all-reduced with the last one."""
    sam, net = run.sam, run.net
    kind = sam.kind(run.state.step)
    if kind != FULL:  # one pass: plain, LookSAM's reuse, or momentum SAM's at w - rho v / ||v||
        with sam.along_momentum(net, run.optimizer) if kind == MOMENTUM else contextlib.nullcontext():
            forward_backward(run, x, y, 1.0, sync=True)
        if kind == REUSE:
            sam.add_component([p for p in net.parameters() if p.grad is not None])
        return 1
    # one mix for the whole step: both passes see the same images and targets
    x, targets = mix(run.mixup, x, y) if run.mixup is not None else (x, y)
    sam.save_batchnorm(net)  # SAM keeps the statistics of pass 1 only
    parts = [t.tensor_split(sam.splits) for t in (x, y, targets)]
    slices = [s for s in zip(*parts, strict=True) if len(s[1])]
    for i, (xs, ys, ts) in enumerate(slices):
        earlier = [p.grad for p in net.parameters()]  # the slices' pass-2 gradients so far
        net.zero_grad(set_to_none=True)
        forward_backward(run, xs, ys, sync=False, targets=ts)  # pass 1: this process's own gradient
        with sam.perturbed(net, keep_plain=sam.variant == "looksam") as keep:  # keep: NaN if pass 1 was not finite
            for p, g in zip(net.parameters(), earlier, strict=True):
                p.grad = g
            last = i == len(slices) - 1
            with contextlib.nullcontext() if last else run.accelerator.no_sync(run.model):
                if run.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                backward(run, run.loss_fn(run.model(xs), ts) * (keep * (len(ys) / len(y))))
    if sam.variant == "looksam":
        sam.store_component([p for p in net.parameters() if p.grad is not None], run.accelerator)
    return 2


def backward(run: Run, loss: torch.Tensor) -> None:
    """Gradients of `loss`, scaled by the fp16 loss scale when there is one (unscaled once, before the step)."""
    (run.scaler.scale(loss) if run.scaler is not None else loss).backward()


def look_at_device(run: Run, bar) -> None:
    """The host's one read of the device per log.log_every steps (and at the end of an epoch): stop after too many
    non-finite steps in a row, agree across processes on whether a signal arrived and whether a timed checkpoint
    is due, show the running loss."""
    accelerator, sums, limit = run.accelerator, run.sums, run.cfg.train.max_bad_steps
    minutes = run.cfg.train.checkpoint_every_minutes
    due = minutes is not None and accelerator.is_main_process and time.monotonic() - run.last_checkpoint >= 60 * minutes
    flags = torch.stack(
        [
            run.bad_steps.longest.double(),
            torch.full_like(sums.loss, float(SIGNALS.pending)),
            torch.full_like(sums.loss, float(due)),
        ]
    )
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, "max")
    longest, signal, due, loss = torch.cat([flags, sums.loss[None]]).tolist()
    run.agreed_signal, run.checkpoint_due = int(signal), bool(due)
    run.compile_guard.look(run)
    if longest >= limit:
        checkpoints = list_checkpoints(run.run_dir)
        scale = f" (the fp16 loss scale fell to {run.scaler.get_scale():g}; try bf16)" if run.scaler else ""
        raise NonFinite(
            f"{int(longest)} consecutive non-finite steps (loss or gradient) by epoch {run.state.epoch}, step "
            f"{run.state.step} (train.max_bad_steps={limit}){scale}; last good checkpoint: "
            f"{checkpoints[-1] if checkpoints else 'none'}"
        )
    if bar is not None:
        bar.set_postfix(loss=f"{loss / max(sums.count, 1):.4f}")


def interrupted(run: Run, agree: bool = False) -> bool:
    """Has SIGTERM/SIGINT arrived? With one process: the handler's record, at every step. With several, they must
    stop at the same step: the record they last agreed on (in look_at_device, or here with `agree`, a collective)."""
    if run.accelerator.num_processes == 1:
        run.agreed_signal = SIGNALS.pending
    elif agree:
        flag = torch.tensor([float(SIGNALS.pending)], device=run.accelerator.device)
        run.agreed_signal = int(run.accelerator.reduce(flag, "max").item())
    return run.agreed_signal != 0


def micro_batch_weights(sizes: list[int], accum: int) -> list[float]:
    """Loss weight of each batch so an accumulated step equals one step on the whole group (sizes may differ)."""
    weights = []
    for start in range(0, len(sizes), accum):
        group = sizes[start : start + accum]
        weights += [1.0 if accum == 1 else s / sum(group) for s in group]
    return weights


def mix(mixup, x: torch.Tensor, y: torch.Tensor):
    """timm Mixup/CutMix; it pairs samples, so an odd-sized last batch gets plain (smoothed) one-hot targets."""
    from timm.data.mixup import mixup_target

    if x.shape[0] % 2 == 0:
        return mixup(x, y)
    return x, mixup_target(y, mixup.num_classes, 1.0, mixup.label_smoothing)


def progress_bar(run: Run, steps: int, epoch: int):
    show = run.cfg.log.progress if run.cfg.log.progress is not None else sys.stdout.isatty()
    if not (show and run.accelerator.is_local_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=run.state.batch, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)


def epoch_metrics(run: Run, batch_size: int) -> dict:
    """The epoch's training metrics from its sums, reduced over processes and read in one go."""
    totals, sums = run.sums.totals(run.accelerator), run.sums
    count = max(totals["count"], 1)
    skipped = int(totals["skipped"]) // run.accelerator.num_processes  # every process counted the same steps
    run.state.skipped_steps += skipped
    run.state.train_time_s += sums.seconds
    return dict(
        train_loss=totals["loss"] / count,
        train_acc=totals["correct"] / count,
        lr=run.cfg.optim.lr * sums.lr_factor,
        batch_size=batch_size,
        epoch_time_s=sums.seconds,
        images_per_s=totals["count"] / max(sums.seconds, 1e-9),
        # each process measured the same all-reduced norm: average over the samples of one of them
        grad_norm=totals["grad_norm"] / max(totals["norm_samples"], 1),
        skipped_steps=skipped,
        loss_scale=run.scaler.get_scale() if run.scaler is not None else None,
        # what the run has spent so far: forward/backward passes over the training split, and training seconds
        passes=run.state.image_passes / run.data.num_train,
        train_time_s=run.state.train_time_s,
    )


def evaluate_on_val(run: Run) -> list[tuple[str, dict, torch.nn.Module]]:
    """(source, metrics, module) for the model and, with EMA, its average, on the validation split."""
    sync_buffers(run.accelerator, run.net)
    size = eval_batch_size(run.cfg.train)
    modules = [("model", run.net)] + ([("ema", run.ema.module)] if run.ema is not None else [])
    tta = run.cfg.eval.tta
    return [(name, evaluate(m, run.data.eval_batches("val", size), run.accelerator, tta=tta), m) for name, m in modules]


def sync_buffers(accelerator, net: torch.nn.Module) -> None:
    """BatchNorm statistics differ slightly between processes after the last step; use the main process's."""
    if accelerator.num_processes > 1:
        for buf in net.buffers():
            torch.distributed.broadcast(buf, src=0)


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
