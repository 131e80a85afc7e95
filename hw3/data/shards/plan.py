"""The order a streamed epoch visits its samples, and which process sees which: a pure function of the shards'
sample counts, the seed and the epoch, computed a window at a time (memory bounded by a window, whatever the
dataset's size), so a resumed run computes exactly what an uninterrupted one did.

- The epoch's order P: the shards in a seeded order (a new one every epoch); each run of `window` consecutive
  shards of it is a window, whose samples are visited in a seeded random order. (Samples are shuffled within a
  window, not across the whole set: write shards shuffled, as `python -m hw3.shards` does.)
- A segment: the positions of P still to visit, as ranges. At an epoch's start it is all of P. W processes cut
  it into W contiguous pieces of ceil(T / W) positions: process r reads the shards of piece r only. The last
  piece is made up to length by the segment's first positions again (as torch's DistributedSampler pads), so
  every process takes the same number of batches: every sample once, and at most W - 1 of them twice.
- When a run resumes mid-epoch on another number of processes, what the old pieces had not reached becomes the
  new segment (`remainder`), cut again for the new W: every remaining sample exactly once more, in P's order
  within each old piece, the pieces one after another (the order of the remainder is not the one an
  uninterrupted run would have taken).

Sample ids are global: shard s's k-th sample (in index order) is `starts[s] + k`.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

MASK = (1 << 64) - 1


def mix64(*values: int) -> int:
    """A well-mixed 64-bit number of the values (splitmix64 steps), for seeds derived from (seed, epoch, ...)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & MASK)) * 0xBF58476D1CE4E5B9 & MASK
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & MASK
        x ^= x >> 29
    return x


def sample_seeds(seed: int, epoch: int, ids: np.ndarray) -> np.ndarray:
    """A per-sample seed (for its augmentation) for each id, vectorized splitmix64 of (seed, epoch, id)."""
    with np.errstate(over="ignore"):
        x = np.full(ids.shape, mix64(seed, epoch), dtype=np.uint64) ^ ids.astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(2)).astype(np.int64)  # < 2**62, as hw3's other per-sample seeds


class EpochOrder:
    """P for one epoch: `ids(start, stop)` are the global sample ids at positions [start, stop) of P."""

    def __init__(self, counts: tuple[int, ...], seed: int, epoch: int, window: int):
        self.seed, self.epoch = seed, epoch
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # id of each shard's first sample
        order = np.random.default_rng(mix64(seed, epoch, 0x5A4D)).permutation(len(counts))
        self.windows = [order[i : i + window] for i in range(0, len(order), window)]
        sizes = [int(sum(counts[s] for s in w)) for w in self.windows]
        self.window_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # positions in P
        self.total = int(self.window_starts[-1])
        self.cache: dict[int, np.ndarray] = {}

    def window_ids(self, w: int) -> np.ndarray:
        """The ids of window w in their seeded order (the last two windows asked for are kept)."""
        if w not in self.cache:
            ids = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in self.windows[w]])
            self.cache = {k: v for k, v in self.cache.items() if k == w - 1}
            self.cache[w] = ids[np.random.default_rng(mix64(self.seed, self.epoch, w + 1)).permutation(len(ids))]
        return self.cache[w]

    def ids(self, start: int, stop: int) -> np.ndarray:
        out, w = [], int(np.searchsorted(self.window_starts, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.window_starts[w + 1]))
            base = int(self.window_starts[w])
            out.append(self.window_ids(w)[start - base : end - base])
            start, w = end, w + 1
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def shards_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, ids, side="right") - 1

    def shards_read(self, w: int, ranges: "Segment") -> list[int]:
        """The shards of window w that a process reading the positions `ranges` of P needs."""
        lo, hi = int(self.window_starts[w]), int(self.window_starts[w + 1])
        ids = [self.ids(max(a, lo), min(b, hi)) for a, b in ranges if a < hi and b > lo]
        return np.unique(self.shards_of(np.concatenate(ids))).tolist() if ids else []


Segment = list[tuple[int, int]]  # ranges [a, b) of positions of P, in the order they are visited


def piece(segment: Segment, world: int, rank: int) -> Segment:
    """The ranges of process `rank`'s piece of `segment` cut for `world` processes (all of one length: the last
    one made up to it from the segment's start)."""
    total = sum(b - a for a, b in segment)
    length = math.ceil(total / world)
    first, last = rank * length, (rank + 1) * length
    return take(segment, first, min(last, total)) + take(segment, 0, max(0, last - total))


def take(segment: Segment, first: int, last: int) -> Segment:
    """The ranges of the segment's flattened positions [first, last)."""
    out, offset = [], 0
    for a, b in segment:
        lo, hi = max(first, offset), min(last, offset + b - a)
        if lo < hi:
            out.append((a + lo - offset, a + hi - offset))
        offset += b - a
    return out


def remainder(segment: Segment, world: int, consumed: int) -> Segment:
    """What `world` processes had not reached of their pieces after `consumed` samples each (the made-up ones
    left out): the segment a resumed run on another number of processes goes on with."""
    total = sum(b - a for a, b in segment)
    length, out = math.ceil(total / world), []
    for rank in range(world):
        start = rank * length + consumed
        out += take(segment, start, min((rank + 1) * length, total))
    return out


def positions(ranges: Segment, skip: int) -> Iterator[tuple[int, int]]:
    """The ranges again, without their first `skip` positions."""
    for a, b in ranges:
        if skip >= b - a:
            skip -= b - a
            continue
        yield a + skip, b
        skip = 0


CHUNK = 4096  # ids made at a time


def train_keys(order: EpochOrder, ranges: Segment, skip: int, count: int, batch: int, on_window=None):
    """The DataLoader keys of a process's training batches: `count` samples of its piece `ranges` after the
    first `skip`, `batch` at a time, each key (id, -1, -1, False, seed) (no crop/flip draws: streamed images are
    read from disk and augmented per sample by the seed). `on_window(w)` is told when the order enters window w
    (to fetch the next window's shards ahead)."""
    current, window, left = [], -1, count
    for a, b in positions(ranges, skip):
        for lo in range(a, b, CHUNK):
            if left <= 0:
                break
            hi = min(b, lo + CHUNK, lo + left)
            w = int(np.searchsorted(order.window_starts, lo, side="right")) - 1
            if w != window and on_window is not None:
                window = w
                on_window(w)
            ids = order.ids(lo, hi)
            seeds = sample_seeds(order.seed, order.epoch, ids)
            for i, s in zip(ids.tolist(), seeds.tolist(), strict=True):
                current.append((i, -1, -1, False, s))
                if len(current) == batch:
                    yield current
                    current = []
            left -= hi - lo
    if current:
        yield current


def eval_keys(n: int, world: int, rank: int, batch: int):
    """Evaluation keys: process `rank` takes a contiguous part of the split in index order (its own shards), no
    sample twice: the counts summed over the processes are exact."""
    length = math.ceil(n / world)
    ids = range(rank * length, min(n, (rank + 1) * length))
    for start in range(0, len(ids), batch):
        yield [(i, -1, -1, False, 0) for i in ids[start : start + batch]]
