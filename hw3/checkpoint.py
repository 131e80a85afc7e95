"""Checkpoints and the best weights.

Checkpoints are folders hw3 names itself, `checkpoints/epoch0003-batch000021` (the state after 21 batches of
epoch 3, counted from 0; an end-of-epoch checkpoint holds all of them), never accelerate's automatic
`checkpoint_<n>` (its counter is not restored on resume, so names collide). A save goes to
`checkpoints/.tmp-<name>`; when every process has written its part, `manifest.json` (size and checksum of every
file, hw3.storage) is written last and the folder renamed into place. A crash mid-save leaves a `.tmp-` folder,
which is ignored and cleaned up, never a checkpoint that looks complete. On resume the newest checkpoint is
verified against its manifest; one that fails is moved aside (`damaged-<name>`) and the next older one tried.

What each process accumulates alone (the epoch's running sums) is saved per process, in rank order, and given
back to the process that owns it. The best weights live in `best/`, outside the rolling `keep_last`, as
safetensors beside a `model.json` that rebuilds the network (hw3.load_model), replaced as a whole folder.
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
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hw3.distributed import agree, gather_states
from hw3.errors import UserError, WriteFailed
from hw3.faults import crash_point
from hw3.monitor import Monitor
from hw3.storage import MANIFEST, remove, verify, write_atomic, write_manifest, writing

STATE_FILE = "trainer_state.json"
NAME = re.compile(r"^epoch(\d{4,})-batch(\d{6,})$")
DAMAGED = "damaged-"


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
    image_passes: int = 0  # forward/backward passes of one image each, over all processes (what training cost)
    train_time_s: float = 0.0  # seconds spent in training steps, finished epochs (validation and saves aside)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class BestWeights:
    """The best validation result so far (model or EMA, ranked by the early-stopping monitor) and its weights,
    kept in best/ outside the rolling checkpoints (written by the main process)."""

    def __init__(self, run_dir: Path, card: dict, monitor: Monitor, accelerator):
        self.run_dir, self.card, self.monitor, self.accelerator = run_dir, card, monitor, accelerator
        self.epoch: Optional[int] = None
        self.source: Optional[str] = None  # "model" or "ema"
        self.metrics: Optional[dict] = None  # {"acc", "loss"} of the best validation

    def offer(self, epoch: int, results: list[tuple[str, dict, nn.Module]]) -> bool:
        """Keep this epoch's best of (source, metrics, module) if it ranks above the best so far."""
        source, metrics, module = max(results, key=lambda result: self.monitor.rank(result[1]))
        if self.metrics is not None and self.monitor.rank(metrics) <= self.monitor.rank(self.metrics):
            return False
        self.epoch, self.source, self.metrics = epoch, source, dict(acc=metrics["acc"], loss=metrics["loss"])
        error = None
        if self.accelerator.is_main_process:
            try:
                save_best(self.run_dir, module.state_dict(), self.card, self.state_dict())
            except WriteFailed as e:
                error = f"best weights: {e}; the previous best/ is kept"
        error = agree(self.accelerator, error)  # every process stops here, not at the next collective
        if error is not None:
            raise WriteFailed(error)
        return True

    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, source=self.source, metrics=self.metrics)

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.source, self.metrics = state["epoch"], state["source"], state["metrics"]


def checkpoint_name(epoch: int, batch: int) -> str:
    return f"epoch{epoch:04d}-batch{batch:06d}"


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """Every folder named like a checkpoint, complete or not, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: tuple(map(int, NAME.match(p.name).groups())))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (with their manifest), oldest first; not re-verified (see newest_verified)."""
    return [p for p in checkpoint_folders(run_dir) if (p / MANIFEST).is_file()]


def newest_verified(run_dir: Path) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """(the newest checkpoint whose files match its manifest, [(checkpoint, what is wrong) for each newer one]).
    Raises when there are checkpoints and none verifies. Reads only."""
    rejected = []
    for path in reversed(checkpoint_folders(run_dir)):
        problem = verify(path)
        if problem is None:
            return path, rejected
        rejected.append((path, problem))
    if rejected:
        listed = "; ".join(f"{p.name}: {why}" for p, why in rejected)
        raise UserError(
            f"output_dir: no checkpoint in {run_dir / 'checkpoints'} verifies ({listed}); nothing to resume from: "
            f"train.resume=never train.overwrite=true starts the run over"
        )
    return None, []


def set_aside(rejected: list[tuple[Path, str]]) -> list[str]:
    """Rename damaged checkpoints to damaged-<name> (kept for a look, never pruned, never resumed); the lines that
    say so. Main process, lock held."""
    lines = []
    for path, problem in rejected:
        aside = path.with_name(f"{DAMAGED}{path.name}")
        remove(aside)
        os.replace(path, aside)
        lines.append(f"warning: checkpoint {path}: {problem}; moved aside to {aside.name}, using an older one")
    return lines


