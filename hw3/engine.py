"""One training run, top to bottom: build everything from the recipe, train epoch by epoch, keep the best,
test it. Each piece receives its own config section.

The hot loop keeps everything on the device: losses, correct counts and gradient norms are summed into device
tensors and reduced across processes once per epoch. The one host read per optimizer step is the finiteness of
the gradient norm, which decides whether the step happens (GradScaler makes the same read in fp16).
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from safetensors.torch import load_file
from torch import nn

from hw3.checkpoint import (
    TrainState,
    decide_start,
    list_checkpoints,
    load_checkpoint,
    prepare_run_dir,
    save_best,
    save_checkpoint,
)
from hw3.config import Config, TrainConfig
from hw3.data import Data, resolve_input
from hw3.data.sources import load_source, smoke_source
from hw3.early_stop import EarlyStopping
from hw3.errors import UserError
from hw3.faults import crash_point
from hw3.models import build_model, model_card, pretrained_data_config
from hw3.optim import OPTIMIZERS, routing_table
from hw3.optim.sam import SAM, bn_buffers
from hw3.optim.schedules import Schedule, batch_scale, build_schedule, set_lr
from hw3.tracking import Tracker, device_name


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved at the last step boundary."""


class NonFinite(Exception):
    """Too many consecutive non-finite steps; the last good checkpoint is untouched."""


@dataclass
class Run:
    cfg: Config
    accelerator: Accelerator
    run_dir: Path
    data: Data
    model: nn.Module  # as prepared by accelerate (DDP and/or compiled wrapper around `net`)
    net: nn.Module  # the bare model: evaluation, EMA, exported weights
    optimizer: torch.optim.Optimizer  # accelerate's wrapper: GradScaler-aware
    schedule: Schedule
    state: TrainState
    tracker: Tracker
    card: dict  # rebuild information exported with the best weights
    early_stop: EarlyStopping
    loss_fn: nn.Module
    sam: Optional[SAM] = None
    ema: Optional[nn.Module] = None  # timm ModelEmaV3
    mixup: Optional[object] = None  # timm Mixup
    signal: int = 0  # set by SIGTERM/SIGINT; acted on at the next step boundary


# ----------------------------------------------------------------------------------------------------------
# Entry


