"""Checkpoints and the best weights.

Checkpoints are folders hw3 names itself, `checkpoints/epoch0003-batch000021` (the state after 21 batches of
epoch 3, counted from 0; an end-of-epoch checkpoint holds all of them), never accelerate's automatic
`checkpoint_<n>` (its counter is not restored on resume, so names collide). A save goes to
`checkpoints/.tmp-<name>` and is renamed into place only when every process has written its part and
`trainer_state.json` is there: a crash mid-save leaves a `.tmp-` folder, which is ignored and cleaned up, never a
checkpoint that looks complete. The best weights live in `best/`, outside the rolling `keep_last`, as
safetensors beside a `model.json` that rebuilds the network (hw3.load_model).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hw3.errors import UserError
from hw3.faults import crash_point
from hw3.monitor import Monitor

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
NAME = re.compile(r"^epoch(\d{4,})-batch(\d{6,})$")


@dataclass
class TrainState:
    """Where the run stands: the counters and the history a resumed run continues from (saved as JSON)."""

    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already trained (> 0 only for a mid-epoch checkpoint)
    step: int = 0  # optimizer steps taken (skipped ones included)
    skipped_steps: int = 0  # non-finite steps skipped in finished epochs
    wall_time_s: float = 0.0  # time spent in earlier sessions
    history: list = field(default_factory=list)  # one metrics row per finished epoch
    stopped: Optional[str] = None  # why training ended before train.epochs
    world_size: int = 1
    wandb_id: Optional[str] = None
    launches: list = field(default_factory=list)  # who ran each launch of this run, on what (summary.json)
    epochs: Optional[int] = None  # train.epochs the lr schedule is laid out over (train.extend_epochs changes it)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class BestWeights:
    """The best validation result so far (model or EMA, ranked by the early-stopping monitor) and its weights,
    kept in best/ outside the rolling checkpoints."""

    def __init__(self, run_dir: Path, card: dict, monitor: Monitor, writer: bool):
        self.run_dir, self.card, self.monitor, self.writer = run_dir, card, monitor, writer
        self.epoch: Optional[int] = None
        self.source: Optional[str] = None  # "model" or "ema"
        self.metrics: Optional[dict] = None  # {"acc", "loss"} of the best validation

    def offer(self, epoch: int, results: list[tuple[str, dict, nn.Module]]) -> bool:
        """Keep this epoch's best of (source, metrics, module) if it ranks above the best so far."""
        source, metrics, module = max(results, key=lambda result: self.monitor.rank(result[1]))
        if self.metrics is not None and self.monitor.rank(metrics) <= self.monitor.rank(self.metrics):
            return False
        self.epoch, self.source, self.metrics = epoch, source, dict(acc=metrics["acc"], loss=metrics["loss"])
        if self.writer:
            save_best(self.run_dir, module.state_dict(), self.card, self.state_dict())
        return True

    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, source=self.source, metrics=self.metrics)

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.source, self.metrics = state["epoch"], state["source"], state["metrics"]


def checkpoint_name(epoch: int, batch: int) -> str:
    return f"epoch{epoch:04d}-batch{batch:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: tuple(map(int, NAME.match(p.name).groups())))


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    accelerator, run_dir: Path, position: tuple[int, int], components: dict, ema, keep_last: int
) -> Path:
    """Full training state after `position` = (epoch, batches of it trained): accelerate's (model, optimizer,
    scaler, RNG of every process), the EMA's weights and every other component's state_dict()."""
    name = checkpoint_name(*position)
    final = run_dir / "checkpoints" / name
    tmp = final.with_name(f".tmp-{name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    saved = {key: component.state_dict() for key, component in components.items()}  # on every process (reads)
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            if ema is not None:
                save_file(ema.module.state_dict(), str(tmp / EMA_FILE))
            write_atomic(tmp / STATE_FILE, json.dumps(saved, indent=1).encode())
        accelerator.wait_for_everyone()
        crash_point("checkpoint_save")
        if accelerator.is_main_process:
            fsync_tree(tmp)  # contents on disk before the name says "complete"
            if final.exists():  # the same position saved again (e.g. interrupted twice at one step)
                shutil.rmtree(final)
            os.replace(tmp, final)
            prune(run_dir, keep_last)
    except OSError as e:
        raise UserError(
            f"checkpoint: saving {final} failed ({e.strerror or e}); the previous checkpoint is kept"
        ) from None
    accelerator.wait_for_everyone()
    return final


def fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prune(run_dir: Path, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def read_state(path: Path) -> dict:
    """The components' states saved in checkpoint `path`."""
    try:
        saved = json.loads((path / STATE_FILE).read_text())
        saved["train"]["world_size"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"train.resume: {path / STATE_FILE} is not a checkpoint state of this hw3 version ({e})"
        ) from None
    return saved


def load_checkpoint(accelerator, path: Path, components: dict, ema) -> None:
    """Restore accelerate's state, the EMA and every component from checkpoint `path`."""
    saved = read_state(path)
    if saved["train"]["world_size"] != accelerator.num_processes:
        raise UserError(
            f"train.resume: {path} was written by {saved['train']['world_size']} process(es); resume it with "
            f"the same number (this run has {accelerator.num_processes})"
        )
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng.is_file():  # accelerate would silently continue without restoring the RNG
        raise UserError(f"train.resume: {path} lacks {rng.name}; it is incomplete")
    missing = sorted(set(components) - set(saved))
    if missing:
        raise UserError(f"train.resume: {path} has no saved state for {', '.join(missing)} (another hw3 version?)")
    try:
        accelerator.load_state(str(path))
        if ema is not None:
            ema.module.load_state_dict(load_file(str(path / EMA_FILE)))
    except pickle.UnpicklingError as e:  # accelerate loads with torch.load(weights_only=True): no code runs
        raise UserError(
            f"train.resume: {path} holds objects that are not plain tensors; refusing to unpickle "
            f"them ({str(e).strip().splitlines()[0][:160]})"
        ) from None
    except (RuntimeError, KeyError, ValueError, FileNotFoundError) as e:
        raise UserError(
            f"train.resume: {path} does not match this recipe's model/optimizer "
            f"({str(e).strip().splitlines()[0][:200]})"
        ) from None
    for key, component in components.items():
        component.load_state_dict(saved[key])


def save_best(run_dir: Path, weights: dict[str, torch.Tensor], card: dict, meta: dict) -> None:
    """best/model.safetensors + model.json (rebuild recipe) + meta.json (epoch, metric). Main process only."""
    best = run_dir / "best"
    best.mkdir(exist_ok=True)
    tmp = best / ".model.safetensors.tmp"
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in weights.items()},
        str(tmp),
        metadata={"format": "pt", "epoch": str(meta["epoch"])},
    )
    os.replace(tmp, best / "model.safetensors")
    write_atomic(best / "model.json", json.dumps(card, indent=1).encode())
    write_atomic(best / "meta.json", json.dumps(meta, indent=1).encode())
