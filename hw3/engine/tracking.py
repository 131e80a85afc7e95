"""What a run writes for people: metrics.jsonl, summary.json, command.txt (with how each launch ended), the console
line, the trackers (TensorBoard, WandB).

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
from hw3.dist.launcher import LAUNCHER
from hw3.dist.processes import raise_agreed
from hw3.errors import WriteFailed
from hw3.runs.layout import COMMAND, CONFIG, ENDED, METRICS, SUMMARY
from hw3.runs.metrics import console_line
from hw3.storage.files import write_atomic, writing


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


def command_as_launched(argv: list) -> str:
    """The command as the user typed it: the launcher's own command line under `accelerate launch` / torchrun
    (this process's parent), else `python` and this process's arguments."""
    if LAUNCHER.pid is not None:
        try:
            parts = Path(f"/proc/{LAUNCHER.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            parts = []
        if len(parts) > 1 and Path(parts[0]).name.startswith("python") and parts[1] != "-m":
            parts = parts[1:]  # `python .../bin/accelerate launch ...`: the script is the command
        if parts:
            return shlex.join([Path(parts[0]).name, *parts[1:]])
    return shlex.join(["python", *map(str, argv)])


class Tracker:
    def __init__(self, accelerator, run_dir: Path, log: LogConfig):
        self.accelerator, self.run_dir, self.log = accelerator, run_dir, log
        self.main = accelerator.is_main_process

    def start(
        self, cfg: Config, history: list[dict], wandb_id: Optional[str], resumed_from: Optional[Path], command: list
    ) -> None:
        """config.yaml, a command.txt entry, metrics.jsonl rewritten to the checkpoint's history, trackers."""

        def records() -> None:
            if not (self.run_dir / CONFIG).exists():  # the record of what ran: never rewritten
                write_atomic(self.run_dir / CONFIG, to_yaml(cfg).encode())
            with writing(self.run_dir / COMMAND), open(self.run_dir / COMMAND, "a") as f:
                f.write(self.session_header(resumed_from, command))
            write_atomic(self.run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in history).encode())

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
            f"argv: {argv}\ncommand: {command_as_launched(command)}\n"
            f"cwd: {Path.cwd()}\ngit: {git_revision()}\n{versions()}\n"
            f"processes: {accelerator.num_processes} ({accelerator.distributed_type.value}), "
            f"device: {device_name(accelerator)}, mixed precision: {accelerator.mixed_precision}\n"
        )

    def epoch(self, row: dict, best: bool) -> None:
        """One finished epoch: a metrics.jsonl line, tracker scalars, a console line."""

        def append() -> None:
            with writing(self.run_dir / METRICS), open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")

        self.main_writes(append)
        self.accelerator.log(
            {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None},
            step=row["epoch"],
        )
        self.accelerator.print(console_line(row, best))

    def summary(self, summary: dict) -> None:
        self.main_writes(lambda: write_atomic(self.run_dir / SUMMARY, json.dumps(summary, indent=1).encode()))

    def ended(self, how: str) -> None:
        """The last line of this launch's command.txt entry: how it ended (hw3.report reads it). Best effort: a
        launch that ends on a full disk has nowhere to say it."""
        if not self.main or not (self.run_dir / COMMAND).is_file():
            return
        try:
            with open(self.run_dir / COMMAND, "a") as f:
                f.write(f"{ENDED}{how}\n\n")
        except OSError:
            pass

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
