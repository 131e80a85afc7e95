"""One writer at a time: a launch takes an OS lock on `<run dir>/.lock` (flock: the kernel drops it when the holder
dies, kill -9 included, so a lock is never stale) before it reads or writes anything else there, and holds it to
the end. hw3.sweep takes the lock of a run itself and hands the locked descriptor to the launch it starts."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Optional

from hw3.errors import RunDirBusy, UserError, WriteFailed
from hw3.runs.layout import LOCK
from hw3.storage.files import describe_failure

INHERITED_LOCK = "HW3_LOCK_FD"  # a descriptor of <run dir>/.lock, already locked, handed down by hw3.sweep


class RunDirLock:
    """An exclusive flock on <run dir>/.lock, taken without waiting. The run dir (and any missing parent) is
    created if needed, and removed again by `release(keep=False)` when this launch created it and wrote nothing
    else: a launch that fails before training leaves no empty folders behind."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
        self.fd = inherited(run_dir)
        if self.fd is None:
            self.fd = self._take()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:  # a full disk at the very first launch: nothing may be left behind
            message = describe_failure(e, run_dir / LOCK)
            self.release(keep=False)
            raise WriteFailed(f"output_dir: {message}; free some space and rerun the same command") from None

    def _take(self) -> int:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self.release(keep=False)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WriteFailed(f"output_dir: {describe_failure(e, self.run_dir)}; free some space") from None
            raise UserError(f"output_dir: cannot write to {self.run_dir} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"output_dir: {self.run_dir} is in use by another hw3 run (pid {holder}); wait for it to finish, "
                f"or choose another output_dir"
            ) from None
        return fd

    def release(self, keep: bool = True) -> None:
        if (
            not keep and self.created and not any(p.name != LOCK and not p.is_dir() for p in self.run_dir.rglob("*"))
        ):  # nothing in it but the lock and folders made for the run
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for parent in self.created[1:]:  # empty parents this launch made (runs/, runs/smoke/)
                try:
                    parent.rmdir()
                except OSError:
                    break
        if self.fd is not None:
            os.close(self.fd)  # the kernel drops the lock with the last descriptor
            self.fd = None


def inherited(run_dir: Path) -> Optional[int]:
    """The locked descriptor hw3.sweep handed this launch, if it is one of this run dir's lock file."""
    fd = os.environ.pop(INHERITED_LOCK, None)
    if fd is None or not fd.isdigit() or not (run_dir / LOCK).is_file():
        return None
    try:
        mine, theirs = os.fstat(int(fd)), os.stat(run_dir / LOCK)
    except OSError:
        return None
    return int(fd) if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino) else None


def lock_is_free(run_dir: Path) -> bool:
    """Could a launch take this run dir's lock now? (Takes and drops it; creates nothing.)"""
    if not (run_dir / LOCK).is_file():
        return True
    fd = os.open(run_dir / LOCK, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