def run(cfg: Config, recipe: Optional[str]) -> int:
    """Train the recipe; returns the exit code (0 done, 1 stopped on non-finite steps, 128+N on signal N)."""
    stem = Path(recipe).stem if recipe else "default"
    run_dir = Path(cfg.output_dir or (Path("runs") / "smoke" / stem if cfg.smoke else Path("runs") / stem))
    accelerator = make_accelerator(cfg, run_dir)
    try:
        resume_from, wipe = decide_on_main(accelerator, cfg.train, run_dir)
        set_seed(cfg.seed)
        r = build_run(cfg, accelerator, run_dir, resume_from, wipe)
        with signals_to(r):
            return train_and_test(r)
    except Interrupted as e:
        return 128 + e.args[0]
    finally:
        accelerator.end_training()
        # accelerate keeps its state in process-wide singletons; clear them so one process can run another
        # recipe afterwards (tests, notebooks) with different settings.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def make_accelerator(cfg: Config, run_dir: Path) -> Accelerator:
    kwargs = dict(
        # Without CUDA, accelerate only runs real gloo DDP under `--multi_gpu`/torchrun when told cpu=True.
        cpu=not torch.cuda.is_available(),
        log_with=list(cfg.log.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        dynamo_backend="inductor" if cfg.train.compile else None,
    )
    if cfg.train.mixed_precision is not None:  # null: keep what `accelerate launch` configured
        kwargs["mixed_precision"] = cfg.train.mixed_precision
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError as e:  # e.g. WORLD_SIZE set by hand without the rest of a distributed launch
        raise UserError(f"accelerate could not start: {str(e).strip().splitlines()[0]}") from None
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise UserError(
            f"launched as {launched} processes but accelerate sees one: each would train alone. "
            f"On CPU use `accelerate launch --config_file accelerate_configs/cpu_ddp.yaml`"
        )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type != "cuda" and accelerator.is_main_process:
        print(
            "warning: train.mixed_precision=fp16 has no effect without CUDA (accelerate runs fp32 on the CPU); "
            "bf16 works on CPUs",
            file=sys.stderr,
        )
    return accelerator


def decide_on_main(accelerator: Accelerator, cfg: TrainConfig, run_dir: Path) -> tuple[Optional[Path], bool]:
    """The main process decides: (checkpoint to resume from, wipe the old run first). Every process gets the
    answer (or the same error). Nothing is written yet: a recipe that fails to build leaves no trace."""
    answer: list = [None, False, None]  # checkpoint or None, wipe, error message or None
    if accelerator.is_main_process:
        try:
            resume_from, wipe = decide_start(cfg, run_dir)
            answer = [str(resume_from) if resume_from else None, wipe, None]
        except UserError as e:
            answer = [None, False, str(e)]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    if answer[2]:
        raise UserError(answer[2])
    return (Path(answer[0]) if answer[0] else None), answer[1]


# ----------------------------------------------------------------------------------------------------------
# Building


def build_run(cfg: Config, accelerator: Accelerator, run_dir: Path, resume_from: Optional[Path], wipe: bool) -> Run:
    with accelerator.main_process_first():  # downloads happen once, on the main process
        src = smoke_source(cfg.data) if cfg.smoke else load_source(cfg.data)
        spec = resolve_input(cfg.data, src, pretrained_data_config(cfg.model))
        net = build_model(cfg.model, len(src.classes), spec.channels, spec.size, load_weights=not cfg.smoke)
    channels_last = use_channels_last(cfg, accelerator)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    data = Data(
        cfg.data,
        src,
        spec,
        accelerator.device,
        accelerator.num_processes,
        accelerator.process_index,
        cfg.seed,
        channels_last,
    )
    optimizer = OPTIMIZERS.get(cfg.optim.name, "optim.name")(cfg.optim, net)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # the schedule scales this each step
    ema = make_ema(cfg.train, net, accelerator.device)
    model, optimizer = accelerator.prepare(net, optimizer)
    r = Run(
        cfg=cfg,
        accelerator=accelerator,
        run_dir=run_dir,
        data=data,
        model=model,
        net=accelerator.unwrap_model(model),
        optimizer=optimizer,
        schedule=build_schedule(cfg.sched, cfg.optim.lr, epoch_starts(cfg.train, data)),
        state=TrainState(world_size=accelerator.num_processes),
        tracker=Tracker(accelerator, run_dir, cfg.log),
        card=model_card(cfg.model, net, spec, src.classes),
        early_stop=EarlyStopping(cfg.early_stop),
        loss_fn=make_loss(cfg.train),
        sam=SAM(cfg.optim.rho, cfg.optim.adaptive) if cfg.optim.name == "sam" else None,
        ema=ema,
        mixup=make_mixup(cfg.train, len(src.classes)),
    )
    if accelerator.is_main_process:
        prepare_run_dir(run_dir, wipe)
    accelerator.wait_for_everyone()
    if resume_from is not None:
        r.state = load_checkpoint(accelerator, resume_from, ema)
        r.early_stop.load_state_dict(r.state.early_stop)
        r.schedule.load_state_dict(r.state.schedule)
        if r.state.stopped == "max_steps":  # a limit of that command, not of the run
            r.state.stopped = None
        accelerator.print(f"resuming from {resume_from} (epoch {r.state.epoch}, batch {r.state.batch})")
    r.state.wandb_id = r.state.wandb_id or new_wandb_id(cfg)
    r.tracker.start(cfg, r.state.history, r.state.wandb_id, resume_from)
    describe(r, src, spec)
    return r


def describe(r: Run, src, spec) -> None:
    acc = r.accelerator
    params = sum(p.numel() for p in r.net.parameters())
    acc.print(
        f"data: {r.cfg.data.name}, {len(src.train)} train / {len(src.val)} val / "
        f"{len(src.test) if src.test else 0} test images, {len(src.classes)} classes, "
        f"{spec.size}px x{spec.channels}, {'device-resident' if r.data.on_device else 'DataLoader'} input"
    )
    acc.print(
        f"model: {r.cfg.model.name}, {params / 1e6:.2f}M parameters, small-input stem "
        f"{'on' if r.card['small_input'] else 'off'}; {acc.num_processes} process(es) on "
        f"{device_name(acc)}, mixed precision {acc.mixed_precision}; run dir {r.run_dir}"
    )


def use_channels_last(cfg: Config, accelerator: Accelerator) -> bool:
    """NHWC for the resnet families. Measured here (BENCHMARKS.md): on a CPU it speeds up ResNet-18 and
    ResNeSt-26d by 6-19%; on GPUs timm's published benchmarks show it faster for ResNets (tensor cores) but
    slower for ResNeSt's split attention, so ResNeSt stays NCHW on CUDA."""
    if cfg.train.channels_last is not None:
        return cfg.train.channels_last
    name = cfg.model.name
    if name.startswith("resnest"):
        return accelerator.device.type != "cuda"
    return name.startswith("resnet")


def make_ema(cfg: TrainConfig, net: nn.Module, device: torch.device):
    if cfg.ema_decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(net, decay=cfg.ema_decay, device=device)


def make_loss(cfg: TrainConfig) -> nn.Module:
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()  # mixup produces soft targets (label smoothing folded in)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def make_mixup(cfg: TrainConfig, num_classes: int):
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes
    )


