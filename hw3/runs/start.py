"""Where a launch starts: fresh, resumed from a checkpoint, started over, or nothing to do; decided by the main
process, holding the run dir's lock, before anything is built or written.

Resuming checks that the recipe is the one the run was started with (`config.yaml`, the record of what ran, never
rewritten): anything that shapes the trajectory must be unchanged; a few keys that do not (where the data lives,
logging, how many checkpoints to keep, train.max_steps) may change. A checkpoint named by `train.resume=PATH` is
checked the same way, against the run it belongs to. The same command always continues: a damaged newest
checkpoint is set aside for the one before it; with none that verifies, the run starts over (the damaged ones
kept aside).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hw3.config import Config, dotted, load_config
from hw3.errors import UserError, WriteFailed
from hw3.runs.best import recover_best
from hw3.runs.checkpoints import (
    DAMAGED,
    SUPERSEDED,
    newest_verified,
    read_state,
    recover_saves,
    set_aside,
    set_aside_newer,
)
from hw3.runs.layout import BEST, CHECKPOINTS, CONFIG, LOCK, METRICS, SUMMARY, is_run_dir
from hw3.runs.state import at_max_steps
from hw3.storage.files import describe_failure, remove
from hw3.storage.manifest import verify

# Keys a resumed launch may change: where things are read from or written to, logging, limits of one launch.
MAY_CHANGE = (
    "log.",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
    "data.cache",
    "data.cache_shards",
    "data.max_bad_samples",
    "train.keep_last",
    "train.resume",
    "train.overwrite",
    "train.max_steps",
    "train.max_bad_steps",
    "train.eval_batch_size",
    "train.extend_epochs",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "train.collective_timeout_minutes",
    "output_dir",
)


@dataclass
class Start:
    """What a launch does with its run dir."""

    resume_from: Optional[Path] = None  # checkpoint to continue from
    wipe: bool = False  # empty the run dir first (train.overwrite, or a run that died before its first checkpoint)
    restart: bool = False  # no checkpoint verifies: start over, keeping the records and the damaged ones aside
    done: Optional[str] = None  # nothing to do: this line says why, and nothing else happens
    old_epochs: Optional[int] = None  # train.epochs the run was laid out for, when extend_epochs changes it
    rejected: list = field(default_factory=list)  # (checkpoint, what is wrong) for newer ones that did not verify
    position: tuple[int, int] = (0, 0)  # (epoch, batch) the checkpoint continues from

    def said(self, run_dir: Path) -> str:
        """The launch's first line: what it is about to do (the run's own lines follow once it is built)."""
        if self.resume_from is not None:
            return f"resuming from {self.resume_from} (epoch {self.position[0]}, batch {self.position[1]})"
        if self.restart:
            return f"starting the run in {run_dir} over from epoch 0"
        if self.wipe:
            return f"starting the run in {run_dir} over (what was there is replaced)"
        return f"starting a new run in {run_dir}"


def contents(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name != LOCK] if run_dir.is_dir() else []


def finish_interrupted_writes(run_dir: Path) -> None:
    """A checkpoint or best/ that a crash left one rename short of complete is completed, before anything is
    decided from them. Main process, lock held."""
    recover_saves(run_dir)
    recover_best(run_dir)


def decide_start(cfg: Config, run_dir: Path) -> Start:
    """Where this launch starts. Raises UserError; touches nothing (the caller holds the lock)."""
    occupied, train_cfg = bool(contents(run_dir)), cfg.train
    if train_cfg.resume not in ("auto", "never"):
        return explicit_resume(cfg, run_dir, Path(train_cfg.resume), occupied)
    if occupied and train_cfg.overwrite:
        if not is_run_dir(run_dir):
            raise UserError(f"train.overwrite: refusing to delete {run_dir}: it is not an hw3 run dir")
        return Start(wipe=True)
    if train_cfg.resume == "never" and occupied:
        raise UserError(
            f"output_dir: {run_dir} already holds a run and train.resume=never; "
            f"set train.overwrite=true to replace it, or choose another output_dir"
        )
    newest, rejected = newest_verified(run_dir)
    if newest is not None:
        return resume(cfg, run_dir, newest, run_dir, rejected)
    if rejected:
        return start_over(cfg, run_dir, rejected)
    # A run that died before its first complete checkpoint has nothing to resume: start it over. A finished run
    # (summary.json) whose checkpoints are gone, or a folder that is not a run, is someone's result: refuse.
    if occupied and (not is_run_dir(run_dir) or (run_dir / SUMMARY).exists()):
        raise UserError(
            f"output_dir: {run_dir} is not empty and holds no hw3 checkpoint to resume; "
            f"choose another output_dir (or train.overwrite=true for an old hw3 run)"
        )
    return Start(wipe=occupied)


def resume(cfg: Config, record: Path, checkpoint: Path, run_dir: Path, rejected: list, subject: str = "") -> Start:
    """Resume from `checkpoint` of the run recorded in `record` (its run dir), into `run_dir`."""
    state = read_state(checkpoint)["train"]
    old_epochs = check_same_recipe(cfg, record, state.get("epochs"), subject)
    if record == run_dir and (done := finished(cfg, run_dir, state)):
        return Start(done=done)
    if at_max_steps(cfg.train, state["step"]):
        position = f"epoch {state['epoch']}, batch {state['batch']}"
        return Start(
            done=f"{record} stopped at train.max_steps={cfg.train.max_steps} (step {state['step']}: {position}); "
            f"rerun without train.max_steps, or with a larger one, to continue"
        )
    position = (state["epoch"], state["batch"])
    return Start(resume_from=checkpoint, old_epochs=old_epochs, rejected=rejected, position=position)


def explicit_resume(cfg: Config, run_dir: Path, path: Path, occupied: bool) -> Start:
    """train.resume=PATH: that checkpoint, checked like any resume against the run it belongs to (the run dir two
    levels up); into output_dir when that is the same run or a new, empty folder."""
    if not path.is_dir():
        raise UserError(f"train.resume: {path} is not a checkpoint folder")
    problem = verify(path)
    if problem is not None:
        raise UserError(f"train.resume: {path}: {problem}")
    record = path.resolve().parent.parent
    if not is_run_dir(record):
        raise UserError(
            f"train.resume: {path} is not in a run dir ({record / CONFIG} is missing), so the recipe it was "
            f"trained with cannot be checked; resume it from its run dir"
        )
    if occupied and record != run_dir.resolve():
        raise UserError(
            f"train.resume: {path} belongs to the run in {record}, and output_dir {run_dir} already holds another "
            f"run; continue it in its own run dir or in a new, empty output_dir"
        )
    subject = f"train.resume: {path} is a checkpoint of {record}, which"
    return resume(cfg, record, path, record if record == run_dir.resolve() else run_dir, [], subject)


def start_over(cfg: Config, run_dir: Path, rejected: list) -> Start:
    """No checkpoint verifies. A finished run is still complete (its summary says how it ended), though it cannot
    be extended; any other starts over, with its damaged checkpoints moved aside, never deleted."""
    listed = "; ".join(f"{p.name}: {why}" for p, why in rejected)
    if (run_dir / SUMMARY).is_file():
        summary = json.loads((run_dir / SUMMARY).read_text())
        if summary.get("epochs") != cfg.train.epochs:
            raise UserError(
                f"train.epochs: {run_dir} cannot be extended to {cfg.train.epochs} epochs: none of its checkpoints "
                f"verifies ({listed})"
            )
        monitor = summary.get("monitor", "val_acc")
        return Start(
            done=f"{run_dir} is complete ({summary.get('epochs_completed')} epochs, best {monitor} "
            f"{summary.get('best_' + monitor)}); its checkpoints do not verify ({listed}); nothing to do"
        )
    check_same_recipe(cfg, run_dir, None)
    return Start(restart=True, rejected=rejected)


def check_same_recipe(cfg: Config, run_dir: Path, epochs: Optional[int], subject: str = "") -> Optional[int]:
    """Raise unless `cfg` is the recipe the run started with (config.yaml), up to MAY_CHANGE keys, and its
    train.epochs the one the run's schedule is laid out over (`epochs`, from the newest checkpoint), unless
    train.extend_epochs. Returns the old train.epochs when that one changed. `subject` starts the error."""
    record = run_dir / CONFIG
    if not record.is_file() or not record.read_bytes().strip():
        raise UserError(
            f"{record} is {'missing' if not record.is_file() else 'empty'}: the record of the recipe this run was "
            f"trained with is lost, so a resume cannot be checked; use another output_dir, or "
            f"train.resume=never train.overwrite=true to start it over"
        )
    try:
        stored = load_config(str(record))
    except UserError as e:
        raise UserError(f"{record} no longer loads ({e}); resume it with the hw3 that wrote it") from None
    stored.train.epochs = epochs or stored.train.epochs
    old, new = dotted(stored), dotted(cfg)
    changed = {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    changed = {k: v for k, v in sorted(changed.items()) if not k.startswith(MAY_CHANGE)}
    epochs = changed.pop("train.epochs", None)
    if changed:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise UserError(
            f"{subject or f'output_dir: {run_dir}'} was trained with another recipe ({listed}); use another "
            f"output_dir, or train.resume=never train.overwrite=true to start it over"
        )
    if epochs is not None and not cfg.train.extend_epochs:
        raise UserError(
            f"train.epochs: {epochs[0]} -> {epochs[1]} for the run in {run_dir}: its lr schedule was laid out over "
            f"{epochs[0]} epochs; set train.extend_epochs=true to lay it out again over {epochs[1]} (the lr jumps "
            f"where the run resumes), or use another output_dir"
        )
    return epochs[0] if epochs else None


def finished(cfg: Config, run_dir: Path, state: dict) -> Optional[str]:
    """ "<run> is complete ..." when the checkpoint's `state` ends the run and its summary is written."""
    summary_file = run_dir / SUMMARY
    # (A run stopped on non-finite steps never checkpointed that stop: rerun, it retries from its last good state.)
    ended = state["stopped"] in ("early_stop", "pruned") or state["epoch"] >= cfg.train.epochs
    if not ended or not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    how = {"early_stop": "stopped early", "pruned": "pruned by its study"}.get(state["stopped"], "done")
    best = summary.get(f"best_{cfg.early_stop.monitor}")
    test = f", test acc {summary['test_acc']:.2%}" if summary.get("test_acc") is not None else ""
    at = f"at epoch {summary.get('best_epoch')}"
    best_line = f"best {cfg.early_stop.monitor} {best:.4g} {at}" if best is not None else "no validation result"
    return f"{run_dir} is complete ({how}: {summary['epochs_completed']} epochs, {best_line}{test}); nothing to do"


