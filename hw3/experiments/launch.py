"""Launching the runs of a sweep or a search: each an ordinary training run, `python -m hw3.cli` (what train.py
runs) in a process of its own, its output appended to a log under a header per launch; K at a time, each on its
own GPU, or a share of the CPU threads."""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from hw3.errors import UserError

TRAIN_MODULE = "hw3.cli"  # `python -m hw3.cli` is train.py wherever hw3 is installed


def train_command(recipe: str, overrides: Sequence[str], launcher: str = "") -> list[str]:
    """The command that trains one run: `python -m hw3.cli`, or `<launcher> -m hw3.cli` (a multi-process
    `accelerate launch ...`)."""
    start = [*shlex.split(launcher), "-m", TRAIN_MODULE] if launcher else [sys.executable, "-m", TRAIN_MODULE]
    return [*start, "--recipe", recipe, *overrides]


def run_logged(cmd: list[str], log_path: Path, env: dict, who: str, pass_fds: Sequence[int] = ()) -> int:
    """Run `cmd`, its output appended to `log_path` under a header for this launch; returns its exit status."""
    with open(log_path, "a") as log:
        log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} {who} pid {os.getpid()}: ")
        log.write(shlex.join(cmd) + "\n")
        log.flush()
        return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds).returncode


def last_logged_line(log_path: Path) -> Optional[str]:
    """The last line the newest launch in `log_path` printed (its error, when it failed)."""
    text = log_path.read_text(errors="replace")
    lines = [line for line in text.split("\n# ")[-1].splitlines()[1:] if line.strip()]  # this launch's part
    return lines[-1] if lines else None


def slot_environments(parallel: int) -> list[dict]:
    """One environment per concurrent run: its own GPU when there are GPUs, a share of the CPU threads otherwise."""
    import torch

    base = dict(os.environ)
    gpus = torch.cuda.device_count()
    if gpus:
        if parallel > gpus:
            raise UserError(f"--parallel {parallel}: one run per GPU, and this machine has {gpus}")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
        return [{**base, "CUDA_VISIBLE_DEVICES": visible[i]} for i in range(parallel)]
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return [{**base, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(parallel)]
