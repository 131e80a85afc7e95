"""The run directory, checkpoints and the best weights.

Checkpoints are folders hw3 names itself, `checkpoints/epoch0003-batch000000` (epoch in progress, batches of it
done), never accelerate's automatic `checkpoint_<n>` (its counter is not restored on resume, so names collide).
A save goes to `checkpoints/.tmp-<name>` and is renamed into place only when every process has written its
part and `trainer_state.json` is there: a crash mid-save leaves a `.tmp-` folder, which is ignored and
cleaned up, never a checkpoint that looks complete. The best weights live in `best/`, outside the rolling
`keep_last`, as safetensors beside a `model.json` that rebuilds the network (hw3.load_model).
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

from hw3.config import TrainConfig
from hw3.errors import UserError
from hw3.faults import crash_point

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
NAME = re.compile(r"^epoch(\d{4,})-batch(\d{6,})$")


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly (saved as JSON)."""

    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already trained (> 0 only for a mid-epoch checkpoint)
    step: int = 0  # optimizer steps taken
    bad_in_row: int = 0  # consecutive non-finite steps
    skipped_steps: int = 0  # non-finite steps skipped so far
    wall_time_s: float = 0.0  # time spent in earlier sessions
    partial: dict = field(default_factory=dict)  # sums of the epoch in progress (mid-epoch checkpoint)
    history: list = field(default_factory=list)  # one metrics row per finished epoch
    best: dict = field(default_factory=dict)  # value, epoch, source (model or ema), val_acc, val_loss
    early_stop: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)
    stopped: Optional[str] = None  # why training ended before train.epochs
    world_size: int = 1
    wandb_id: Optional[str] = None


def checkpoint_name(epoch: int, batch: int) -> str:
    return f"epoch{epoch:04d}-batch{batch:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: tuple(map(int, NAME.match(p.name).groups())))


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "command.txt").is_file()


def decide_start(cfg: TrainConfig, run_dir: Path) -> tuple[Optional[Path], bool]:
    """(checkpoint to resume from, whether to wipe the run dir first). Raises UserError; touches nothing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir: {run_dir} exists and is not a folder")
    check_writable(run_dir)
    occupied = run_dir.is_dir() and any(run_dir.iterdir())
    if cfg.resume not in ("auto", "never"):
        path = Path(cfg.resume)
        if not (path / STATE_FILE).is_file():
            raise UserError(f"train.resume: {path} is not a complete hw3 checkpoint (no {STATE_FILE})")
        return path, False
    if occupied and cfg.overwrite:
        if not is_run_dir(run_dir):
            raise UserError(f"train.overwrite: refusing to delete {run_dir}: it is not an hw3 run dir")
        return None, True
    if cfg.resume == "never" and occupied:
        raise UserError(
            f"output_dir: {run_dir} already holds a run and train.resume=never; "
            f"set train.overwrite=true to replace it, or choose another output_dir"
        )
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        return checkpoints[-1], False
    # A run that died before its first complete checkpoint has nothing to resume: start it over. A finished run
    # (summary.json) whose checkpoints are gone, or a folder that is not a run, is someone's result: refuse.
    if occupied and (not is_run_dir(run_dir) or (run_dir / "summary.json").exists()):
        raise UserError(
            f"output_dir: {run_dir} is not empty and holds no hw3 checkpoint to resume; "
            f"choose another output_dir (or train.overwrite=true for an old hw3 run)"
        )
    return None, occupied


def check_writable(run_dir: Path) -> None:
    """Fail early, without writing anything, when the run dir could not be created or written."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir: cannot write to {run_dir} ({existing} is not a writable folder)")


def prepare_run_dir(run_dir: Path, wipe: bool) -> None:
    """Create (or empty) the run dir, once the run is known to start. Main process only."""
    try:
        if wipe:
            shutil.rmtree(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"output_dir: cannot write to {run_dir} ({e.strerror or e})") from None
    for stale in (run_dir / "checkpoints").glob(".tmp-*"):  # saves a crash interrupted
        shutil.rmtree(stale, ignore_errors=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def state_json(state: TrainState) -> bytes:
    return json.dumps(dataclasses.asdict(state), indent=1).encode()


def save_checkpoint(accelerator, run_dir: Path, state: TrainState, ema, keep_last: int) -> Path:
    """Full training state (accelerate: model, optimizer, scaler, RNG of every process; hw3: the rest)."""
    name = checkpoint_name(state.epoch, state.batch)
    final = run_dir / "checkpoints" / name
    tmp = final.with_name(f".tmp-{name}")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            if ema is not None:
                save_file(ema.module.state_dict(), str(tmp / EMA_FILE))
            write_atomic(tmp / STATE_FILE, state_json(state))
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


def load_checkpoint(accelerator, path: Path, ema) -> TrainState:
    state = TrainState(**json.loads((path / STATE_FILE).read_text()))
    if state.world_size != accelerator.num_processes:
        raise UserError(
            f"train.resume: {path} was written by {state.world_size} process(es); resume it with "
            f"the same number (this run has {accelerator.num_processes})"
        )
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng.is_file():  # accelerate would silently continue without restoring the RNG
        raise UserError(f"train.resume: {path} lacks {rng.name}; it is incomplete")
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
    return state


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
