"""Shared by the benchmarks: an hw3 Run built by the real engine on synthetic data, and a timer."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from hw3.build import build_run, make_accelerator
from hw3.config import load_config
from hw3.loop import train_one_epoch


def hw3_run(overrides: list[str], run_dir: Path | None = None):
    """A Run exactly as `train.py` builds it (synthetic data, no trackers), in a throwaway run dir."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="hw3-bench-"))
    cfg = load_config(
        None, ["data.name=synthetic", "log.trackers=[]", "sched.name=none", f"output_dir={run_dir}", *overrides]
    )
    accelerator = make_accelerator(cfg, run_dir)
    torch.manual_seed(cfg.seed)
    return build_run(cfg, accelerator, run_dir)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_hw3_epoch(r, epoch: int) -> float:
    """Seconds for one training epoch through hw3.loop.train_one_epoch (what train.py runs)."""
    r.state.batch = 0
    r.sums.reset()
    sync(r.accelerator.device)
    start = time.perf_counter()
    train_one_epoch(r, epoch, r.cfg.train.batch_size)
    sync(r.accelerator.device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]
