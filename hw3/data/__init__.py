"""The input pipeline: where images come from (sources: one builder per `data.name`, torchvision's datasets, image
folders, the Hub; small same-size sets decoded once into memory through a cache), how they are augmented
(transforms), and how each process gets its batches (loaders); here, the model's input spec and `Data`, the
train / val / test batches of one process. `check_data` checks the recipe's `data` section.

It may import hw3.errors, hw3.config and hw3.storage; torchvision and `datasets` are imported where they are used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from hw3.config import DataConfig
from hw3.config.rules import at_least, between, check_section, require
from hw3.data import bundled, hub_datasets, image_folders, shards, torchvision_datasets  # noqa: E402, F401, I001 (they register)
from hw3.data.loaders import DeviceLoader, SampleDataset, WorkerLoader, eval_positions, train_positions
from hw3.data.shards import plan
from hw3.data.sources import DATASETS, Source, Split, load_source
from hw3.data.transforms import (
    AUTO_AUGMENTS,
    CROPS,
    FLIPS,
    POLICIES,
    InputStage,
    auto_augment,
    channel_stats,
    draw,
    photo_transform,
)
from hw3.errors import UserError

__all__ = ["Data", "InputSpec", "Source", "check_data", "open_source", "resolve_input"]

LOADERS = ("auto", "device", "dataloader")
RULES = {
    "val_fraction": between(0, 1, closed_low=False),
    **{
        k: at_least(1)
        for k in ("image_size", "num_classes", "channels", "max_train_samples", "max_eval_samples", "prefetch_factor")
    },
    "num_workers": at_least(0),
    "crop_padding": at_least(0),
    "mean": ((lambda v: len(v) in (1, 3)), "give 1 or 3 values"),
    "std": ((lambda v: len(v) in (1, 3) and min(v) > 0), "give 1 or 3 values > 0"),
    "label_noise": between(0, 1),
    "shuffle_shards": at_least(1),
    "cache_shards": at_least(2),
    "max_bad_samples": at_least(0),
}


def check_data(cfg: DataConfig) -> None:
    """The `data` section: ranges, choices, the dataset's name, what a source needs."""
    check_section(cfg, "data", RULES, {"loader": LOADERS, "augment": POLICIES, "auto_augment": AUTO_AUGMENTS})
    DATASETS.get(cfg.name, "data.name")
    require(cfg.name != "hf" or bool(cfg.path), "data.path: required with data.name=hf (a Hub id or a folder)")
    require(
        cfg.name != "shards" or bool(cfg.path), "data.path: required with data.name=shards (a folder, URL or pattern)"
    )
    require(not cfg.streaming or cfg.name == "hf", "data.streaming: only with data.name=hf (data.name=shards streams)")
    streamed = cfg.name == "shards" or cfg.streaming
    require(not (streamed and cfg.label_noise), "data.label_noise: not with a streamed dataset (its labels are read "
            "one sample at a time)")  # fmt: skip
    require(
        cfg.cache_shards >= 2 * cfg.shuffle_shards,
        f"data.cache_shards: at least 2 x data.shuffle_shards ({2 * cfg.shuffle_shards}): the window being read and "
        f"the next one, fetched ahead, got {cfg.cache_shards}",
    )


def open_source(cfg: DataConfig, smoke: bool = False) -> Source:
    """The dataset `data.name` names, with its splits and caps; in smoke mode a synthetic stand-in of its shape."""
    return bundled.smoke_source(cfg) if smoke else load_source(cfg)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEVICE_MEMORY_SHARE = 0.25  # the device path may use this share of GPU memory for a dataset
CROP_PCT = 0.875  # timm's default: photos are evaluated resized to size / 0.875, then center-cropped


@dataclass
class InputSpec:
    """What the model is fed."""

    size: int  # px (square)
    channels: int  # 1 or 3
    mean: list[float]  # per channel, in [0, 1]
    std: list[float]
    crop_pct: float = CROP_PCT  # evaluation of photos: resize to size / crop_pct, then center crop
    size_from: str = ""  # what decided `size`, for the console

    @classmethod
    def of_card(cls, card: dict) -> "InputSpec":
        """What a trained model (its model card, hw3.models.card) was fed."""
        return cls(card["image_size"], card["in_chans"], card["mean"], card["std"], card["crop_pct"])


