"""What every recipe key means: a tree of dataclasses, one comment per field with its unit.

Components receive their own section (`cfg.optim`), never the whole tree. Reading YAML into this tree is
hw3.config.recipe; the ranges and choices each key allows are checked by the component that uses the section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union


@dataclass
class DataConfig:
    name: str = "digits"  # dataset: digits, mnist, cifar10, cifar100, oxford_pet, hf, imagefolder, shards, synthetic
    root: str = "data"  # folder holding (or receiving) torchvision datasets; the tree for imagefolder
    download: bool = False  # let torchvision / the Hub fetch missing files (main process only)
    # hf: Hub dataset id, local dataset folder, or parquet file(s); shards: a folder or URL with index.json, the
    # index itself, or a brace pattern / glob of parquet files
    path: Optional[str] = None  # a path or any fsspec URL (s3://, gs://, hf://, https://)
    streaming: bool = False  # hf: read the Hub set's parquet files as shards, a window at a time (no full download)
    shuffle_shards: int = 4  # shards, streaming: shards whose samples are shuffled together (the shuffle's window)
    cache_shards: int = 16  # shards, streaming: fetched shards each process keeps on local disk, at most
    max_bad_samples: int = 100  # unreadable samples (each warned, skipped and counted) before the run stops
    config_name: Optional[str] = None  # hf: dataset configuration name
    revision: Optional[str] = None  # hf: git revision on the Hub
    trust_remote_code: bool = False  # hf: allow dataset loading scripts (recent `datasets` refuse them anyway)
    image_column: Optional[str] = None  # hf: image column; null = the only Image feature
    label_column: Optional[str] = None  # hf: label column; null = the only ClassLabel feature
    val_fraction: float = 0.1  # share of train held out for validation when the source has no val split
    split_seed: int = 0  # seed of that hold-out and of the sample caps, fixed so every run sees the same split
    image_size: Optional[int] = None  # px (square); null = native size, or the pretrained model's input size
    num_classes: Optional[int] = None  # synthetic/smoke: classes (default 10); others: checked against the data
    channels: Optional[int] = None  # synthetic/smoke: image channels (default 3)
    max_train_samples: Optional[int] = None  # cap on training images (seeded subset); synthetic: its size
    max_eval_samples: Optional[int] = None  # cap on validation and test images (seeded subset)
    label_noise: float = 0.0  # share of training labels flipped to another class (seeded; val/test untouched)
    augment: Optional[str] = None  # none, flip, crop, crop_flip, resized_crop_flip; null = the dataset's default
    crop_padding: Optional[int] = None  # px of zero padding around random crops; null = the dataset's default
    auto_augment: Optional[str] = None  # randaugment or trivialaugment (torchvision), applied per sample
    mean: Optional[list[float]] = None  # per-channel mean in [0, 1]; null = dataset or pretrained statistics
    std: Optional[list[float]] = None  # per-channel std in [0, 1]; null = dataset or pretrained statistics
    loader: str = "auto"  # auto, device (whole split in device memory), dataloader (torch DataLoader)
    num_workers: Optional[int] = None  # DataLoader worker processes per training process; null = by device
    pin_memory: Optional[bool] = None  # page-locked host batches; null = on with CUDA
    persistent_workers: Optional[bool] = None  # keep workers across epochs; null = on when there are workers
    prefetch_factor: Optional[int] = None  # batches each worker prepares ahead; null = torch's default (2)
    cache: bool = True  # keep decoded image folders / Hub sets as uint8 tensors in $HW3_CACHE (~/.cache/hw3)


@dataclass
class ModelConfig:
    name: str = "simple_mlp"  # any timm model name, or hw3's simple_mlp / simple_cnn
    pretrained: bool = False  # start from timm's pretrained weights (downloaded from the HF Hub)
    pretrained_file: Optional[str] = None  # local weights file used instead of the Hub (implies pretrained)
    small_input: Optional[bool] = None  # 3x3 stride-1 stem, no max-pool; null = on for from-scratch <= 64 px
    drop_rate: float = 0.0  # dropout probability before the classifier
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments (hidden_sizes, ...)


@dataclass
class OptimConfig:
    name: str = "adamw"  # sgd, adam, adamw, muon, or sam (which wraps optim.base)
    lr: float = 1e-3  # peak learning rate, at the first batch size of the schedule
    weight_decay: float = 0.0  # decoupled for adamw/muon, L2 for sgd/adam
    fused: Optional[bool] = None  # sgd/adam/adamw: torch's fused kernels; null = on (they skip bad steps for free)
    decay_norm_and_bias: bool = False  # also decay 1-D tensors (norm weights, biases)
    momentum: float = 0.9  # sgd and muon momentum
    nesterov: bool = True  # sgd and muon: Nesterov momentum
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw (and muon's AdamW part)
    base: str = "sgd"  # sam: the optimizer taking the step (sgd, adam, adamw, muon)
    rho: float = 0.05  # sam: radius of the weight perturbation (ASAM wants about 10x more)
    adaptive: bool = False  # sam: ASAM, the perturbation scaled by |w|
    sam_variant: str = "sam"  # sam: sam (fresh ascent), looksam (reuse its orthogonal part), momentum (MSAM)
    sam_every: int = 1  # sam/looksam: a full two-pass step every this many steps, one pass in between
    sam_batch_splits: int = 1  # sam: m-sharpness, each of m slices of a process's batch perturbed on its own
    looksam_alpha: float = 0.2  # looksam: weight of the stored component, x ||g|| (0.2: README's study; paper: 0.7)
    fallback_lr: Optional[float] = None  # muon: lr of the AdamW-trained tensors (norms, biases, stem, head); null = lr
    layer_decay: Optional[float] = None  # lr x this per layer below the head (timm's grouping, e.g. 0.75); null = off
    head_lr_scale: float = 1.0  # lr multiplier of the classifier head (a new head on pretrained weights: 10)


@dataclass
class SchedConfig:
    name: str = "cosine"  # none, step, multistep, plateau, cosine, onecycle
    warmup_epochs: float = 0.0  # cosine: linear warm-up length in epochs (fractions allowed)
    warmup_start_factor: float = 0.1  # cosine: lr multiplier at the first warm-up step
    min_lr: float = 0.0  # lr floor: cosine's end value, plateau's lower bound
    step_size: int = 30  # step: epochs between decays
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which the lr decays
    gamma: float = 0.1  # step/multistep/plateau: multiplier at each decay
    monitor: str = "val_loss"  # plateau: val_loss (min) or val_acc (max)
    patience: int = 5  # plateau: epochs without improvement before a decay
    threshold: float = 1e-4  # plateau: relative improvement that counts
    pct_start: float = 0.3  # onecycle: share of the steps spent rising to the peak
    div_factor: float = 25.0  # onecycle: start lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = start lr / final_div_factor


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training split
    budget_passes: Optional[float] = None  # compute budget in forward/backward passes over the training split
    # (an epoch of SGD costs 1, of SAM 2, of SAM every k 1 + 1/k); set, it replaces train.epochs
    batch_size: int = 64  # images per forward, summed over all processes (the global batch)
    batch_size_schedule: Optional[dict[int, int]] = None  # {first epoch (from 0): global batch size}
    lr_scaling: str = "none"  # couple lr to the scheduled batch size: none, linear, sqrt
    grad_accum_steps: int = 1  # forwards per optimizer step
    # A limit of one launch, not the run's length: after the run's N-th optimizer step (counted over all launches)
    # the launch checkpoints and stops, as SIGTERM would; the lr schedule and train.epochs ignore it, so the same
    # command without it (or with a larger one) continues and ends bit for bit where an uninterrupted run does.
    max_steps: Optional[int] = None  # optimizer steps of the run after which this launch stops; null = no limit
    max_grad_norm: Optional[float] = None  # clip the global gradient L2 norm; null = no clipping
    mixed_precision: Optional[str] = None  # no, fp16, bf16; null = whatever `accelerate launch` says
    label_smoothing: float = 0.0  # cross-entropy label smoothing in [0, 1)
    mixup: float = 0.0  # mixup beta-distribution alpha; 0 = off
    cutmix: float = 0.0  # cutmix beta-distribution alpha; 0 = off
    ema_decay: Optional[float] = None  # weight EMA decay per step (e.g. 0.999); null = no EMA
    channels_last: Optional[bool] = None  # NHWC memory format; null = by model family and device
    compile: Union[bool, str] = False  # torch.compile: false, true (= default), default, reduce-overhead, max-autotune
    eval_batch_size: Optional[int] = None  # global batch for evaluation; null = 2x batch_size
    resume: str = "auto"  # auto (newest checkpoint in the run dir), never, or a checkpoint folder
    extend_epochs: bool = False  # resume with another train.epochs: the lr schedule is re-laid over the new length
    overwrite: bool = False  # with resume=never: replace an existing run dir
    keep_last: int = 2  # rolling checkpoints kept, mid-epoch ones included (the best weights are kept apart)
    # Mid-epoch checkpoints bound what a crash costs. Every 10 minutes costs < 0.1% even for ResNet-50-sized states
    # (a save with its manifest takes 0.37 s there; BENCHMARKS.md), and a crash loses at most those minutes.
    checkpoint_every_steps: Optional[int] = None  # also checkpoint every this many optimizer steps; null = off
    checkpoint_every_minutes: Optional[float] = 10.0  # also checkpoint every this many minutes; null = off
    collective_timeout_minutes: float = 10.0  # a collective waiting longer fails (hung peer); torch's default is 30
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    freeze_backbone_epochs: int = 0  # epochs (from 0) in which only the classifier head trains, BatchNorm frozen too


@dataclass
class EarlyStopConfig:
    monitor: str = "val_acc"  # val_acc (max) or val_loss (min); also picks the best checkpoint
    patience: Optional[int] = None  # epochs without improvement before stopping; null = never stop early
    min_delta: float = 0.0  # smallest change that counts as an improvement, in the monitor's units
    warmup_epochs: int = 0  # epochs before early stopping may fire


@dataclass
class EvalConfig:
    tta: str = "none"  # test-time augmentation of validation, the test and hw3.evaluate: none, flip, flip_shift


@dataclass
class LogConfig:
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb
    project: str = "hw3"  # WandB project / TensorBoard subfolder
    run_name: Optional[str] = None  # WandB run name; null = the run dir's name
    tags: list[str] = field(default_factory=list)  # WandB tags
    progress: Optional[bool] = None  # progress bar; null = only when stdout is a terminal
    log_every: int = 50  # steps between the host's looks at the device: bad-step guard, progress bar, grad norm


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0  # seeds python, numpy and torch on every process
    output_dir: Optional[str] = None  # run dir; null = runs/<recipe stem> (runs/smoke/<stem> in smoke mode)
    smoke: bool = False  # 2 steps on synthetic data of the recipe's shape, no download, random weights


def compile_mode(cfg: TrainConfig) -> Optional[str]:
    """torch.compile's mode for `train.compile`, or None when it is off."""
    if cfg.compile is False:
        return None
    return "default" if cfg.compile is True else str(cfg.compile)


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # compile modes that replay CUDA graphs (static shapes)


def passes_per_step(cfg: OptimConfig) -> float:
    """Forward/backward passes over a batch an optimizer step costs on average: 2 for SAM, 1 + 1/k for SAM (or
    LookSAM) every k steps, 1 for momentum SAM and every other optimizer (what train.budget_passes divides by)."""
    if cfg.name != "sam" or cfg.sam_variant == "momentum":
        return 1.0
    return 1.0 + 1.0 / cfg.sam_every
