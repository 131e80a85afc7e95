"""From a recipe to a Run: the accelerator, the data, the model, the optimizer, the schedule and every other
component the loop uses. Nothing is trained and nothing is written here (the run dir is the session's business).
The model zoo (timm, torchvision) is imported here when a run is built, not when this module is imported.
"""

from __future__ import annotations

import math
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, TorchDynamoPlugin
from torch import nn

from hw3.config import Config, TrainConfig, compile_mode
from hw3.config.schema import CUDA_GRAPH_MODES
from hw3.data import Data, open_source, resolve_input
from hw3.dist.processes import init_restartable_process_group, main_first, process_group_kwargs
from hw3.engine.compile_guard import CompileGuard
from hw3.engine.early_stop import EarlyStopping
from hw3.engine.sums import EpochSums
from hw3.engine.tracking import Tracker, device_name
from hw3.engine.trial import TrialLink
from hw3.errors import UserError
from hw3.optim import build_optimizer, head_parameters
from hw3.optim.nonfinite import BadSteps, prime_momentum
from hw3.optim.sam import SAM
from hw3.optim.schedules import Layout, Schedule, build_schedule
from hw3.runs.best import BestWeights
from hw3.runs.metrics import Monitor
from hw3.runs.state import TrainState


@dataclass(kw_only=True)
class Run:
    """Everything one training run is made of. Stateful components save and restore themselves (components())."""

    cfg: Config
    accelerator: Accelerator
    run_dir: Path
    data: Data
    model: nn.Module  # as prepared by accelerate: DDP and/or torch.compile around `net`
    net: nn.Module  # the bare model: evaluation, EMA, exported weights
    optimizer: torch.optim.Optimizer  # the torch optimizer itself (accelerate holds its wrapper for checkpoints)
    scaler: Optional[torch.amp.GradScaler]  # fp16 loss scaling (accelerate's, on CUDA), else None
    schedule: Schedule
    state: TrainState
    sums: EpochSums  # the epoch in progress
    bad_steps: BadSteps
    early_stop: EarlyStopping
    best: BestWeights
    tracker: Tracker
    card: dict  # rebuild information exported with the best weights
    loss_fn: nn.Module
    sam: Optional[SAM] = None
    ema: Optional[Any] = None  # hw3.optim.ema.DeviceSkippingEma
    mixup: Optional[Any] = None  # timm Mixup
    compile_guard: CompileGuard = field(default_factory=lambda: CompileGuard(None, True))
    cuda_graphs: bool = False  # torch.compile replays CUDA graphs: static batch shapes, outputs reused
    agreed_signal: int = 0  # the signal every process has seen (acted on at the next step boundary)
    trial: Optional[TrialLink] = None  # the Optuna trial this run reports to (hw3.search), if it is one
    last_checkpoint: float = field(default_factory=time.monotonic)  # when the last checkpoint was saved
    checkpoint_due: bool = False  # train.checkpoint_every_minutes has passed (agreed at the last look)

    def components(self) -> dict[str, Any]:
        """What a checkpoint holds besides accelerate's model/optimizer/scaler/RNG state (and the EMA's weights):
        the state every process shares."""
        return dict(
            train=self.state,
            early_stop=self.early_stop,
            best=self.best,
            schedule=self.schedule,
            **({"data": self.data} if self.data.streamed else {}),  # what is left of an epoch regrouped
        )

    def own(self) -> dict[str, Any]:
        """State each process accumulates alone, saved per process: the epoch's running sums and bad-step counts."""
        return dict(epoch=self.sums, bad_steps=self.bad_steps)

    def tensors(self) -> dict[str, Any]:
        """Components whose state is tensors, saved as <key>.safetensors: the EMA's weights, LookSAM's vector."""
        return {
            **({"ema": self.ema.module} if self.ema is not None else {}),
            **({"sam": self.sam} if self.sam is not None and self.sam.variant == "looksam" else {}),
        }


def make_accelerator(cfg: Config, run_dir: Path) -> Accelerator:
    train_cfg, mode = cfg.train, compile_mode(cfg.train)
    kwargs = dict(
        # Without CUDA, accelerate only runs real gloo DDP under `--multi_gpu`/torchrun when told cpu=True.
        cpu=not torch.cuda.is_available(),
        log_with=list(cfg.log.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", mode=mode) if mode else None,
        kwargs_handlers=[
            process_group_kwargs(train_cfg.collective_timeout_minutes),
            # a frozen backbone gets no gradients: DDP must look for unused parameters (costs a graph walk)
            DistributedDataParallelKwargs(find_unused_parameters=train_cfg.freeze_backbone_epochs > 0),
        ],
    )
    if train_cfg.mixed_precision is not None:  # null: keep what `accelerate launch` configured
        kwargs["mixed_precision"] = train_cfg.mixed_precision
    try:
        init_restartable_process_group(train_cfg.collective_timeout_minutes)
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


def build_run(cfg: Config, accelerator: Accelerator, run_dir: Path) -> Run:
    """Every component of the run, on its device; no file is written."""
    from hw3.models.card import model_card

    # Downloads and the decoded-image cache are made once, by the main process; the others then read them.
    src, spec, net = main_first(accelerator, lambda: build_parts(cfg))
    device, world = accelerator.device, accelerator.num_processes
    channels_last = use_channels_last(cfg)
    net = net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    cuda_graphs = compile_mode(cfg.train) in CUDA_GRAPH_MODES
    data = Data(
        cfg.data, src, spec, device, world, accelerator.process_index, cfg.seed, channels_last, drop_last=cuda_graphs
    )
    optimizer = build_optimizer(cfg.optim, net, device)
    ema = make_ema(cfg.train, net)
    model, prepared = accelerator.prepare(net, optimizer)
    prime_momentum(optimizer)
    monitor = Monitor(cfg.early_stop.monitor)
    card = model_card(cfg.model, net, spec, src.classes, from_disk=not src.evaluated_whole, tta=cfg.eval.tta)
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        run_dir=run_dir,
        data=data,
        model=model,
        net=accelerator.unwrap_model(model, keep_torch_compile=False),
        optimizer=prepared.optimizer,
        scaler=accelerator.scaler,
        schedule=build_schedule(cfg.sched, cfg.optim.lr, epoch_layout(cfg.train, data)),
        state=TrainState(world_size=world),
        sums=EpochSums(device),
        bad_steps=BadSteps(device),
        early_stop=EarlyStopping(cfg.early_stop),
        best=BestWeights(run_dir, card, monitor, accelerator),
        tracker=Tracker(accelerator, run_dir, cfg.log),
        card=card,
        loss_fn=make_loss(cfg.train),
        sam=SAM(cfg.optim) if cfg.optim.name == "sam" else None,
        ema=ema,
        mixup=make_mixup(cfg.train, len(src.classes)),
        compile_guard=CompileGuard(compile_mode(cfg.train), accelerator.is_main_process),
        trial=TrialLink.from_env(accelerator, cfg.train.epochs),
        cuda_graphs=cuda_graphs,
    )