def resolve_input(cfg: DataConfig, src: Source, pretrained: Optional[dict]) -> InputSpec:
    """Size and normalization: the recipe's values, else the pretrained model's, else the dataset's own. The size
    rule is the same for images in memory and images read from disk: their own side when they share one."""
    pretrained = pretrained or {}
    pretrained_size = (pretrained.get("input_size") or (None, None, None))[-1]
    size, size_from = next(
        (value, why)
        for value, why in (
            (cfg.image_size, "data.image_size"),
            (pretrained_size, "the pretrained weights' input size"),
            (src.native_size, "the images' own size"),
            (224, "224, as the images differ in size; data.image_size sets another"),
        )
        if value
    )
    channels = 3 if pretrained else src.channels
    if cfg.mean is not None or cfg.std is not None:
        mean, std = cfg.mean or [0.5] * channels, cfg.std or [0.25] * channels
    elif pretrained:
        mean, std = list(pretrained["mean"]), list(pretrained["std"])
    elif src.stats is not None:
        mean, std = src.stats
    elif src.in_memory:
        mean, std = channel_stats(src.train.images)
    else:  # photos read from disk: ImageNet statistics describe them well enough
        mean, std = list(IMAGENET_MEAN[:channels]), list(IMAGENET_STD[:channels])
    for key, values in (("data.mean", mean), ("data.std", std)):
        if len(values) not in (1, channels):
            raise UserError(f"{key}: {len(values)} values for a model fed {channels}-channel images")
    return InputSpec(size, channels, list(mean), list(std), pretrained.get("crop_pct", CROP_PCT), size_from)