def save_checkpoint(
    accelerator, run_dir: Path, position: tuple[int, int], components: dict, own: dict, tensors: dict, keep_last: int
) -> Path:
    """Full training state after `position` = (epoch, batches of it trained): accelerate's (model, optimizer,
    scaler, RNG of every process), every shared component's state_dict() (JSON), per process those of `own`, and
    the tensor state of `tensors` (the EMA's weights, LookSAM's vector) as <key>.safetensors. A write failure on
    any process stops every process here with WriteFailed."""
    name = checkpoint_name(*position)
    final = run_dir / "checkpoints" / name
    tmp = final.with_name(f".tmp-{name}")
    main = accelerator.is_main_process
    if main:
        remove(tmp)
    accelerator.wait_for_everyone()
    saved = {key: component.state_dict() for key, component in components.items()}
    saved["processes"] = gather_states(accelerator, {key: c.state_dict() for key, c in own.items()})
    error = attempt(lambda: write_state(accelerator, tmp, saved, tensors))
    error = agree(accelerator, error)
    if error is None:
        crash_point("checkpoint_save")
        error = agree(accelerator, attempt(lambda: publish(tmp, final, run_dir, keep_last)) if main else None)
    if error is not None:
        if main:
            remove(tmp)
        kept = list_checkpoints(run_dir)
        raise WriteFailed(
            f"checkpoint: {error}; the previous checkpoint ({kept[-1] if kept else 'none'}) and best/ are kept; "
            f"free some space and rerun the same command"
        )
    accelerator.wait_for_everyone()
    return final


def attempt(write: Callable[[], None]) -> Optional[str]:
    try:
        write()
    except WriteFailed as e:
        return str(e)
    return None


def write_state(accelerator, tmp: Path, saved: dict, tensors: dict) -> None:
    with writing(tmp):
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            for key, component in tensors.items():
                save_file(
                    {k: v.contiguous() for k, v in component.state_dict().items()}, str(tmp / f"{key}.safetensors")
                )
            write_atomic(tmp / STATE_FILE, json.dumps(saved, indent=1).encode())


def publish(tmp: Path, final: Path, run_dir: Path, keep_last: int) -> None:
    """Manifest last, then the rename that makes the checkpoint exist; then drop the oldest beyond keep_last."""
    with writing(tmp):
        write_manifest(tmp)
        if final.exists():  # the same position saved again (e.g. interrupted twice at one step)
            shutil.rmtree(final)
        os.replace(tmp, final)
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


def load_checkpoint(accelerator, path: Path, components: dict, own: dict, tensors: dict) -> None:
    """Restore accelerate's state, every shared component, this process's own ones and the tensor state of
    `tensors` from `path`."""
    saved = read_state(path)
    if saved["train"]["world_size"] != accelerator.num_processes:
        raise UserError(
            f"train.resume: {path} was written by {saved['train']['world_size']} process(es); resume it with "
            f"the same number (this run has {accelerator.num_processes})"
        )
    missing = sorted(set(components) - set(saved)) + ([] if "processes" in saved else ["processes"])
    if missing:
        raise UserError(f"train.resume: {path} has no saved state for {', '.join(missing)} (another hw3 version?)")
    try:
        accelerator.load_state(str(path))
        for key, component in tensors.items():
            component.load_state_dict(load_file(str(path / f"{key}.safetensors"), device=str(accelerator.device)))
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
    for key, component in own.items():
        component.load_state_dict(saved["processes"][accelerator.process_index][key])


# ----------------------------------------------------------------------------------------------------------
# best/: written whole into best.new/ (manifest last), then swapped in with two renames. A crash between them
# leaves best.new/ complete and no best/; recover_best() finishes the swap at the next launch.

BEST, BEST_NEW, BEST_OLD = "best", "best.new", "best.old"


def save_best(run_dir: Path, weights: dict[str, torch.Tensor], card: dict, meta: dict) -> None:
    """best/model.safetensors + model.json (rebuild recipe) + meta.json (epoch, metric) + manifest.json. Main
    process only. On failure best/ is untouched and best.new/ removed."""
    new, best, old = run_dir / BEST_NEW, run_dir / BEST, run_dir / BEST_OLD
    remove(new)
    with writing(new / "model.safetensors", cleanup=[new]):
        new.mkdir()
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in weights.items()},
            str(new / "model.safetensors"),
            metadata={"format": "pt", "epoch": str(meta["epoch"])},
        )
    with writing(new, cleanup=[new]):
        write_atomic(new / "model.json", json.dumps(card, indent=1).encode())
        write_atomic(new / "meta.json", json.dumps(meta, indent=1).encode())
        write_manifest(new)
        remove(old)
        if best.exists():
            os.replace(best, old)
        os.replace(new, best)
    remove(old)


def recover_best(run_dir: Path) -> None:
    """Finish a swap of best/ that a crash interrupted; drop leftovers. Main process, lock held."""
    new, best, old = run_dir / BEST_NEW, run_dir / BEST, run_dir / BEST_OLD
    if not best.exists():
        if new.is_dir() and verify(new) is None:
            os.replace(new, best)
        elif old.is_dir():
            os.replace(old, best)
    remove(new)
    remove(old)