def build_parts(cfg: Config):
    """The data source, the model's input spec and the network: what may download or decode."""
    from hw3.models.build import build_model, pretrained_data_config

    src = open_source(cfg.data, cfg.smoke)
    spec = resolve_input(cfg.data, src, pretrained_data_config(cfg.model))
    net = build_model(cfg.model, len(src.classes), spec.channels, spec.size, load_weights=not cfg.smoke)
    if (cfg.train.freeze_backbone_epochs or cfg.optim.head_lr_scale != 1.0) and not head_parameters(net):
        raise UserError(
            f"model.name: {cfg.model.name} names no classifier (pretrained_cfg['classifier']), which "
            f"train.freeze_backbone_epochs and optim.head_lr_scale need"
        )
    return src, spec, net


def describe(run: Run) -> str:
    """Three lines saying what is about to be trained on what, for the console."""
    src, accelerator, cfg = run.data.src, run.accelerator, run.cfg
    params = sum(p.numel() for p in run.net.parameters())
    name = f"synthetic stand-in for {cfg.data.name} (smoke mode)" if cfg.smoke else cfg.data.name
    mode = compile_mode(cfg.train)
    data = run.data
    path = "device-resident input" if data.on_device else "DataLoader input"
    workers = "" if data.on_device else f"; {data.workers} worker(s) per process: {data.workers_why}"
    return (
        f"data: {name}, {len(src.train)} train / {len(src.val)} val / {len(src.test) if src.test else 0} test "
        f"images, {len(src.classes)} classes{f'; {src.note}' if src.note else ''}\n"
        f"input: {data.stage.size}px x{data.stage.channels} ({data.spec.size_from}), {path} ({data.path_reason}"
        f"{workers})\n"
        f"model: {cfg.model.name}, {params / 1e6:.2f}M parameters, small-input stem "
        f"{'on' if run.card['small_input'] else 'off'}; {accelerator.num_processes} process(es) on "
        f"{device_name(accelerator)}, mixed precision {accelerator.mixed_precision}"
        f"{f', torch.compile mode {mode}' if mode else ''}; run dir {run.run_dir}"
    )


def use_channels_last(cfg: Config) -> bool:
    """NHWC for the resnet and resnest families, on every device. Measured (BENCHMARKS.md): on a CPU it speeds
    ResNet-18 and ResNeSt-26d up by 6-19%; on an H200 in bf16 ResNeSt-26d is 9% faster in NHWC eager (4,105 vs
    3,761 img/s) and equal under CUDA graphs, and ResNets gain from tensor-core layouts."""
    if cfg.train.channels_last is not None:
        return cfg.train.channels_last
    return cfg.model.name.startswith(("resnet", "resnest"))


def make_loss(cfg: TrainConfig) -> nn.Module:
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()  # mixup produces soft targets (label smoothing folded in)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def make_ema(cfg: TrainConfig, net: nn.Module):
    if cfg.ema_decay is None:
        return None
    from hw3.optim.ema import DeviceSkippingEma

    return DeviceSkippingEma(net, decay=cfg.ema_decay)


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


def epoch_layout(cfg: TrainConfig, data: Data) -> Layout:
    """Optimizer step at which each epoch starts (what the lr schedule is a function of), one segment per key of the
    batch-size schedule, so an enormous train.epochs costs nothing. Checks every batch size the run will use."""
    keys = sorted({0, *(k for k in (cfg.batch_size_schedule or {}) if k < cfg.epochs)})
    segments = []
    for first in keys:
        size = batch_size_for(cfg, first)
        where = f" (epoch {first})" if cfg.batch_size_schedule else ""
        if size % data.world:
            raise UserError(f"train.batch_size: {size}{where} is not divisible by the {data.world} processes")
        if size > data.num_train:
            raise UserError(
                f"train.batch_size: {size}{where} is more than the {data.num_train} training images: one partial "
                f"batch per epoch; use at most {data.num_train}"
            )
        segments.append((first, math.ceil(len(data.batch_sizes(size)) / cfg.grad_accum_steps)))
    return Layout(segments, cfg.epochs)