def new_wandb_id(cfg: Config) -> Optional[str]:
    """A run id chosen once and kept in the checkpoints, so a resumed run continues the same WandB run."""
    return secrets.token_hex(4) if "wandb" in cfg.log.trackers else None


def batch_size_for(cfg: TrainConfig, epoch: int) -> int:
    """The global batch size of `epoch`: the schedule entry with the largest key <= epoch, else batch_size."""
    schedule = cfg.batch_size_schedule or {}
    keys = [k for k in schedule if k <= epoch]
    return schedule[max(keys)] if keys else cfg.batch_size


def epoch_starts(cfg: TrainConfig, data: Data) -> list[int]:
    """Optimizer step at which each epoch starts, plus the total: what the lr schedule is a function of."""
    starts = [0]
    for epoch in range(cfg.epochs):
        size = batch_size_for(cfg, epoch)
        if size % data.world:
            raise UserError(f"train.batch_size: {size} (epoch {epoch}) is not divisible by the {data.world} processes")
        starts.append(starts[-1] + math.ceil(data.steps(size) / cfg.grad_accum_steps))
    return [min(s, cfg.max_steps) for s in starts] if cfg.max_steps else starts


@contextlib.contextmanager
def signals_to(r: Run):
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def handler(signum, frame):
        r.signal = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------------------------------------
# Training


def train_and_test(r: Run) -> int:
    code = 0
    try:
        fit(r)
    except NonFinite as e:
        r.state.stopped = "non_finite"
        print(f"error: {e}", file=sys.stderr)
        code = 1
    extra = {"processes_in_sync": in_sync(r.accelerator, r.net)} if r.accelerator.num_processes > 1 else {}
    if r.state.stopped == "max_steps" or not r.state.history:
        r.tracker.summary({**summary(r, {}), **extra})
        return code
    test = test_best(r)
    r.tracker.summary({**summary(r, test), **extra})
    if test:
        r.accelerator.print(
            f"test: acc {test['test_acc']:.2%}, loss {test['test_loss']:.4f} "
            f"(best weights, epoch {r.state.best['epoch']}, {r.state.best['source']})"
        )
    return code


