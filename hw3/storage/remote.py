"""Files that live anywhere fsspec reaches: a local folder, `https://`, `hf://datasets/...`, `s3://`, `gs://`, ...

- `expand`: a brace pattern (`train-{0000..0127}.tar`, `{a,b}`) or a glob into the URLs it names, sorted.
- `fetch`: one file into a local path (atomically: a reader never sees half of it), tried again with a growing
  pause when the transfer fails, then one line naming the URL (UserError).
- `is_local`: a path this machine reads directly (nothing to fetch).

fsspec imports the backend a protocol needs (aiohttp for https, s3fs, gcsfs, huggingface_hub); a missing one is
one line saying what to install.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path
from typing import Optional

from hw3.errors import UserError
from hw3.storage.manifest import crc32

BRACE = re.compile(r"\{([^{}]*)\}")
TRIES, FIRST_PAUSE_S = 5, 0.5


def expand_braces(pattern: str) -> list[str]:
    """`a-{00..02}.tar` -> a-00.tar, a-01.tar, a-02.tar (zero padding kept); `{x,y}` -> x, y."""
    parts, choices = BRACE.split(pattern), []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            choices.append([part])
            continue
        numbers = re.fullmatch(r"(\d+)\.\.(\d+)", part)
        if numbers:
            low, high = numbers.groups()
            width = len(low) if low.startswith("0") else 0
            choices.append([str(n).zfill(width) for n in range(int(low), int(high) + 1)])
        else:
            choices.append(part.split(","))
    return ["".join(combo) for combo in itertools.product(*choices)]


def filesystem(url: str):
    """(fsspec filesystem, path within it) for `url`."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise UserError(f"cannot read {url}: {' '.join(str(e).split())[:200]}") from None


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def expand(pattern: str) -> list[str]:
    """The URLs a brace pattern and/or glob names (a plain URL names itself), sorted within each expansion."""
    found = []
    for each in expand_braces(pattern):
        if any(c in each for c in "*?["):
            fs, path = filesystem(each)
            protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
            matches = sorted(fs.glob(path))
            found += [m if is_local(each) else f"{protocol}://{m}" for m in matches]
        else:
            found.append(each)
    return found


def join(base: str, name: str) -> str:
    """`name` relative to `base` (a folder URL or path), unless it is a URL or an absolute path itself."""
    if "://" in name or name.startswith("/"):
        return name
    return base.rstrip("/") + "/" + name


def read_bytes(url: str, tries: int = TRIES) -> bytes:
    """A whole (small) file, with the same retries as fetch."""
    return attempt(url, lambda: _read(url), tries)


def _read(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def fetch(
    url: str, dest: Path, expected_bytes: Optional[int] = None, tries: int = TRIES, expected_crc32: Optional[str] = None
) -> Path:
    """`url` into `dest` (a temporary name, then renamed), retried with backoff; one line when it cannot be had.
    A file of another size than `expected_bytes` (a transfer cut short) or another CRC-32 (damaged on the way)
    counts as a failed try."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")

    def once() -> None:
        fs, path = filesystem(url)
        fs.get_file(path, str(tmp))
        size = tmp.stat().st_size
        if expected_bytes is not None and size != expected_bytes:
            raise OSError(f"got {size:,} bytes of {expected_bytes:,}")
        if expected_crc32 is not None and crc32(tmp) != expected_crc32:
            raise OSError(f"its CRC-32 is {crc32(tmp)}, the index says {expected_crc32}")
        os.replace(tmp, dest)

    try:
        attempt(url, once, tries)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def attempt(url: str, action, tries: int):
    """`action()`, tried `tries` times with pauses of 0.5, 1, 2, ... s (a missing file too: an object store or a
    network file system may show it late); the last failure is one UserError line."""
    for n in range(tries):
        try:
            return action()
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - network and storage errors come in many types; all mean "not now"
            if n == tries - 1:
                reason = " ".join(str(e).split())[:200] or type(e).__name__
                raise UserError(f"cannot fetch {url} ({type(e).__name__}: {reason}; tried {n + 1} times)") from None
            time.sleep(FIRST_PAUSE_S * 2**n)
