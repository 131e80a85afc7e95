"""One optimizer step, top to bottom: forward, loss and backward of each micro-batch (one, or
train.grad_accum_steps), or SAM's passes; clipping, the update (undone on the device when a gradient is not
finite), the EMA, the running sums and the passes spent. Nothing here waits for the device: losses, accuracy counts,
gradient norms and whether a step was finite all stay device tensors until the host looks (hw3.engine.boundary).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from hw3.engine.build import Run
from hw3.optim.nonfinite import found_inf, global_norm, step_unless
from hw3.optim.sam import FULL, MOMENTUM, REUSE

Micro = tuple[torch.Tensor, torch.Tensor, float, bool]  # images, labels, loss weight, last of its step


def train_step(run: Run, micro_batches: Iterator[Micro], measure_norm: bool) -> None:
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
        norm = global_norm(grads)
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
