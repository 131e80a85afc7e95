"""Checkpoints: full training states that verify themselves.

Checkpoints are folders hw3 names itself, `checkpoints/epoch0003-batch000021` (the state after 21 batches of
epoch 3, counted from 0; an end-of-epoch checkpoint holds all of them), never accelerate's automatic
`checkpoint_<n>` (its counter is not restored on resume, so names collide). A save goes to
`checkpoints/.tmp-<name>`; when every process has written its part, `manifest.json` (size and checksum of every
file, hw3.storage) is written last and the folder renamed into place (hw3.storage.manifest.publish, which also
replaces a checkpoint of the same name safely). A crash mid-save leaves a `.tmp-` folder, which the next launch
removes or, when only the last rename was missing, finishes (recover_saves): never a checkpoint that looks
complete and is not. On resume the newest checkpoint is
verified against its manifest; one that fails is moved aside (`damaged-<name>`) and the next older one tried.

What each process accumulates alone (the epoch's running sums) is saved per process, in rank order, and given
back to the process that owns it. The best weights are hw3.runs.best.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

from safetensors.torch import load_file, save_file

from hw3.dist.faults import crash_point
from hw3.dist.processes import agree, gather_states
from hw3.errors import UserError, WriteFailed
from hw3.runs.layout import CHECKPOINTS
from hw3.storage.files import remove, write_atomic, writing
from hw3.storage.manifest import MANIFEST, publish, recover, verify, write_manifest

STATE_FILE = "trainer_state.json"
NAME = re.compile(r"^epoch(\d{4,})-batch(\d{6,})$")
DAMAGED = "damaged-"
SUPERSEDED = "superseded-"  # newer than a checkpoint train.resume named


def checkpoint_name(epoch: int, batch: int) -> str:
    return f"epoch{epoch:04d}-batch{batch:06d}"


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """Every folder named like a checkpoint, complete or not, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: tuple(map(int, NAME.match(p.name).groups())))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (with their manifest), oldest first; not re-verified (see newest_verified)."""
    return [p for p in checkpoint_folders(run_dir) if (p / MANIFEST).is_file()]


def newest_verified(run_dir: Path) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """(the newest checkpoint whose files match its manifest, or None when none does, [(checkpoint, what is wrong)
    for each newer one]). Reads only."""
    rejected = []
    for path in reversed(checkpoint_folders(run_dir)):
        problem = verify(path)
        if problem is None:
            return path, rejected
        rejected.append((path, problem))
    return None, rejected


def set_aside(rejected: list[tuple[Path, str]]) -> list[str]:
    """Rename damaged checkpoints to damaged-<name> (kept for a look, never pruned, never resumed); the lines that
    say so. Main process, lock held."""
    return [
        f"warning: checkpoint {path}: {problem}; moved aside to {move_aside(path, DAMAGED).name}, using an older one"
        for path, problem in rejected
    ]


def set_aside_newer(run_dir: Path, resume_from: Optional[Path]) -> list[str]:
    """train.resume named an older checkpoint of this run: the newer ones (another course of the run, which the
    pruning by position would keep over the new saves) are renamed superseded-<name>, kept, never resumed."""
    folders = checkpoint_folders(run_dir)
    resolved = [p.resolve() for p in folders]
    if resume_from is None or resume_from.resolve() not in resolved:
        return []
    newer = folders[resolved.index(resume_from.resolve()) + 1 :]
    return [
        f"warning: checkpoint {path} is newer than train.resume's; moved aside to {move_aside(path, SUPERSEDED).name}"
        for path in newer
    ]


def move_aside(path: Path, prefix: str) -> Path:
    aside, n = path.with_name(f"{prefix}{path.name}"), 1
    while aside.exists():  # one set aside before under this name is kept too
        aside, n = path.with_name(f"{prefix}{path.name}-{n}"), n + 1
    os.replace(path, aside)
    return aside


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
        published = attempt(lambda: publish_checkpoint(tmp, final, run_dir, keep_last)) if main else None
        error = agree(accelerator, published)
    if error is not None:
        if main:
            remove(tmp)
        kept = list_checkpoints(run_dir)
        failed = WriteFailed(
            f"checkpoint: {error}; the previous checkpoint ({kept[-1] if kept else 'none'}) and best/ are kept; "
            f"free some space and rerun the same command"
        )
        failed.quiet = not main  # every process stops here with it; the main one says it
        raise failed
    return final  # (agree() waited for the main process's rename: the checkpoint exists for every process)


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


def publish_checkpoint(tmp: Path, final: Path, run_dir: Path, keep_last: int) -> None:
    """Manifest last, then the rename that makes the checkpoint exist; then drop the oldest beyond keep_last."""
    with writing(tmp):
        write_manifest(tmp)
        publish(tmp, final)  # the same position may be saved again (a stop at an epoch's last step, then its end)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def recover_saves(run_dir: Path) -> None:
    """Finish the saves a crash interrupted at their last rename; drop unfinished ones. Main process, lock held."""
    folder = run_dir / CHECKPOINTS
    if folder.is_dir():
        tmp = {p.name.removeprefix(".tmp-") for p in folder.glob(".tmp-*")}
        for name in tmp | {p.name[1 : -len(".old")] for p in folder.glob(".*.old")}:
            recover(folder / f".tmp-{name}", folder / name)


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


def load_checkpoint(
    accelerator, path: Path, components: dict, own: dict, tensors: dict, any_world: bool = False
) -> None:
    """Restore accelerate's state, every shared component, this process's own ones and the tensor state of
    `tensors` from `path`. With `any_world` (a streamed dataset) the checkpoint may come from another number of
    processes: what they each accumulated is merged into the main process's (`merge` of each own component)."""
    saved = read_state(path)
    if saved["train"]["world_size"] != accelerator.num_processes and not any_world:
        raise UserError(
            f"train.resume: {path} was written by {saved['train']['world_size']} process(es); resume it with "
            f"the same number (this run has {accelerator.num_processes}; a streamed dataset resumes on any)"
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
    processes = saved["processes"]
    for key, component in own.items():
        if len(processes) == accelerator.num_processes:
            component.load_state_dict(processes[accelerator.process_index][key])
        elif accelerator.is_main_process:  # the others start from nothing: the sums stay exact
            component.load_state_dict(type(component).merge([p[key] for p in processes]))
