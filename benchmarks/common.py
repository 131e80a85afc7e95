"""Shared by the benchmarks: an hw3 Run built as train.py builds it on synthetic data, timers, paired epochs."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from hw3.engine.build import build_run, make_accelerator
from hw3.engine.loop import train_one_epoch
from hw3.engine.recipe import load_recipe


def hw3_run(overrides: list[str], run_dir: Path | None = None):
    """A Run exactly as `train.py` builds it (synthetic data, no trackers), in a throwaway run dir."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="hw3-bench-"))
    cfg = load_recipe(
        None,
        [
            "data.name=synthetic",
            "log.trackers=[]",
            "sched.name=none",
            "train.checkpoint_every_minutes=null",  # no timed checkpoint inside a measured epoch
            f"output_dir={run_dir}",
            *overrides,
        ],
    )
    accelerator = make_accelerator(cfg, run_dir)
    torch.manual_seed(cfg.seed)
    return build_run(cfg, accelerator, run_dir)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_hw3_epoch(r, epoch: int) -> float:
    """Seconds for one training epoch through hw3.engine.loop.train_one_epoch (what train.py runs)."""
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


def alternate(rounds: int, first, second) -> tuple[list[float], list[float]]:
    """Time first(epoch) and second(epoch) in pairs close in time, the order alternating (A B, B A, ...), so that a
    noisy machine slows both alike; returns the two lists of seconds."""
    times: tuple[list[float], list[float]] = ([], [])
    for epoch in range(1, rounds + 1):
        for which in (0, 1) if epoch % 2 else (1, 0):
            times[which].append((first, second)[which](epoch))
    return times


def resized_data(run, image_size: int, n: int, channels_last: bool):
    """n synthetic CIFAR-sized (32 px) images, resized to image_size on the device as the pretrained CIFAR-100
    recipe does."""
    from hw3.config import DataConfig
    from hw3.data import Data, InputSpec
    from hw3.data.bundled import synthetic

    src = synthetic(DataConfig(name="synthetic", image_size=32, max_train_samples=n, max_eval_samples=64))
    spec = InputSpec(image_size, 3, [0.5] * 3, [0.25] * 3)
    return Data(run.cfg.data, src, spec, run.accelerator.device, 1, 0, 0, channels_last=channels_last)
