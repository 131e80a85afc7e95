"""Folders that verify themselves: a checkpoint folder (and best/, and a decoded-image cache entry) ends with
`manifest.json`, written last: the size and CRC-32 of every file in it. The manifest is what makes a folder
complete. `verify` re-reads every file and names the first one that is missing, truncated or changed; a manifest
that is itself damaged (unreadable, not JSON, an entry without its size or checksum) fails the same way.

CRC-32 because it is the fastest check the standard library has (about 2 GB/s here, 2.8x SHA-256; BENCHMARKS.md
has what it adds to a save and a resume) and the damage it is for is accidental (a torn write, a bad disk, a hand
edit): it misses a random change with probability 2^-32. It is no defence against forgery; checkpoints are never
unpickled into code anyway (torch.load(weights_only=True)).

A complete folder takes the place of an older one of the same name by two renames (`publish`): the old one to
`.<name>.old`, the new one into place. A crash between them leaves the new one complete beside the old one and no
folder of that name; `recover` finishes the swap at the next launch (or puts the old one back).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Optional

from hw3.errors import UserError
from hw3.storage.files import CHUNK, fsync_tree, remove, write_atomic

MANIFEST = "manifest.json"


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


def read_manifest(folder: Path) -> dict[str, tuple[int, str]]:
    """{file name: (bytes, crc32)}; ValueError when the manifest is not one hw3 wrote (or was edited)."""
    listed = json.loads((folder / MANIFEST).read_text())["files"]
    entries = {}
    for name, entry in listed.items():
        size, crc = entry["bytes"], entry["crc32"]
        if not isinstance(size, int) or not isinstance(crc, str):
            raise ValueError(f"the entry of {name}")
        entries[name] = (size, crc)
    return entries


def verify(folder: Path, only: Optional[list[str]] = None) -> Optional[str]:
    """None when every file the manifest lists (or those of `only`) is there with its size and checksum, else
    what is wrong, naming the file."""
    try:
        listed = read_manifest(folder)
    except FileNotFoundError:
        return f"{MANIFEST} is missing (the save never finished)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is damaged"
    for name in only if only is not None else listed:
        path, expected = folder / name, listed.get(name)
        if expected is None:
            return f"{name} is not in {MANIFEST}"
        try:
            size = path.stat().st_size
            if size != expected[0]:
                return f"{name} has {size:,} bytes, {expected[0]:,} were written"
            if crc32(path) != expected[1]:
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


def old_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def publish(new: Path, final: Path) -> None:
    """Make the complete folder `new` (its manifest written) be `final`, replacing the folder there, if any."""
    old = old_name(final)
    remove(old)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    remove(old)


def recover(new: Path, final: Path) -> None:
    """Finish a `publish` of `new` to `final` that a crash interrupted: with no `final`, `new` if it verifies, else
    the old one; then what is left of either goes."""
    old = old_name(final)
    if not final.exists():
        if new.is_dir() and verify(new) is None:
            os.replace(new, final)
        elif old.is_dir():
            os.replace(old, final)
    remove(new)
    remove(old)
