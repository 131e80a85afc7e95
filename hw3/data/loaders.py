"""Batches for one process: which indices it sees each epoch, and two ways to turn them into tensors.

Sharding follows torch's DistributedSampler: a permutation seeded by (seed, epoch), padded by wrapping to a
multiple of the number of processes, process r taking positions r, r + W, r + 2W, ... With per-process batch
b = B / W, the union of the processes' k-th batches is exactly the k-th global batch a single process with
batch B would see. Evaluation shards without padding, so counts are exact when summed over processes.

- `DeviceLoader`: the whole split as one uint8 tensor on the training device; batches are gathered by index
  and augmented there (no worker processes, no host-to-device copies per step).
- `WorkerLoader`: a torch DataLoader whose workers decode/augment one sample at a time (photos, big sets).
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader

from hw3.data.shards.reader import BadSample
from hw3.data.sources import Split
from hw3.data.transforms import AugParams, crop_flip, epoch_seed
from hw3.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]  # (uint8 images on the device, int64 labels on the device)


def train_positions(n: int, world: int, rank: int, seed: int, epoch: int) -> torch.Tensor:
    """Dataset indices process `rank` trains on in `epoch`, in order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    padded = math.ceil(n / world) * world
    if padded > n:
        perm = torch.cat([perm, perm[: padded - n]])
    return perm[rank::world]


def eval_positions(n: int, world: int, rank: int) -> torch.Tensor:
    return torch.arange(rank, n, world)


class DeviceLoader:
    def __init__(self, split: Split, device: torch.device, policy: str, padding: int):
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.policy, self.padding, self.device = policy, padding, device

    def batches(self, indices: torch.Tensor, batch: int, params: Optional[AugParams]) -> Iterator[Batch]:
        indices = indices.to(self.device)
        params = params.to(self.device) if params is not None else None
        for start in range(0, len(indices), batch):
            idx = indices[start : start + batch]
            x = self.images[idx]
            if params is not None:
                x = crop_flip(x, params.dy[idx], params.dx[idx], params.flip[idx], self.policy, self.padding)
            yield x, self.labels[idx]


class SampleDataset(torch.utils.data.Dataset):
    """Decodes and augments one sample from a key (index, dy, dx, flip, seed); runs in DataLoader workers."""

    def __init__(self, split: Split, policy: str, padding: int, transform=None):
        self.split, self.policy, self.padding, self.transform = split, policy, padding, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        i, dy, dx, flip, seed = key
        if self.split.images is not None:
            x, label = self.split.images[i], int(self.split.labels[i])
            if dy >= 0:  # dy < 0 marks "no augmentation" (evaluation)
                x = crop_flip(
                    x[None], torch.tensor([dy]), torch.tensor([dx]), torch.tensor([flip]), self.policy, self.padding
                )[0]
        elif getattr(self.split, "streamed", False):
            try:
                x, label = self.split.read(i)
            except BadSample as e:  # skipped and counted by the loader
                return Unreadable(str(e))
        else:
            x, label = self.split.reader(i), int(self.split.labels[i])
        if self.transform is not None:
            x = seeded(seed, self.transform, x)  # per-sample RNG: the same draw whichever worker runs it
        return x, label


class Unreadable:
    """A sample that could not be read (a streamed set's damaged sample), in place of it in a batch."""

    def __init__(self, message: str):
        self.message = message


def collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A batch of the readable samples, and what was wrong with the others."""
    skipped = [item.message for item in items if isinstance(item, Unreadable)]
    good = [item for item in items if not isinstance(item, Unreadable)]
    if not good:
        raise UserError(f"every sample of a batch is unreadable ({skipped[0]}, ...)")
    x, y = torch.utils.data.default_collate(good)
    return x, y, skipped


def seeded(seed: int, transform, x):
    """transform(x) with torch's CPU generator seeded by `seed`, the generator's state put back afterwards (so a
    training process that decodes its own batches keeps its own random stream). The same draws as
    `torch.random.fork_rng` + `torch.manual_seed`, which cost 390 µs a sample: while CUDA is not initialised
    (every CPU run, every DataLoader worker) manual_seed queues a lazy CUDA seed that formats a stack trace."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        return transform(x)
    finally:
        generator.set_state(state)


class KeyBatches:
    """The DataLoader's batch sampler; `set` swaps in the next epoch's keys (persistent workers keep running), or
    `stream` a generator of them (a streamed set: the keys are made as they are needed)."""

    def __init__(self):
        self.keys: Iterable[list[tuple]] = []
        self.count = 0

    def stream(self, batches: Iterator[list[tuple]], count: int) -> None:
        self.keys, self.count = batches, count

    def set(self, indices: torch.Tensor, batch: int, params: Optional[AugParams]) -> None:
        idx = indices.tolist()
        if params is None:
            rows = [(i, -1, -1, False, 0) for i in idx]
        else:
            cols = [t[indices].tolist() for t in (params.dy, params.dx, params.flip, params.seed)]
            rows = list(zip(idx, *cols, strict=True))
        self.keys = [rows[s : s + batch] for s in range(0, len(rows), batch)]
        self.count = len(self.keys)

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return self.count


class WorkerLoader:
    def __init__(
        self,
        dataset: SampleDataset,
        device: torch.device,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        prefetch_factor: Optional[int],
        seed: int,
    ):
        self.device, self.sampler = device, KeyBatches()
        self.skipped: list[str] = []  # unreadable samples met since the last look (their messages)
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(seed),
        )

    def batches(self, indices: torch.Tensor, batch: int, params: Optional[AugParams]) -> Iterator[Batch]:
        self.sampler.set(indices, batch, params)
        yield from self.load()

    def stream(self, keys: Iterator[list[tuple]], count: int) -> Iterator[Batch]:
        self.sampler.stream(keys, count)
        yield from self.load()

    def load(self) -> Iterator[Batch]:
        for x, y, skipped in self.loader:
            self.skipped += skipped
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
