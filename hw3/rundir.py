"""The run directory: one writer at a time, and where a launch starts (fresh, resumed, or nothing to do).

A launch takes an OS lock on `<run dir>/.lock` (flock: the kernel drops it when the holder dies, kill -9
included, so a lock is never stale) before it reads or writes anything else there, and holds it to the end.
Resuming checks that the recipe is the one the run was started with: anything that shapes the trajectory must
be unchanged (`config.yaml` is the record of what ran and is never rewritten); a few keys that do not (where
the data lives, logging, how many checkpoints to keep) may change.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hw3.checkpoint import newest_verified, read_state, recover_best, set_aside
from hw3.config import Config, dotted, load_config
from hw3.errors import RunDirBusy, UserError
from hw3.storage import verify

LOCK_FILE = ".lock"
INHERITED_LOCK = "HW3_LOCK_FD"  # a descriptor of <run dir>/.lock, already locked, handed down by hw3.sweep
# Keys a resumed launch may change: where things are read from or written to, logging, limits of one launch.
MAY_CHANGE = (
    "log.",
    "data.root",
    "data.download",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
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
    "data.cache",
    "output_dir",
)


class RunDirLock:
    """An exclusive flock on <run dir>/.lock, taken without waiting. The run dir (and any missing parent) is
    created if needed, and removed again by `release(keep=False)` when this launch created it and wrote nothing
    else: a launch that fails before training leaves no empty folders behind."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
        self.fd = inherited(run_dir)
        if self.fd is not None:  # the sweep that started this launch holds the lock for it
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
            return
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"output_dir: cannot write to {run_dir} ({e.strerror or e})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise RunDirBusy(
                f"output_dir: {run_dir} is in use by another hw3 run (pid {holder}); wait for it to finish, "
                f"or choose another output_dir"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self, keep: bool = True) -> None:
        if (
            not keep
            and self.created
            and not any(p.name != LOCK_FILE and not p.is_dir() for p in self.run_dir.rglob("*"))
        ):  # nothing in it but the lock and folders made for the run
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for parent in self.created[1:]:  # empty parents this launch made (runs/, runs/smoke/)
                try:
                    parent.rmdir()
                except OSError:
                    break
        os.close(self.fd)  # the kernel drops the lock with the last descriptor


def inherited(run_dir: Path) -> Optional[int]:
    """The locked descriptor hw3.sweep handed this launch, if it is one of this run dir's lock file."""
    fd = os.environ.pop(INHERITED_LOCK, None)
    if fd is None or not fd.isdigit() or not (run_dir / LOCK_FILE).is_file():
        return None
    try:
        mine, theirs = os.fstat(int(fd)), os.stat(run_dir / LOCK_FILE)
    except OSError:
        return None
    return int(fd) if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino) else None


def lock_is_free(run_dir: Path) -> bool:
    """Could a launch take this run dir's lock now? (Takes and drops it; creates nothing.)"""
    if not (run_dir / LOCK_FILE).is_file():
        return True
    fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@dataclass
class Start:
    """What a launch does with its run dir, decided before anything is built or written."""

    resume_from: Optional[Path] = None  # checkpoint to continue from
    wipe: bool = False  # empty the run dir first (train.overwrite, or a run that died before its first checkpoint)
    done: Optional[str] = None  # the run is complete: this line says so, and nothing else happens
    old_epochs: Optional[int] = None  # train.epochs the run was laid out for, when extend_epochs changes it
    rejected: list = field(default_factory=list)  # (checkpoint, what is wrong) for newer ones that did not verify


def contents(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.is_dir() else []


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "command.txt").is_file()


def decide_start(cfg: Config, run_dir: Path) -> Start:
    """Where this launch starts. Raises UserError; touches nothing (the caller holds the lock)."""
    occupied = bool(contents(run_dir))
    train_cfg = cfg.train
    if train_cfg.resume not in ("auto", "never"):
        path = Path(train_cfg.resume)
        if not path.is_dir():
            raise UserError(f"train.resume: {path} is not a checkpoint folder")
        problem = verify(path)
        if problem is not None:
            raise UserError(f"train.resume: {path}: {problem}")
        return Start(resume_from=path)
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
        state = read_state(newest)["train"]
        old_epochs = check_same_recipe(cfg, run_dir, state.get("epochs"))
        return finished(cfg, run_dir, state) or Start(resume_from=newest, old_epochs=old_epochs, rejected=rejected)
    # A run that died before its first complete checkpoint has nothing to resume: start it over. A finished run
    # (summary.json) whose checkpoints are gone, or a folder that is not a run, is someone's result: refuse.
    if occupied and (not is_run_dir(run_dir) or (run_dir / "summary.json").exists()):
        raise UserError(
            f"output_dir: {run_dir} is not empty and holds no hw3 checkpoint to resume; "
            f"choose another output_dir (or train.overwrite=true for an old hw3 run)"
        )
    return Start(wipe=occupied)


def check_same_recipe(cfg: Config, run_dir: Path, epochs: Optional[int]) -> Optional[int]:
    """Raise unless `cfg` is the recipe the run started with (config.yaml), up to MAY_CHANGE keys, and its
    train.epochs the one the run's schedule is laid out over (`epochs`, from the newest checkpoint), unless
    train.extend_epochs. Returns the old train.epochs when that one changed."""
    record = run_dir / "config.yaml"
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
            f"output_dir: {run_dir} was trained with another recipe ({listed}); use another output_dir, or "
            f"train.resume=never train.overwrite=true to start it over"
        )
    if epochs is not None and not cfg.train.extend_epochs:
        raise UserError(
            f"train.epochs: {epochs[0]} -> {epochs[1]} for the run in {run_dir}: its lr schedule was laid out over "
            f"{epochs[0]} epochs; set train.extend_epochs=true to lay it out again over {epochs[1]} (the lr jumps "
            f"where the run resumes), or use another output_dir"
        )
    return epochs[0] if epochs else None


def finished(cfg: Config, run_dir: Path, state: dict) -> Optional[Start]:
    """A Start that says "complete" when the newest checkpoint's `state` ends the run and its summary is written."""
    summary_file = run_dir / "summary.json"
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
    return Start(
        done=f"{run_dir} is complete ({how}: {summary['epochs_completed']} epochs, {best_line}{test}); nothing to do"
    )


def prepare_run_dir(run_dir: Path, start: Start) -> list[str]:
    """Empty the run dir when asked (keeping the lock), make its folders, move damaged checkpoints aside, finish an
    interrupted swap of best/. Main process only, lock held. Returns the warnings to print."""
    try:
        if start.wipe:
            for path in contents(run_dir):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        warnings = set_aside(start.rejected)
        recover_best(run_dir)
    except OSError as e:
        raise UserError(f"output_dir: cannot write to {run_dir} ({e.strerror or e})") from None
    for stale in (run_dir / "checkpoints").glob(".tmp-*"):  # saves a crash interrupted
        shutil.rmtree(stale, ignore_errors=True)
    return warnings


def check_output_dir(run_dir: Path) -> None:
    """Fail early, without writing anything, when the run dir could not be created or written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir: {run_dir} exists and is not a folder")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"output_dir: cannot write to {run_dir} ({existing} is not a writable folder)")
