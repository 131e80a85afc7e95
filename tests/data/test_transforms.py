"""hw3.data.transforms: crop/flip semantics, photo transforms, and the last step to model input."""

import numpy as np
import torch
from PIL import Image

from hw3.data.transforms import InputStage, channel_stats, crop_flip, draw, photo_transform


def ramp(n=2, c=3, h=6, w=6):
    return torch.arange(n * c * h * w, dtype=torch.int64).reshape(n, c, h, w).remainder(251).to(torch.uint8)


def test_centered_crop_without_flip_is_identity_and_flip_mirrors():
    x = ramp()
    p = 2
    same = crop_flip(x, torch.full((2,), p), torch.full((2,), p), torch.zeros(2, dtype=torch.bool), "crop_flip", p)
    assert torch.equal(same, x)
    flipped = crop_flip(x, torch.full((2,), p), torch.full((2,), p), torch.tensor([True, False]), "crop_flip", p)
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])


def test_crop_offsets_shift_content_and_pad_with_zeros():
    x = ramp(n=1)
    out = crop_flip(x, torch.tensor([0]), torch.tensor([4]), torch.tensor([False]), "crop", 2)
    # dy=0: two rows of zero padding on top; dx=4: shifted left by 2 with zeros on the right.
    assert (out[0, :, :2] == 0).all() and (out[0, :, :, -2:] == 0).all()
    assert torch.equal(out[0, :, 2:, :4], x[0, :, :4, 2:])


def test_policies_without_crop_or_flip_leave_images_alone():
    x = ramp()
    params = draw(2, seed=0, epoch=0, padding=4)
    assert torch.equal(crop_flip(x, params.dy, params.dx, params.flip, "none", 4), x)
    assert torch.equal(crop_flip(x, params.dy, params.dx, params.flip, "resized_crop_flip", 4), x)


def test_draws_are_a_function_of_seed_and_epoch_with_the_right_distribution():
    a, b, c = draw(20000, 1, 3, 4), draw(20000, 1, 3, 4), draw(20000, 1, 4, 4)
    assert torch.equal(a.dy, b.dy) and torch.equal(a.seed, b.seed) and not torch.equal(a.dy, c.dy)
    assert 0.48 < a.flip.float().mean() < 0.52
    counts = torch.bincount(a.dx, minlength=9).float()
    assert a.dx.min() == 0 and a.dx.max() == 8 and counts.min() / counts.max() > 0.85  # uniform over 0..2p


def test_photo_transform_sizes_and_dtype():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for train in (True, False):
        out = photo_transform("resized_crop_flip", 32, 4, 0.875, None, train)(img)
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    out = photo_transform("crop_flip", 32, 4, 0.875, "randaugment", True)(img)
    assert out.shape == (3, 32, 32)
    gray = photo_transform("none", 16, 0, 0.875, None, False)(img.convert("L"))
    assert gray.shape == (1, 16, 16)


def test_input_stage_normalizes_resizes_repeats_gray_and_lays_out():
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images)
    out = InputStage(8, 1, mean, std, "cpu")(images)
    assert out.dtype == torch.float32 and abs(out.mean().item()) < 1e-4 and abs(out.std().item() - 1) < 1e-2
    rgb = InputStage(32, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "cpu", channels_last=True)(images)
    assert rgb.shape == (64, 3, 32, 32) and rgb.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(rgb[:, 0] * 0.229 + 0.485, rgb[:, 2] * 0.225 + 0.406, atol=1e-5)  # same gray in R and B


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (10, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3))) and np.allclose(std, x.std(axis=(0, 2, 3)))
