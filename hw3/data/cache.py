"""Decoded images kept between launches: a folder or Hub set of small images, once decoded into uint8 tensors, is
saved under $HW3_CACHE (default ~/.cache/hw3/decoded) and read back by every later launch, resume and process.

An entry is keyed by what was decoded: for an image folder, every file's path, size and modification time; for a
Hub set, the fingerprints `datasets` gives its tables; plus the colour mode and the cache format. A changed,
added or removed image gives another key, so a stale entry is never used (it is rebuilt beside). Each entry is a
folder holding `images.safetensors` and hw3's manifest (hw3.storage), verified on every read: a damaged entry is
decoded again. Entries are written to a temporary folder and renamed into place, so processes or runs that
decode the same data at once never see half an entry. `data.cache: false` turns it off; deleting the folder is
always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from hw3.storage.files import cache_dir, remove
from hw3.storage.manifest import verify, write_manifest

FORMAT = 2  # 2: 16-bit grayscale scaled to 8 bits, not clipped
SPLITS = ("train", "val", "test")


def cache_root() -> Path:
    return cache_dir("decoded")


def key_of(description: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **description}, sort_keys=True).encode()).hexdigest()[:32]


def files_fingerprint(paths: list[str]) -> str:
    """Paths, sizes and modification times (ns) of `paths`: what says the files are the ones decoded."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached(
    describe: Callable[[], dict], decode: Callable[[], dict[str, Optional[torch.Tensor]]], enabled: bool
) -> tuple[dict[str, Optional[torch.Tensor]], str]:
    """The tensors `decode()` returns ({"train": uint8 (N, C, H, W), ...}), from the cache when it holds them for
    what `describe()` says they are; (tensors, "cache hit" | "decoded, cached" | "decoded") for the console."""
    if not enabled:
        return decode(), "decoded"
    description = describe()
    entry = cache_root() / key_of(description)
    if entry.is_dir() and verify(entry) is None:
        stored = load_file(str(entry / "images.safetensors"))
        return {name: stored.get(name) for name in SPLITS}, f"read from the cache ({entry})"
    tensors = decode()
    return tensors, ("decoded, cached" if store(entry, description, tensors) else "decoded (cache not writable)")


def store(entry: Path, description: dict, tensors: dict[str, Optional[torch.Tensor]]) -> bool:
    """Write the entry under a temporary name, then rename it into place. False when the cache cannot be written
    (a full or read-only disk only costs the next launch the decoding)."""
    tmp = entry.with_name(f".tmp-{entry.name}-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items() if v is not None}, str(tmp / "images.safetensors"))
        (tmp / "description.json").write_text(json.dumps(description, indent=1, default=str))
        write_manifest(tmp)
        if entry.exists():  # stale or damaged: replaced
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
        return True
    except Exception:  # noqa: BLE001 - any failure to cache is only a missed speed-up
        remove(tmp)
        return entry.is_dir() and verify(entry) is None  # another process may have written it meanwhile