def fit(r: Run) -> None:
    started = time.perf_counter()
    t = r.cfg.train
    while r.state.epoch < t.epochs and r.state.stopped is None:
        if t.max_steps is not None and r.state.step >= t.max_steps:
            r.state.stopped = "max_steps"
            break
        epoch, batch_size = r.state.epoch, batch_size_for(t, r.state.epoch)
        train = train_one_epoch(r, epoch, batch_size)
        if finish_epoch(r, epoch, train):
            r.state.stopped = "early_stop"
        if t.max_steps is not None and r.state.step >= t.max_steps:
            r.state.stopped = r.state.stopped or "max_steps"
        r.state.wall_time_s += time.perf_counter() - started
        started = time.perf_counter()
        save_epoch_checkpoint(r)


class EpochSums:
    """Running sums of one epoch: loss and correct counts stay on the device (no per-step host read); plain
    numbers are host-side. Restorable from a mid-epoch checkpoint."""

    def __init__(self, device: torch.device, saved: dict):
        self.loss, self.correct, self.grad_norm = (
            torch.tensor(float(saved.get(k, 0.0)), dtype=torch.float64, device=device)
            for k in ("loss", "correct", "grad_norm")
        )
        self.count, self.steps, self.skipped = saved.get("count", 0), saved.get("steps", 0), saved.get("skipped", 0)
        self.seconds = saved.get("seconds", 0.0)
        self.lr_factor = saved.get("lr_factor", 1.0)  # the schedule's factor at the latest step, for the log

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        self.loss.add_(loss.nan_to_num(0.0, 0.0, 0.0), alpha=n)  # a skipped non-finite step adds nothing
        self.correct.add_((logits.argmax(dim=1) == y).sum())
        self.count += n

    def to_dict(self, seconds: float) -> dict:
        return dict(
            loss=self.loss.item(),
            correct=self.correct.item(),
            count=self.count,
            grad_norm=self.grad_norm.item(),
            steps=self.steps,
            skipped=self.skipped,
            seconds=seconds,
            lr_factor=self.lr_factor,
        )


def train_one_epoch(r: Run, epoch: int, batch_size: int) -> dict:
    """Train `epoch` (from batch r.state.batch on, when resuming mid-epoch); returns its train metrics."""
    acc, t = r.accelerator, r.cfg.train
    r.model.train()
    steps = r.data.steps(batch_size)
    sums = EpochSums(acc.device, r.state.partial)
    scale = batch_scale(t.lr_scaling, batch_size, batch_size_for(t, 0))
    weights = micro_batch_weights(r.data, batch_size, t.grad_accum_steps)
    bar = progress_bar(r, steps, epoch)
    started = time.perf_counter()
    for i, (x, y) in enumerate(r.data.train_batches(epoch, batch_size, r.state.batch), start=r.state.batch):
        last = (i + 1) % t.grad_accum_steps == 0 or i + 1 == steps
        if i % t.grad_accum_steps == 0:
            sums.lr_factor = set_lr(r.optimizer, r.schedule, r.state.step, scale)
        loss, logits = forward_backward(r, x, y, weights[i], sync=last)
        sums.add(loss, logits, y)
        r.state.batch = i + 1
        if bar is not None:
            bar.update()
        if not last:
            continue
        optimizer_step(r, sums)
        crash_point("train_step")
        if bar is not None and r.state.step % r.cfg.log.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")  # a host read, only with a terminal watching
        if interrupted(r):
            r.state.partial = sums.to_dict(sums.seconds + time.perf_counter() - started)
            save_checkpoint(acc, r.run_dir, r.state, r.ema, t.keep_last)
            acc.print(
                f"stopped by signal {r.signal} at epoch {epoch} batch {r.state.batch}; checkpoint saved; "
                f"rerun the same command to continue"
            )
            raise Interrupted(r.signal)
        if t.max_steps is not None and r.state.step >= t.max_steps:
            break
    if bar is not None:
        bar.close()
    return epoch_train_metrics(r, sums, sums.seconds + time.perf_counter() - started, batch_size)


def micro_batch_weights(data: Data, batch_size: int, accum: int) -> list[float]:
    """Loss weight of each batch so an accumulated step equals one step on the whole group (sizes may differ)."""
    steps, per_process = data.steps(batch_size), batch_size // data.world
    sizes = [per_process] * steps
    sizes[-1] = math.ceil(data.num_train / data.world) - per_process * (steps - 1)
    weights = []
    for start in range(0, steps, accum):
        group = sizes[start : start + accum]
        weights += [1.0 if accum == 1 else s / sum(group) for s in group]
    return weights


