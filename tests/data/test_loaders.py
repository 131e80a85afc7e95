"""hw3.data loaders: sharding like DistributedSampler, seeding, mid-epoch resume, and the device path and the
DataLoader path producing the same batches."""

import pytest
import torch

from hw3.config import DataConfig
from hw3.data import Data, InputSpec, resolve_input
from hw3.data.loaders import eval_positions, train_positions
from hw3.data.sources import Source, Split, load_source
from hw3.errors import UserError


def cifar_like(n=50, size=8):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    split = Split(torch.arange(n) % 10, images)
    return Source(split, split, None, [str(i) for i in range(10)], 3, augment="crop_flip", crop_padding=2)


def make(src, loader, world=1, rank=0, seed=0, **data):
    cfg = DataConfig(name="synthetic", loader=loader, num_workers=0, **data)
    return Data(cfg, src, InputSpec(8, 3, [0.5] * 3, [0.25] * 3), torch.device("cpu"), world, rank, seed)


def batches(data, epoch=0, size=8, start=0):
    return [(x.clone(), y.clone()) for x, y in data.train_batches(epoch, size, start)]


def test_device_path_and_dataloader_path_give_identical_batches():
    src = cifar_like()
    device, loader = make(src, "device"), make(src, "dataloader")
    assert device.on_device and not loader.on_device
    for (xa, ya), (xb, yb) in zip(batches(device), batches(loader), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_dataloader_workers_do_not_change_the_batches():
    src = cifar_like()
    cfg = DataConfig(name="synthetic", loader="dataloader", num_workers=2, persistent_workers=True, prefetch_factor=3)
    data = Data(cfg, src, InputSpec(8, 3, [0.5] * 3, [0.25] * 3), torch.device("cpu"), 1, 0, 0)
    dl = data.loaders["train"].loader
    assert dl.num_workers == 2 and dl.persistent_workers and dl.prefetch_factor == 3 and not dl.pin_memory
    for _ in range(2):  # twice through the same persistent workers
        for (xa, _), (xb, _) in zip(batches(data), batches(make(src, "device")), strict=True):
            assert torch.equal(xa, xb)


def test_epochs_differ_and_seeds_reproduce():
    src = cifar_like()
    a, b = make(src, "device", seed=3), make(src, "device", seed=3)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(batches(a, 1), batches(b, 1), strict=True))
    assert not torch.equal(batches(a, 1)[0][0], batches(a, 2)[0][0])


def test_mid_epoch_start_equals_the_rest_of_the_epoch():
    for loader in ("device", "dataloader"):
        data = make(cifar_like(), loader)
        whole, tail = batches(data, 4), batches(data, 4, start=3)
        assert len(tail) == len(whole) - 3
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(whole[3:], tail, strict=True))


def test_two_processes_split_each_global_batch():
    n, world, per_process = 50, 2, 4
    shards = [train_positions(n, world, r, seed=0, epoch=5) for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == 25
    one = train_positions(n, 1, 0, seed=0, epoch=5)
    for k in range(len(make(cifar_like(n), "device", world=world).batch_sizes(2 * per_process))):
        union = torch.cat([s[k * per_process : (k + 1) * per_process] for s in shards]).sort().values
        assert torch.equal(union, one[k * 2 * per_process : (k + 1) * 2 * per_process].sort().values)
    evals = [eval_positions(51, 2, r) for r in range(2)]
    assert len(evals[0]) + len(evals[1]) == 51 and not set(evals[0].tolist()) & set(evals[1].tolist())


def test_two_processes_see_different_augmented_images_of_the_same_global_batch():
    src = cifar_like()
    single = batches(make(src, "device"), size=8)
    ranks = [batches(make(src, "device", world=2, rank=r), size=8) for r in range(2)]
    first = torch.cat([ranks[0][0][0], ranks[1][0][0]])
    assert sorted(map(bytes, first.flatten(1).numpy())) == sorted(map(bytes, single[0][0].flatten(1).numpy()))


def test_auto_choice_and_explicit_device_refusals():
    src = cifar_like()
    assert make(src, "auto").on_device
    assert not make(src, "auto", auto_augment="randaugment").on_device
    with pytest.raises(UserError, match="data.loader=device is not possible"):
        make(src, "device", augment="resized_crop_flip")


def test_resolve_input_prefers_recipe_then_pretrained_then_dataset():
    src = load_source(DataConfig(name="digits"))
    own = resolve_input(DataConfig(), src, None)
    assert own.size == 8 and own.channels == 1 and 0.2 < own.mean[0] < 0.4
    pre = resolve_input(
        DataConfig(), src, {"input_size": (3, 224, 224), "mean": (0.1, 0.2, 0.3), "std": (1, 1, 1), "crop_pct": 0.9}
    )
    assert pre.size == 224 and pre.channels == 3 and pre.mean == [0.1, 0.2, 0.3] and pre.crop_pct == 0.9
    mine = resolve_input(DataConfig(image_size=16, mean=[0.5], std=[0.2]), src, None)
    assert mine.size == 16 and mine.mean == [0.5]
    with pytest.raises(UserError, match="data.mean: 3 values for a model fed 1-channel images"):
        resolve_input(DataConfig(mean=[0.1, 0.2, 0.3]), src, None)


def test_per_sample_draws_are_todays_and_leave_the_trainings_random_stream_alone():
    """Each sample's augmentation is drawn from torch's generator seeded by the sample's key: exactly what
    `fork_rng` + `torch.manual_seed(seed)` gave (so resumes and the two input paths stay equal across the change
    that made it 30x cheaper), and the caller's random stream is where it was."""
    import torch
    from PIL import Image

    from hw3.data.loaders import SampleDataset
    from hw3.data.sources import Split
    from hw3.data.transforms import auto_augment, photo_transform

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 40, 48), generator=gen, dtype=torch.uint8)
    photos = [Image.fromarray(i.permute(1, 2, 0).numpy()) for i in images]
    cases = [
        (Split(torch.arange(4), reader=lambda i: photos[i]), "resized_crop_flip", 0,
         photo_transform("resized_crop_flip", 24, 0, 0.875, "randaugment", True),
         lambda i: (i, 0, 0, False, 1000 + 7 * i)),
        (Split(torch.arange(4), images=images[:, :, :32, :32].contiguous()), "crop_flip", 4,
         auto_augment("trivialaugment"), lambda i: (i, 2, 3, i % 2 == 0, 99 + i)),
    ]  # fmt: skip
    for split, policy, padding, transform, key in cases:
        dataset, plain = SampleDataset(split, policy, padding, transform), SampleDataset(split, policy, padding)
        torch.manual_seed(1234)
        before = torch.rand(3)
        torch.manual_seed(1234)
        for i in range(4):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key(i)[-1])
                expected = transform(plain[key(i)][0])
            assert torch.equal(dataset[key(i)][0], expected)
        assert torch.equal(torch.rand(3), before)  # the caller's stream did not move
