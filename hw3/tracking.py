"""What a run writes for people: metrics.jsonl, summary.json, command.txt, the console line, the trackers.

Only the main process writes; `Tracker` methods are no-ops elsewhere.
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Callable, Optional

import torch

from hw3.config import Config, LogConfig, flatten, to_yaml
from hw3.distributed import raise_agreed
from hw3.errors import WriteFailed
from hw3.storage import write_atomic, writing


def git_revision() -> str:
    """The commit of the hw3 checkout that ran, with '-dirty' for uncommitted changes; 'unknown' without git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return torch.cuda.get_device_name(accelerator.device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} threads"


def versions() -> str:
    import accelerate
    import timm
    import torchvision

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"timm {timm.__version__}, accelerate {accelerate.__version__}"
    )


class Tracker:
    def __init__(self, accelerator, run_dir: Path, log: LogConfig):
        self.accelerator, self.run_dir, self.log = accelerator, run_dir, log
        self.main = accelerator.is_main_process

    def start(
        self, cfg: Config, history: list[dict], wandb_id: Optional[str], resumed_from: Optional[Path], command: list
    ) -> None:
        """config.yaml, a command.txt entry, metrics.jsonl rewritten to the checkpoint's history, trackers."""

        def records() -> None:
            if not (self.run_dir / "config.yaml").exists():  # the record of what ran: never rewritten
                write_atomic(self.run_dir / "config.yaml", to_yaml(cfg).encode())
            with writing(self.run_dir / "command.txt"), open(self.run_dir / "command.txt", "a") as f:
                f.write(self.session_header(resumed_from, command))
            write_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history).encode())

        self.main_writes(records)
        if self.log.trackers:
            init = {
                "wandb": dict(
                    name=self.log.run_name or self.run_dir.name,
                    tags=self.log.tags,
                    id=wandb_id,
                    resume="allow",
                    dir=str(self.run_dir),
                )
            }
            self.accelerator.init_trackers(self.log.project, config=flatten(cfg), init_kwargs=init)

    def session_header(self, resumed_from: Optional[Path], command: list) -> str:
        accelerator = self.accelerator
        argv = " ".join(shlex.quote(str(a)) for a in command)
        return (
            f"# {datetime.datetime.now().isoformat(timespec='seconds')}"
            f"{f' (resumed from {resumed_from})' if resumed_from else ''}\n"
            f"argv: {argv}\ncwd: {Path.cwd()}\ngit: {git_revision()}\n{versions()}\n"
            f"processes: {accelerator.num_processes} ({accelerator.distributed_type.value}), "
            f"device: {device_name(accelerator)}, mixed precision: {accelerator.mixed_precision}\n\n"
        )

    def epoch(self, row: dict, best: bool) -> None:
        """One finished epoch: a metrics.jsonl line, tracker scalars, a console line."""

        def append() -> None:
            with writing(self.run_dir / "metrics.jsonl"), open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

        self.main_writes(append)
        self.accelerator.log(
            {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None},
            step=row["epoch"],
        )
        self.accelerator.print(console_line(row, best))

    def summary(self, summary: dict) -> None:
        self.main_writes(lambda: write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=1).encode()))

    def write(self, name: str, text: str) -> None:
        self.main_writes(lambda: write_atomic(self.run_dir / name, text.encode()))

    def main_writes(self, write: Callable[[], None]) -> None:
        """`write()` on the main process; a failure (WriteFailed) stops every process here, together."""
        error = None
        if self.main:
            try:
                write()
            except WriteFailed as e:
                error = e
        raise_agreed(self.accelerator, error)


def console_line(row: dict, best: bool) -> str:
    line = (
        f"epoch {row['epoch']:>3} | train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%} | "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}"
    )
    if "ema_val_acc" in row:
        line += f" (ema {row['ema_val_acc']:.2%})"
    line += (
        f" | lr {row['lr']:.2e} | bs {row['batch_size']} | {images_per_s(row['images_per_s'])} img/s | "
        f"{row['epoch_time_s']:.1f}s"
    )
    if row.get("skipped_steps"):
        line += f" | {row['skipped_steps']} skipped"
    return line + (" *" if best else "")


def images_per_s(value: float) -> str:
    """1,234 or 0.42: whole numbers when there are some, two significant digits for a slow smoke run."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