def forward_backward(r: Run, x: torch.Tensor, y: torch.Tensor, weight: float, sync: bool):
    """Loss and gradients of one batch (SAM: both of its passes). Gradients are all-reduced only when `sync`."""
    targets = y
    if r.mixup is not None:
        x, targets = mix(r, x, y)
    if r.sam is not None:
        bn = bn_buffers(r.net)
        before = [b.clone() for b in bn]
        with r.accelerator.no_sync(r.model):  # pass 1: this process's own gradient decides its perturbation
            loss, logits = loss_and_backward(r, x, targets, 1.0)
        with r.sam.perturbed(r.net, bn, before) as keep:  # pass 2 at w + e(w), synchronized
            loss_and_backward(r, x, targets, keep)
        return loss, logits
    with contextlib.nullcontext() if sync else r.accelerator.no_sync(r.model):
        return loss_and_backward(r, x, targets, weight)


def loss_and_backward(r: Run, x: torch.Tensor, targets: torch.Tensor, weight):
    logits = r.model(x)
    loss = r.loss_fn(logits, targets)
    r.accelerator.backward(loss if isinstance(weight, float) and weight == 1.0 else loss * weight)
    return loss.detach(), logits.detach()


def mix(r: Run, x: torch.Tensor, y: torch.Tensor):
    """timm Mixup/CutMix; it pairs samples, so an odd-sized last batch gets plain (smoothed) one-hot targets."""
    from timm.data.mixup import mixup_target

    if x.shape[0] % 2 == 0:
        return r.mixup(x, y)
    return x, mixup_target(y, r.mixup.num_classes, 1.0, r.mixup.label_smoothing)


def optimizer_step(r: Run, sums: EpochSums) -> None:
    """Clip (unscaling fp16 gradients once), step unless the gradient is non-finite, update the EMA."""
    t = r.cfg.train
    if t.max_grad_norm:
        norm = r.accelerator.clip_grad_norm_(r.net.parameters(), t.max_grad_norm)
    else:  # the norm alone (logged, and the finiteness check), without clipping's extra pass over the gradients
        r.accelerator.unscale_gradients()
        norm = total_norm([p.grad for p in r.net.parameters() if p.grad is not None])
    finite = bool(torch.isfinite(norm))  # the one host read per step
    if finite or r.accelerator.scaler is not None:
        r.optimizer.step()  # with fp16, GradScaler skips a non-finite step itself and lowers the loss scale
    r.optimizer.zero_grad(set_to_none=True)
    r.state.step += 1
    sums.steps += 1
    if finite:
        sums.grad_norm.add_(norm)
        r.state.bad_in_row = 0
        if r.ema is not None:
            r.ema.update(r.net, step=r.state.step)
        if r.state.step == 1 and "muon" in (r.cfg.optim.name, r.cfg.optim.base if r.sam else None):
            r.tracker.write("optimizer_routing.md", routing_table(r.net, r.optimizer))
        return
    sums.skipped += 1
    r.state.skipped_steps += 1
    r.state.bad_in_row += 1
    if r.state.bad_in_row >= t.max_bad_steps:
        last = list_checkpoints(r.run_dir)
        scaler = r.accelerator.scaler
        scale = f" (fp16 loss scale collapsed to {scaler.get_scale():g}; try bf16)" if scaler is not None else ""
        raise NonFinite(
            f"{r.state.bad_in_row} consecutive non-finite steps (loss or gradient) at epoch "
            f"{r.state.epoch}, step {r.state.step}{scale}; last good checkpoint: {last[-1] if last else 'none'}"
        )


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of a list of tensors, in one fused kernel per dtype/device (as clip_grad_norm_ does)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def interrupted(r: Run) -> bool:
    """Has a signal arrived (on any process)? Multi-process runs agree every log_every steps (a collective)."""
    if r.accelerator.num_processes == 1:
        return r.signal != 0
    if r.state.step % r.cfg.log.log_every:
        return False
    flag = r.accelerator.reduce(torch.tensor([r.signal], device=r.accelerator.device), "max")
    r.signal = int(flag.item())
    return r.signal != 0