class Data:
    """Train / val / test batches for this process, already on the device and normalized."""

    def __init__(
        self,
        cfg: DataConfig,
        src: Source,
        spec: InputSpec,
        device: torch.device,
        world: int,
        rank: int,
        seed: int,
        channels_last: bool = False,
        drop_last: bool = False,
    ):
        self.src, self.spec, self.world, self.rank, self.seed = src, spec, world, rank, seed
        self.drop_last = drop_last  # train only on full batches (CUDA graphs replay one batch shape)
        self.streamed = getattr(src.train, "streamed", False)
        self.window = cfg.shuffle_shards  # a streamed set's shuffle window, in shards
        self.regrouped: Optional[tuple[int, list]] = None  # (epoch, what is left of it) after a change of world
        self.saved = dict(world=world, regrouped=None)  # the checkpoint's state_dict(), once one is loaded
        self.policy = cfg.augment or src.augment
        self.padding = src.crop_padding if cfg.crop_padding is None else cfg.crop_padding
        self.on_device, self.path_reason = choose_device_path(cfg, src, self.policy, device)
        self.workers, self.workers_why = (
            (cfg.num_workers, "data.num_workers") if cfg.num_workers is not None else (default_workers(device, world))
        )
        self.stage = InputStage(spec.size, spec.channels, spec.mean, spec.std, device, channels_last)
        self.loaders = {}
        for name, split in (("train", src.train), ("val", src.val), ("test", src.test)):
            if split is not None:
                self.loaders[name] = self._loader(cfg, split, spec, device, train=name == "train", keep=name != "test")

    def _loader(self, cfg: DataConfig, split: Split, spec: InputSpec, device, train: bool, keep: bool):
        if self.on_device:
            return DeviceLoader(split, device, self.policy, self.padding)
        if split.images is None or (train and self.policy == "resized_crop_flip"):
            crop_pct = 1.0 if self.src.evaluated_whole else spec.crop_pct  # small images: evaluated whole
            transform = photo_transform(self.policy, spec.size, self.padding, crop_pct, cfg.auto_augment, train)
        else:  # in memory: crop and flip come with the sample's key; only auto-augment remains per sample
            transform = auto_augment(cfg.auto_augment) if train else None
        return WorkerLoader(
            SampleDataset(split, self.policy, self.padding, transform),
            device,
            self.workers,
            pin_memory=device.type == "cuda" if cfg.pin_memory is None else cfg.pin_memory,
            persistent_workers=keep if cfg.persistent_workers is None else cfg.persistent_workers,
            prefetch_factor=cfg.prefetch_factor,
            seed=self.seed,
        )

    @property
    def num_train(self) -> int:
        return len(self.src.train)

    def batch_sizes(self, batch_size: int, epoch: Optional[int] = None) -> list[int]:
        """Images per process in each training batch of an epoch at global batch `batch_size` (the last one may be
        smaller; with drop_last it is left out). A streamed epoch regrouped for another number of processes has
        what was left of it."""
        total = self.num_train
        if self.regrouped is not None and self.regrouped[0] == epoch:
            total = sum(b - a for a, b in self.regrouped[1])
        per_process, shard = batch_size // self.world, math.ceil(total / self.world)
        sizes = [per_process] * (shard // per_process)
        if shard % per_process and not self.drop_last:
            sizes.append(shard % per_process)
        return sizes

    def train_batches(
        self, epoch: int, batch_size: int, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch `epoch` at global batch `batch_size`, from batch `start_batch` on (mid-epoch resume)."""
        per_process = batch_size // self.world
        end = sum(self.batch_sizes(batch_size, epoch))
        if self.streamed:
            yield from self.streamed_train(epoch, per_process, start_batch * per_process, end)
            return
        positions = train_positions(self.num_train, self.world, self.rank, self.seed, epoch)[
            start_batch * per_process : end
        ]
        augmenting = self.policy != "none" or not self.on_device
        params = draw(self.num_train, self.seed, epoch, self.padding) if augmenting else None
        for x, y in self.loaders["train"].batches(positions, per_process, params):
            yield self.stage(x), y

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(getattr(self.src, split))
        per_process = max(1, batch_size // self.world)
        if self.streamed:
            keys = plan.eval_keys(n, self.world, self.rank, per_process)
            count = math.ceil(
                len(range(self.rank * math.ceil(n / self.world), n)[: math.ceil(n / self.world)]) / per_process
            )
            batches = self.loaders[split].stream(keys, count)
        else:
            batches = self.loaders[split].batches(eval_positions(n, self.world, self.rank), per_process, None)
        for x, y in batches:
            yield self.stage(x), y

    def streamed_train(self, epoch: int, per_process: int, skip: int, end: int):
        """A streamed epoch: this process's piece of the epoch's order (hw3.data.shards.plan), from sample `skip`
        to `end`; the next window's shards fetched while the current one trains."""
        split = self.src.train
        order = plan.EpochOrder(split.counts, self.seed, epoch, self.window)
        segment = self.regrouped[1] if self.regrouped is not None and self.regrouped[0] == epoch else [(0, order.total)]
        ranges = plan.piece(segment, self.world, self.rank)

        def ahead(w: int) -> None:  # the shards this process will read in the next window
            if w + 1 < len(order.windows):
                split.reader.prefetch(order.shards_read(w + 1, ranges))

        keys = plan.train_keys(order, ranges, skip, end - skip, per_process, ahead)
        for x, y in self.loaders["train"].stream(keys, math.ceil((end - skip) / per_process)):
            yield self.stage(x), y

    def unreadable(self, split: str = "train") -> list[str]:
        """What was wrong with each sample of `split` skipped since the last call (a streamed set's damaged ones)."""
        loader = self.loaders.get(split)
        found = getattr(loader, "skipped", [])  # (only the per-sample loader reads from disk, so only it skips)
        if found:
            loader.skipped = []
        return found

    def state_dict(self) -> dict:
        """A streamed epoch regrouped for another number of processes: what was left of it (a checkpoint keeps it)."""
        return dict(world=self.world, regrouped=list(self.regrouped) if self.regrouped else None)

    def load_state_dict(self, state: dict) -> None:
        self.saved = state

    def resume_at(self, epoch: int, batch: int, batch_size: int) -> int:
        """The batch a resumed epoch continues from. A streamed run resumed by another number of processes in the
        middle of an epoch goes on with what the old processes had not reached of their pieces, cut again for
        this number (every remaining sample once; hw3.data.shards.plan): from batch 0 of that."""
        saved = self.saved
        old = saved["regrouped"]
        self.regrouped = (old[0], [tuple(r) for r in old[1]]) if old and old[0] == epoch else None
        if saved["world"] == self.world or batch == 0:
            return batch
        segment = self.regrouped[1] if self.regrouped else [(0, self.num_train)]
        consumed = batch * (batch_size // saved["world"])
        self.regrouped = (epoch, plan.remainder(segment, saved["world"], consumed))
        return 0


def choose_device_path(cfg: DataConfig, src: Source, policy: str, device: torch.device) -> tuple[bool, str]:
    """(True when batches come from a device-resident copy of the data, why). `data.loader`: auto picks the device
    path when it can."""
    blockers = []
    if not src.in_memory:
        blockers.append(src.lazy_reason or f"{cfg.name} is read from disk image by image")
    if policy not in ("none",) + CROPS + FLIPS:
        blockers.append(f"data.augment={policy} runs per sample in torchvision")
    if cfg.auto_augment:
        blockers.append(f"data.auto_augment={cfg.auto_augment} runs per sample in torchvision")
    if not blockers and device.type == "cuda":
        nbytes = sum(s.images.numel() for s in (src.train, src.val, src.test) if s is not None)
        budget = DEVICE_MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory
        if nbytes > budget:
            blockers.append(f"the images take {nbytes / 2**30:.1f} GiB, over {DEVICE_MEMORY_SHARE:.0%} of the GPU")
    if cfg.loader == "device" and blockers:
        raise UserError(f"data.loader=device is not possible: {'; '.join(blockers)}; use data.loader=auto")
    if cfg.loader == "dataloader":
        return False, "data.loader=dataloader"
    if blockers:
        return False, blockers[0]
    return True, f"data.loader={cfg.loader}: the images fit in memory"


def default_workers(device: torch.device, world: int) -> tuple[int, str]:
    """(DataLoader workers per process, why): the CPUs a process can spare. On a GPU up to 8 per process decode
    while the GPU computes; on a CPU the training process needs its cores for the model, so workers get what is
    left of half of them (2 processes on 2 cores: none, each process decodes its own batches)."""
    cpus = os.cpu_count() or 1
    per_process = max(1, cpus // max(1, world))
    if device.type == "cuda":
        return min(8, per_process), f"{cpus} CPUs for {world} process(es), up to 8 each"
    workers = min(2, per_process // 2)
    return workers, f"{cpus} CPU cores for {world} process(es) that also compute; data.num_workers sets another"