def prepare_run_dir(run_dir: Path, start: Start) -> list[str]:
    """Empty the run dir when asked (keeping the lock), make its folders, move damaged checkpoints (and those newer
    than one train.resume named) aside. Main process only, lock held. Returns the warnings to print."""
    try:
        if start.wipe:
            for path in contents(run_dir):
                remove(path)
        (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        warnings = set_aside(start.rejected) + set_aside_newer(run_dir, start.resume_from)
        if start.restart:  # what the lost attempt left, but its records (config.yaml, command.txt) and the damaged
            for path in [run_dir / BEST, run_dir / METRICS, *(run_dir / CHECKPOINTS).iterdir()]:
                if not path.name.startswith((DAMAGED, SUPERSEDED)):
                    remove(path)
            warnings = [
                f"warning: no checkpoint in {run_dir / CHECKPOINTS} verifies "
                f"({'; '.join(f'{p.name}: {why}' for p, why in start.rejected)}); they are moved aside "
                f"({DAMAGED}*) and the run starts over from epoch 0"
            ]
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WriteFailed(f"output_dir: {describe_failure(e, run_dir)}; free some space") from None
        raise UserError(f"output_dir: cannot write to {run_dir} ({e.strerror or e})") from None
    return warnings


def check_output_dir(run_dir: Path) -> None:
    """Fail early, without writing anything, when the run dir could not be created or written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir: {run_dir} exists and is not a folder")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir: cannot write to {run_dir} ({existing} is not a writable folder)")