def progress_bar(r: Run, steps: int, epoch: int):
    show = r.cfg.log.progress if r.cfg.log.progress is not None else sys.stdout.isatty()
    if not (show and r.accelerator.is_local_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=r.state.batch, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)


def epoch_train_metrics(r: Run, sums: EpochSums, seconds: float, batch_size: int) -> dict:
    count = torch.tensor(float(sums.count), dtype=torch.float64, device=sums.loss.device)
    totals = r.accelerator.reduce(torch.stack([sums.loss, sums.correct, count]), "sum").tolist()
    loss, correct, count = totals
    scaler = r.accelerator.scaler
    return dict(
        train_loss=loss / max(count, 1),
        train_acc=correct / max(count, 1),
        lr=r.cfg.optim.lr * sums.lr_factor,
        batch_size=batch_size,
        epoch_time_s=seconds,
        images_per_s=count / max(seconds, 1e-9),
        grad_norm=sums.grad_norm.item() / max(1, sums.steps - sums.skipped),
        skipped_steps=sums.skipped,
        loss_scale=scaler.get_scale() if scaler is not None else None,
    )


# ----------------------------------------------------------------------------------------------------------
# Evaluation, best weights, checkpoints


@torch.no_grad()
def evaluate(accelerator: Accelerator, net: nn.Module, batches) -> dict:
    """Loss and top-1 accuracy over a split sharded across processes; sums reduced once, counts exact."""
    sync_buffers(accelerator, net)
    was_training = net.training
    net.eval()
    loss_sum, correct = (torch.zeros((), dtype=torch.float64, device=accelerator.device) for _ in range(2))
    count = 0
    for x, y in batches:
        logits = net(x).float()
        loss_sum.add_(F.cross_entropy(logits, y, reduction="sum"))
        correct.add_((logits.argmax(dim=1) == y).sum())
        count += len(y)
    net.train(was_training)
    sums = torch.stack([loss_sum, correct, torch.tensor(float(count), dtype=torch.float64, device=accelerator.device)])
    loss, correct, count = accelerator.reduce(sums, "sum").tolist()
    return dict(loss=loss / max(count, 1), acc=correct / max(count, 1), count=int(count))


def in_sync(accelerator: Accelerator, net: nn.Module) -> bool:
    """Do all processes hold bit-identical parameters? (DDP should guarantee it; a fingerprint per process.)"""
    params = [p.detach().double() for p in net.parameters()]
    fingerprint = torch.stack(
        [sum(p.sum() for p in params), sum((i + 1) * p.square().sum() for i, p in enumerate(params))]
    )
    everyone = accelerator.gather(fingerprint[None])
    same = bool((everyone == everyone[0]).all())
    if not same:
        accelerator.print("warning: the processes ended with different weights (DDP did not keep them in sync)")
    return same


def sync_buffers(accelerator: Accelerator, net: nn.Module) -> None:
    """BatchNorm statistics differ slightly between processes after the last step; use the main process's."""
    if accelerator.num_processes > 1:
        for buf in net.buffers():
            torch.distributed.broadcast(buf, src=0)


def eval_batch_size(t: TrainConfig) -> int:
    return t.eval_batch_size or 2 * t.batch_size


def rank(monitor: str, metrics: dict) -> tuple:
    """Sort key of validation results, higher is better; ties on the monitor go to the other metric."""
    return (metrics["acc"], -metrics["loss"]) if monitor == "val_acc" else (-metrics["loss"], metrics["acc"])


def validate(r: Run) -> list[tuple[str, dict, nn.Module]]:
    """(source, metrics, module) for the model and, with EMA, its average."""
    size = eval_batch_size(r.cfg.train)
    modules = [("model", r.net)] + ([("ema", r.ema.module)] if r.ema is not None else [])
    return [(name, evaluate(r.accelerator, m, r.data.eval_batches("val", size)), m) for name, m in modules]


