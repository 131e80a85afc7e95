"""Test helpers: run the real CLI as a subprocess (exit codes, signals, launchers), read a run dir, build a
minimal Run for one training step, script what the loop sees. Test modules import them from here; fixtures
live in conftest.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
# metrics.jsonl's contract (README, "The run directory"): at least these keys in every row.
METRIC_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "batch_size",
    "epoch_time_s",
    "images_per_s",
)

# The contract's columns that do not depend on wall-clock time, plus two more.
DETERMINISTIC = tuple(k for k in METRIC_KEYS if k not in ("epoch_time_s", "images_per_s")) + (
    "grad_norm",
    "skipped_steps",
)
# Every stateful feature at once: EMA, mixup (numpy RNG), label smoothing, augmentation in DataLoader workers,
# a batch-size schedule with lr scaling, a plateau schedule, early-stopping counters.
RICH = [
    "train.epochs=4",
    "train.ema_decay=0.9",
    "train.mixup=0.2",
    "train.label_smoothing=0.1",
    "data.augment=crop_flip",
    "data.crop_padding=1",
    "data.loader=dataloader",
    "data.num_workers=2",
    "train.batch_size_schedule={0: 32, 2: 64}",
    "train.lr_scaling=sqrt",
    "sched.name=plateau",
    "sched.patience=0",
    "early_stop.patience=10",
    "log.trackers=[]",
]


def deterministic(rows):
    return [{k: r[k] for k in DETERMINISTIC} for r in rows]


# Tests never reach a network: the Hub and WandB are offline, and accelerate's trackers stay local.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
os.environ.update(OFFLINE)
# Decoded-image caches (hw3.data.cache) of this test session go to a scratch folder, not ~/.cache/hw3.
os.environ.setdefault("HW3_CACHE", tempfile.mkdtemp(prefix="hw3-test-cache-"))


@dataclass
class Result:
    code: int
    out: str
    err: str


def child_env(**extra: str) -> dict:
    """The environment of a child run: offline, hw3 importable, and one intra-op thread, because tests start
    several children at once and torch's OpenMP threads busy-wait: on a loaded 2-core machine two threads per
    child made the quickstart 13-20x slower than one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE", "RANK", "LOCAL_RANK"))}
    env.update(OFFLINE, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def run_command(cmd, cwd: Path, timeout: float = 300, **env) -> Result:
    p = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=child_env(**env)
    )
    return Result(p.returncode, p.stdout, p.stderr)


def run_subprocess(args, cwd: Path, timeout: float = 300, **env) -> Result:
    """`python train.py ARGS` in a fresh process."""
    return run_command([sys.executable, ROOT / "train.py", *args], cwd, timeout, **env)


