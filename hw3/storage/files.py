"""Atomic writes, and write failures told in one line.

Disk full does not always raise OSError: safetensors raises SafetensorError ("No space left on device (os error
28)") and torch's zip writer (inside accelerate's save_state) RuntimeError ("unexpected pos 8704 vs 8596", "file
write failed"). Those are write failures; any other RuntimeError (an out-of-memory error in the middle of a save,
say) is not, and is raised as it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator, Optional

from hw3.errors import WriteFailed

CHUNK = 1 << 20
# What torch's zip writer (caffe2's PyTorchStreamWriter) says when a write comes up short.
ZIP_WRITER_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the new one, never half. On failure
    the temporary file is removed and WriteFailed names `path`. The temporary name is the writer's own (pid and
    thread), so launches sharing a cache folder never write into each other's file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    with writing(path, cleanup=[tmp]):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()


def fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_write_failure(error: BaseException) -> bool:
    """Did a writer fail to put bytes on disk (as opposed to failing for another reason while writing)?"""
    from safetensors import SafetensorError

    if isinstance(error, (OSError, SafetensorError)):
        return True
    return type(error) is RuntimeError and any(marker in str(error) for marker in ZIP_WRITER_FAILURES)


@contextlib.contextmanager
def writing(target: Path, cleanup: list[Path] = ()) -> Iterator[None]:
    """Turn what a writer raises on a failed write into WriteFailed naming the file, after removing `cleanup`
    (partial files). Other errors pass through untouched."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as e:
        if not is_write_failure(e):
            raise
        message = describe_failure(e, target)
        for path in cleanup:
            remove(path)
        raise WriteFailed(message) from None


def newest_file(folder: Path) -> Optional[Path]:
    """The file written last in `folder` (the one a writer was in the middle of), if any."""
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def free_space(path: Path) -> str:
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    return f"{shutil.disk_usage(existing).free / 2**20:,.1f} MiB free"


def describe_failure(error: BaseException, target: Path) -> str:
    """`writing <file> failed (<reason>; <free space>)`, the file taken from the error or, for writers that do not
    say (torch's zip writer), the newest file under `target`."""
    filename = getattr(error, "filename", None)
    path = Path(filename) if filename else (newest_file(target) if target.is_dir() else target) or target
    if path.is_dir():  # nothing written in it yet: the writer failed on its first file
        path = path / "(its first file)"
    reason = getattr(error, "strerror", None) or " ".join(str(error).split())[:160] or type(error).__name__
    full = getattr(error, "errno", None) == errno.ENOSPC or "No space left" in reason or "os error 28" in reason
    if any(marker in reason for marker in ZIP_WRITER_FAILURES):  # a short write: full if there is no room
        full = full or shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free < CHUNK
    what = "the disk is full" if full else type(error).__name__
    return f"writing {path} failed ({what}: {reason}; {free_space(path)})"


def cache_dir(kind: str) -> Path:
    """`$HW3_CACHE/<kind>` (default ~/.cache/hw3/<kind>): what hw3 keeps between launches, safe to delete."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hw3"
    return Path(os.environ.get("HW3_CACHE") or default) / kind