def finish_epoch(r: Run, epoch: int, train: dict) -> bool:
    """Validate, keep the best weights, log, decide early stopping. Returns True to stop."""
    crash_point("validation")
    monitor = r.cfg.early_stop.monitor
    results = validate(r)
    source, val, module = max(results, key=lambda result: rank(monitor, result[1]))
    raw = results[0][1]
    row = dict(
        epoch=epoch,
        train_loss=train.pop("train_loss"),
        train_acc=train.pop("train_acc"),
        val_loss=raw["loss"],
        val_acc=raw["acc"],
        **train,
    )
    if r.ema is not None:
        row.update(ema_val_loss=results[1][1]["loss"], ema_val_acc=results[1][1]["acc"])
    improved = not r.state.best or rank(monitor, val) > tuple(r.state.best["rank"])
    if improved:
        r.state.best = dict(
            rank=rank(monitor, val), epoch=epoch, source=source, val_acc=val["acc"], val_loss=val["loss"]
        )
        if r.accelerator.is_main_process:
            save_best(r.run_dir, module.state_dict(), r.card, r.state.best)
    stop = r.early_stop.should_stop(epoch, val["acc"] if monitor == "val_acc" else val["loss"])
    r.schedule.end_of_epoch(raw["acc"] if r.cfg.sched.monitor == "val_acc" else raw["loss"])
    r.state.history.append(row)
    r.state.epoch, r.state.batch, r.state.partial = epoch + 1, 0, {}
    r.state.early_stop, r.state.schedule = r.early_stop.state_dict(), r.schedule.state_dict()
    r.tracker.epoch(row, improved)
    if row["loss_scale"] is not None and row["loss_scale"] < 1.0:
        r.accelerator.print(
            f"warning: the fp16 loss scale fell to {row['loss_scale']:g}: gradients overflow even "
            f"unscaled; bf16 (or a lower lr) avoids this"
        )
    return stop


def save_epoch_checkpoint(r: Run) -> None:
    save_checkpoint(r.accelerator, r.run_dir, r.state, r.ema, r.cfg.train.keep_last)
    crash_point("after_save")
    if interrupted(r):
        raise Interrupted(r.signal)


def test_best(r: Run) -> dict:
    """Test-split loss and accuracy of the best weights (every process loads them), once, at the end."""
    if r.data.src.test is None:
        return {}
    best = r.run_dir / "best" / "model.safetensors"
    r.accelerator.wait_for_everyone()
    if best.is_file():
        r.net.load_state_dict(load_file(str(best)))
    result = evaluate(r.accelerator, r.net, r.data.eval_batches("test", eval_batch_size(r.cfg.train)))
    return dict(test_acc=result["acc"], test_loss=result["loss"], test_images=result["count"])


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def summary(r: Run, test: dict) -> dict:
    s, cfg = r.state, r.cfg
    return dict(
        best_val_acc=s.best.get("val_acc"),
        best_val_loss=s.best.get("val_loss"),
        best_epoch=s.best.get("epoch"),
        best_source=s.best.get("source"),
        monitor=cfg.early_stop.monitor,
        epochs_completed=len(s.history),
        stopped_early=s.stopped == "early_stop",
        stopped_reason=s.stopped,
        stopped_epoch=len(s.history) - 1 if s.stopped else None,
        **test,
        wall_time_s=s.wall_time_s,
        optimizer_steps=s.step,
        skipped_steps=s.skipped_steps,
        processes=r.accelerator.num_processes,
        device=device_name(r.accelerator),
        mixed_precision=r.accelerator.mixed_precision,
        peak_memory_gib=peak_memory_gib(r.accelerator.device),
        model=cfg.model.name,
        dataset=cfg.data.name,
        pretrained=bool(cfg.model.pretrained or cfg.model.pretrained_file),
        image_size=r.card["image_size"],
        optimizer=cfg.optim.name if cfg.optim.name != "sam" else f"sam({cfg.optim.base})",
    )
