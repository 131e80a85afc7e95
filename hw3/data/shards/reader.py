"""Reading one sample of a sharded dataset by its id, in whichever process asks (DataLoader workers included).

A shard that is not on this machine is fetched whole into `$HW3_CACHE/shards/<dataset>/rank<r>/` (hw3.storage.
remote: atomically, retried with backoff), a file lock per shard keeping the DataLoader workers of a process
from fetching it twice; once more than `keep` shards are there, the least recently used is deleted (one being
fetched or opened holds its lock and is passed over; a reader that has it open keeps reading: POSIX removes a
file's name, not an open file). A local shard is read where it is. Within a shard, samples are found by position:
a tar's members are listed once (WebDataset's grouping: the members sharing a key up to the first dot are one
sample), a parquet file's row groups once.

An unreadable sample (a damaged image, a missing or bad label, a member without an image) raises BadSample,
naming the shard and the sample's key; the loader skips and counts it.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import os
import queue
import tarfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from hw3.data.shards.index import IMAGE_EXTENSIONS, Shard
from hw3.data.sources import in_mode
from hw3.storage.remote import TRIES, attempt, fetch, is_local

PARQUET_CACHE_BYTES = 512 << 20  # decoded parquet row groups a reader keeps, over all its open shards
TRACE = os.environ.get("HW3_TRACE_SAMPLES")  # a folder: the tests' record of which process read which sample


class BadSample(Exception):
    """This sample cannot be read (args[0]: the shard, the key and what is wrong)."""


class Prefetcher:
    """A process's fetches ahead, on daemon threads: an exit (a SIGTERM'd launch) does not wait for them. A fetch
    cut short leaves its `.part` file, which the next eviction removes (ShardFiles.evict)."""

    def __init__(self, threads: int = 2):
        self.threads, self.queue, self.pid = threads, queue.SimpleQueue(), None

    def submit(self, fetch, *args) -> None:
        if self.pid != os.getpid():  # the first use in this process (a fork has no threads of its parent's)
            self.queue, self.pid = queue.SimpleQueue(), os.getpid()
            for _ in range(self.threads):
                threading.Thread(target=self.work, daemon=True, name="hw3-prefetch").start()
        self.queue.put((fetch, args))

    def work(self) -> None:
        while True:
            fetch, args = self.queue.get()
            with contextlib.suppress(Exception):  # a failed fetch ahead is tried again, in earnest, when read
                fetch(*args)


PREFETCH = Prefetcher()


class ShardFiles:
    """Local copies of the shards one process reads (see the module's docstring)."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = folder, keep

    def local(self, shard: Shard, tries: int = TRIES, opener=None):
        """The shard's local path, or opener(path) called before anyone may evict it."""
        if is_local(shard.url):
            path = Path(shard.url.removeprefix("file://"))
            attempt(shard.url, lambda: path.stat(), tries=3)  # a network file system may show it late
            return opener(path) if opener else path
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / cache_name(shard.url)
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per shard, whichever worker asks first
            if not path.is_file():
                self.evict()
                fetch(shard.url, path, shard.bytes, tries, shard.crc32)
            os.utime(path)  # recently used
            return opener(path) if opener else path

    def evict(self) -> None:
        """Down to `keep` - 1 shards, the least recently used first, passing over any another worker holds."""
        for part in self.folder.glob(".*.part"):  # a fetch cut short (its process is gone)
            if not alive(int(part.name.rsplit(".", 2)[-2])):
                part.unlink(missing_ok=True)
        held = sorted((mtime, p) for p in self.folder.glob("*.shard") if (mtime := modified(p)) is not None)
        over = len(held) - self.keep + 1
        for _, path in held:
            if over <= 0:
                return
            with open(f"{path}.lock", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                path.unlink(missing_ok=True)
                over -= 1


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def modified(path: Path) -> Optional[float]:
    """Its modification time, None when another worker has just evicted it."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def cache_name(url: str) -> str:
    return f"{hashlib.sha256(url.encode()).hexdigest()[:20]}-{url.rsplit('/', 1)[-1][-40:]}.shard"


class TarShard:
    """A local WebDataset tar: samples in the order their keys first appear."""

    def __init__(self, path: Path, url: str):
        self.url, self.tar = url, tarfile.open(path)
        self.samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in self.tar.getmembers():
            if member.isfile():
                base = member.name.rsplit("/", 1)[-1]
                key = member.name[: len(member.name) - len(base)] + base.split(".", 1)[0]
                self.samples.setdefault(key, {})[base.split(".", 1)[-1].lower()] = member
        self.keys = list(self.samples)

    def read(self, k: int) -> tuple[bytes, int, str]:
        """(image bytes, label, key) of sample k."""
        key = self.keys[k] if k < len(self.keys) else f"#{k}"
        members = self.samples.get(key, {})
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
        if image is None:
            raise BadSample(f"shard {self.url}, key {key}: no image ({', '.join(members) or 'nothing'})")
        return self.tar.extractfile(image).read(), self.label(key, members), key

    def label(self, key: str, members: dict) -> int:
        try:
            if "cls" in members:
                return int(self.tar.extractfile(members["cls"]).read().decode().strip())
            if "json" in members:
                value = json.loads(self.tar.extractfile(members["json"]).read())
                return int(value["label"] if isinstance(value, dict) else value)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise BadSample(f"shard {self.url}, key {key}: unreadable label ({e})") from None
        raise BadSample(f"shard {self.url}, key {key}: no label (.cls or .json)")

    def close(self) -> None:
        self.tar.close()


class ParquetShard:
    """A local parquet file: row k found through the row groups' sizes. A row group is read (decompressed) whole,
    so the groups read are kept as Arrow tables, the least recently used dropped beyond `cache_bytes`: a window's
    samples come in shuffled order, and a shard that fits is read once."""

    def __init__(self, path: Path, url: str, image: str, label: str, cache_bytes: int):
        import pyarrow.parquet as pq

        self.url, self.image, self.label, self.cache_bytes = url, image, label, cache_bytes
        self.file = pq.ParquetFile(path)
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.ends = list(itertools.accumulate(sizes))
        self.groups: OrderedDict = OrderedDict()

    def read(self, k: int) -> tuple[bytes, int, str]:
        g, key = bisect.bisect_right(self.ends, k), f"row {k}"
        if g >= len(self.ends):
            raise BadSample(f"shard {self.url}, {key}: the file has {self.ends[-1] if self.ends else 0} rows")
        table = self.group(g)
        row = k - (self.ends[g - 1] if g else 0)
        cell, label = table.column(0)[row].as_py(), table.column(1)[row].as_py()
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise BadSample(f"shard {self.url}, {key}: no image bytes")
        if not isinstance(label, int) or isinstance(label, bool):
            raise BadSample(f"shard {self.url}, {key}: label {label!r} is not a class index")
        return data, label, key

    def group(self, g: int):
        if g not in self.groups:
            self.groups[g] = self.file.read_row_group(g, columns=[self.image, self.label])
            while len(self.groups) > 1 and sum(t.nbytes for t in self.groups.values()) > self.cache_bytes:
                self.groups.popitem(last=False)
        self.groups.move_to_end(g)
        return self.groups[g]

    def close(self) -> None:
        self.groups.clear()
        self.file.close()


class ShardReader:
    """Sample id -> (PIL image, label) for one split; picklable (what it opens, it opens in the process asking)."""

    def __init__(
        self, shards: list[Shard], kind: str, files: ShardFiles, image: str, label: str, mode: str, keep_open: int,
        classes: int,
    ):  # fmt: skip
        self.shards, self.kind, self.files, self.image, self.label, self.mode = shards, kind, files, image, label, mode
        self.keep_open = keep_open  # shards open at once (a tar's member list, a parquet file's row groups)
        self.classes = classes  # labels are 0 .. classes - 1
        self.starts = np.concatenate([[0], np.cumsum([s.samples for s in shards])]).astype(np.int64)
        self.opened: OrderedDict = OrderedDict()
        self.pid: Optional[int] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "opened": OrderedDict(), "pid": None}

    def prefetch(self, shards: list[int]) -> None:
        """Fetch these shards in the background (a remote set's next window, while the current one trains)."""
        if all(is_local(self.shards[s].url) for s in shards):
            return
        for s in shards:  # one try each: a shard that fails here is tried again, in earnest, when it is read
            PREFETCH.submit(self.files.local, self.shards[s], 1)

    def shard(self, s: int):
        if self.pid != os.getpid():  # a forked worker: the parent's open files are not its own
            self.opened, self.pid = OrderedDict(), os.getpid()
        if s not in self.opened:
            shard = self.shards[s]
            if self.kind == "tar":
                self.opened[s] = self.files.local(shard, opener=lambda path: TarShard(path, shard.url))
            else:
                budget = PARQUET_CACHE_BYTES // self.keep_open
                self.opened[s] = self.files.local(
                    shard, opener=lambda path: ParquetShard(path, shard.url, self.image, self.label, budget)
                )
            while len(self.opened) > self.keep_open:
                self.opened.popitem(last=False)[1].close()
        self.opened.move_to_end(s)
        return self.opened[s]

    def read(self, i: int) -> tuple[Image.Image, int]:
        if TRACE:  # the tests' record of every sample read: "<first shard's url> <id>" per line, a file per process
            with open(Path(TRACE) / f"rank{os.environ.get('RANK', '0')}.txt", "a") as f:
                f.write(f"{self.shards[0].url} {i}\n")
        s = bisect.bisect_right(self.starts, i) - 1
        data, label, key = self.shard(s).read(self.shards[s].offset + i - int(self.starts[s]))
        if not 0 <= label < self.classes:  # (a loss would fail on it, on a GPU with a device-side assert)
            raise BadSample(
                f"shard {self.shards[s].url}, key {key}: label {label} is not one of the {self.classes} classes"
            )
        try:
            with Image.open(io.BytesIO(data)) as img:
                return in_mode(img, self.mode), label
        except (OSError, ValueError, SyntaxError) as e:
            raise BadSample(f"shard {self.shards[s].url}, key {key}: {type(e).__name__}: {e}") from None
