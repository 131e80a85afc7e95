"""Augmentation policies as the trainer applies them, on every input path: the device-resident loader, the
DataLoader over in-memory images, and the DataLoader over photos read from disk (torchvision transforms).

Every training image is a ramp whose pixel values are all distinct, so the crop offset and the flip applied to it
can be read back from the output by brute force against an independent reference (zero-pad, slice, mirror)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hw3.config import DataConfig
from hw3.data import Data, InputSpec
from hw3.data.sources import Source, Split

N, SIZE, PAD = 240, 8, 2


def ramps(n=N, size=SIZE):
    """n RGB images whose 3 * size * size pixel values are distinct and non-zero (zero is the padding)."""
    one = torch.arange(1, 3 * size * size + 1, dtype=torch.uint8).reshape(3, size, size)
    return one.expand(n, -1, -1, -1).contiguous()


def in_memory():
    split = Split(torch.zeros(N, dtype=torch.long), ramps())
    return Source(split, split, None, ["only"], 3)


def from_disk():
    images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in ramps()]
    split = Split(torch.zeros(N, dtype=torch.long), reader=lambda i: images[i])
    return Source(split, split, None, ["only"], 3)


PATHS = {
    "device": (in_memory, "device"),
    "dataloader, in memory": (in_memory, "dataloader"),
    "dataloader, photos from disk": (from_disk, "dataloader"),
}


def identify(out: torch.Tensor, original: torch.Tensor, pad: int):
    """(dy, dx, flipped) such that out == mirror?(crop of the zero-padded original at (dy, dx)), or None."""
    padded = F.pad(original, (pad,) * 4)
    size = original.shape[-1]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + size, dx : dx + size]
            for flipped in (False, True):
                if torch.equal(out, crop.flip(-1) if flipped else crop):
                    return dy, dx, flipped
    return None


def applied(path: str, policy: str, epoch: int = 0):
    """What the training path did to each image of one epoch: a list of (dy, dx, flipped)."""
    make_source, loader = PATHS[path]
    cfg = DataConfig(name="synthetic", loader=loader, num_workers=0, augment=policy, crop_padding=PAD)
    # mean 0 and std 1/255 make the model input equal to the uint8 pixel values
    spec = InputSpec(SIZE, 3, [0.0] * 3, [1 / 255] * 3)
    data = Data(cfg, make_source(), spec, torch.device("cpu"), 1, 0, seed=0)
    original = ramps(1)[0]
    found = []
    for x, _ in data.train_batches(epoch, 32):
        for image in x.round().to(torch.uint8):
            found.append(identify(image, original, PAD))
    assert len(found) == N and None not in found, "an output is no crop/flip of its input"
    return found


@pytest.mark.parametrize("path", PATHS)
def test_crop_never_flips_and_stays_within_the_padding(path):
    found = applied(path, "crop")
    assert not any(flipped for _, _, flipped in found)
    offsets = {(dy, dx) for dy, dx, _ in found}
    assert all(0 <= dy <= 2 * PAD and 0 <= dx <= 2 * PAD for dy, dx in offsets)
    assert len(offsets) >= 20  # of the 25 possible, with 240 draws: the offsets do vary


@pytest.mark.parametrize("path", PATHS)
def test_flip_mirrors_about_half_and_never_shifts(path):
    found = applied(path, "flip")
    assert {(dy, dx) for dy, dx, _ in found} == {(PAD, PAD)}
    share = np.mean([flipped for _, _, flipped in found])
    assert 0.35 < share < 0.65  # 240 fair coin flips: outside this band with probability < 1e-5


@pytest.mark.parametrize("path", PATHS)
def test_crop_flip_does_both(path):
    found = applied(path, "crop_flip")
    assert 0.35 < np.mean([flipped for _, _, flipped in found]) < 0.65
    assert len({(dy, dx) for dy, dx, _ in found}) >= 20
    assert all(0 <= dy <= 2 * PAD and 0 <= dx <= 2 * PAD for dy, dx, _ in found)


@pytest.mark.parametrize("path", PATHS)
def test_none_leaves_images_alone(path):
    assert set(applied(path, "none")) == {(PAD, PAD, False)}