def accelerate_bin() -> str:
    return str(Path(sys.executable).with_name("accelerate"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(args, run_dir: Path, cwd: Path = None, **env) -> Result:
    """`train.py ARGS output_dir=RUN_DIR` as 2 gloo processes (accelerate_configs/cpu_ddp.yaml), on a port of its
    own so that two launches can run at once."""
    config = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
    port = ["--main_process_port", str(free_port())]
    cmd = [
        accelerate_bin(),
        "launch",
        "--config_file",
        config,
        *port,
        ROOT / "train.py",
        *args,
        f"output_dir={run_dir}",
    ]
    return run_command(cmd, cwd=cwd or run_dir.parent, timeout=400, **env)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def tiny_run(model, optim_cfg=None, train_cfg=None, scaler_scale=None):
    """A Run around `model` with just what a training step touches (no data, no run dir, no trackers), so a test can
    drive hw3.engine.step.train_step directly (see `step`). `scaler_scale` gives it a real fp16 GradScaler on the CPU
    (accelerate only creates one with CUDA), so loss scaling is exercised without autocast."""
    import torch
    from accelerate import Accelerator

    from hw3.config import Config, OptimConfig, TrainConfig
    from hw3.engine.build import Run, make_loss
    from hw3.engine.sums import EpochSums
    from hw3.optim import build_optimizer
    from hw3.optim.nonfinite import BadSteps, prime_momentum
    from hw3.optim.sam import SAM
    from hw3.runs.state import TrainState

    cfg = Config(optim=optim_cfg or OptimConfig(name="sgd", lr=0.1, momentum=0.0), train=train_cfg or TrainConfig())
    accelerator = Accelerator(cpu=True)
    optimizer = build_optimizer(cfg.optim, model, accelerator.device)
    prepared, wrapper = accelerator.prepare(model, optimizer)
    prime_momentum(optimizer)
    device = accelerator.device
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        run_dir=None,
        data=SimpleNamespace(num_train=1, streamed=False, unreadable=lambda split: []),  # batches: the test's
        model=prepared,
        net=accelerator.unwrap_model(prepared),
        optimizer=wrapper.optimizer,
        scaler=torch.amp.GradScaler("cpu", init_scale=scaler_scale) if scaler_scale is not None else None,
        schedule=None,
        state=TrainState(),
        sums=EpochSums(device),
        bad_steps=BadSteps(device),
        early_stop=None,
        best=None,
        tracker=SimpleNamespace(write=lambda name, text: None),  # no run dir to write optimizer_routing.md to
        card={},
        loss_fn=make_loss(cfg.train),
        sam=SAM(cfg.optim) if cfg.optim.name == "sam" else None,
    )


def step(run, *micro_batches, measure_norm=True) -> None:
    """One hw3 optimizer step on (x, y) batches: one, or several accumulated with weights by size."""
    from hw3.engine.step import train_step

    total = sum(len(y) for _, y in micro_batches)
    last = len(micro_batches) - 1
    weights = [1.0] if len(micro_batches) == 1 else [len(y) / total for _, y in micro_batches]
    train_step(
        run,
        iter([(x, y, w, i == last) for i, ((x, y), w) in enumerate(zip(micro_batches, weights, strict=True))]),
        measure_norm,
    )


# ----------------------------------------------------------------------------------------------------------
# Driving the loop's decisions from the outside (in-process runs through the `train` fixture).


def checkpoint_after_epoch(run_dir: Path, epoch: int) -> Path:
    """The end-of-epoch checkpoint written after epoch `epoch` (0-based) finished."""
    ends = [
        path
        for path in (run_dir / "checkpoints").glob(f"epoch{epoch:04d}-batch*")
        if json.loads((path / "trainer_state.json").read_text())["train"]["epoch"] == epoch + 1
    ]
    assert len(ends) == 1, f"no checkpoint after epoch {epoch} in {run_dir}"
    return ends[0]


def script_validation(monkeypatch, per_epoch: list[dict]) -> None:
    """Replace validation results with a script: per_epoch[e] = {"model": (acc, loss)[, "ema": (acc, loss)]}.

    Training itself runs for real (the weights change every epoch), so a test can check which epoch's weights
    the loop kept; only what the loop *sees* of validation is scripted."""
    import hw3.engine.loop

    def scripted(run):
        modules = {"model": run.net, "ema": run.ema.module if run.ema is not None else None}
        results = per_epoch[run.state.epoch]
        return [(source, dict(acc=acc, loss=loss, count=1), modules[source]) for source, (acc, loss) in results.items()]

    monkeypatch.setattr(hw3.engine.loop, "evaluate_on_val", scripted)


class Killed(BaseException):
    """Stands in for SIGKILL in an in-process run: nothing after the crash point runs."""


def at_crash_point(monkeypatch, point: str, nth: int, action) -> None:
    """Call `action()` the nth time the run reaches crash point `point` (hw3.dist.faults), in whichever module it
    is reached: every module that imported crash_point gets this one instead."""
    import hw3.dist.faults
    import hw3.engine.session  # noqa: F401 - it imports every module with a crash point

    seen = {"n": 0}

    def crash(name: str) -> None:
        if name == point:
            seen["n"] += 1
            if seen["n"] == nth:
                action()

    for module in list(sys.modules.values()):
        if getattr(module, "crash_point", None) is hw3.dist.faults.crash_point and module is not hw3.dist.faults:
            monkeypatch.setattr(module, "crash_point", crash)


def kill_at(monkeypatch, point: str, nth: int) -> None:
    """Abort the run the nth time it reaches crash point `point` (hw3.dist.faults)."""

    def kill():
        raise Killed(f"{point}:{nth}")

    at_crash_point(monkeypatch, point, nth, kill)


def exit_codes(report: str) -> dict[int, int]:
    """{rank: exit code} from torchrun's ChildFailedError report."""
    found = re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*: (-?\d+)", report)
    return {int(rank): int(code) for rank, code in found}
