"""Writing files so that a reader sees the old version or the new one, never half; folders that verify themselves;
and write failures (a full disk above all) told in one line.

A checkpoint folder (and best/) ends with `manifest.json`, written last: the size and CRC-32 of every file in
it. The manifest is what makes a folder complete. `verify` re-reads every file and names the first one that is
missing, truncated or changed. CRC-32 because it is the fastest check the standard library has (about 2 GB/s
here, 2.8x SHA-256; BENCHMARKS.md has what it adds to a save and a resume) and the damage it is for is
accidental (a torn write, a bad disk, a hand edit): it misses a random change with probability 2^-32. It is no
defence against forgery; checkpoints are never unpickled into code anyway (torch.load(weights_only=True)).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Iterator, Optional

from hw3.errors import UserError, WriteFailed

MANIFEST = "manifest.json"
CHUNK = 1 << 20


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see the old file or the new one, never half. On failure
    the temporary file is removed and WriteFailed names `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, cleanup=[tmp]):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def crc32(path: Path) -> str:
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def write_manifest(folder: Path) -> None:
    """manifest.json: every file's size and CRC-32. Written last, atomically, after the files are on disk."""
    files = {p.name: dict(bytes=p.stat().st_size, crc32=crc32(p)) for p in sorted(folder.iterdir()) if p.is_file()}
    files.pop(MANIFEST, None)
    fsync_tree(folder)
    write_atomic(folder / MANIFEST, json.dumps(dict(format=1, files=files), indent=1).encode())


def verify(folder: Path, only: Optional[list[str]] = None) -> Optional[str]:
    """None when every file the manifest lists (or those of `only`) is there with its size and checksum, else
    what is wrong, naming the file."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{MANIFEST} is missing (the save never finished)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is damaged"
    for name in only if only is not None else listed:
        path, expected = folder / name, listed.get(name)
        if expected is None:
            return f"{name} is not in {MANIFEST}"
        try:
            size = path.stat().st_size
            if size != expected["bytes"]:
                return f"{name} has {size:,} bytes, {expected['bytes']:,} were written"
            if crc32(path) != expected["crc32"]:
                return f"{name} is damaged (its checksum does not match)"
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror or e})"
    return None


def check_weights(path: Path, card_file: Path) -> None:
    """Raise UserError when the weights (or a model card beside them) differ from their folder's manifest."""
    if not (path.parent / MANIFEST).is_file():
        return  # a file of the user's own, not written by hw3
    names = [path.name] + ([card_file.name] if card_file.parent == path.parent else [])
    problem = verify(path.parent, names)
    if problem is not None:
        raise UserError(f"{path.parent}: {problem}; these weights cannot be trusted")


def fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# Write failures. Disk full does not always raise OSError: safetensors raises SafetensorError ("No space left on
# device (os error 28)") and torch's zip writer RuntimeError ("unexpected pos 8704 vs 8596").


def write_errors() -> tuple[type, ...]:
    from safetensors import SafetensorError

    return (OSError, SafetensorError, RuntimeError)


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
    if "unexpected pos" in reason or "file write failed" in reason:  # torch's zip writer: a short write
        full = full or shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free < CHUNK
    what = "the disk is full" if full else type(error).__name__
    return f"writing {path} failed ({what}: {reason}; {free_space(path)})"


@contextlib.contextmanager
def writing(target: Path, cleanup: list[Path] = ()) -> Iterator[None]:
    """Turn whatever a writer raises into WriteFailed naming the file, after removing `cleanup` (partial files)."""
    try:
        yield
    except WriteFailed:
        raise
    except write_errors() as e:
        message = describe_failure(e, target)
        for path in cleanup:
            remove(path)
        raise WriteFailed(message) from None


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()
