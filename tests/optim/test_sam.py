"""SAM/ASAM as the training step runs it: equal to a hand-written reference step, scale-invariant under GradScaler,
safe with a planted inf, BatchNorm statistics from pass 1 only."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hw3.config import OptimConfig
from hw3.optim.sam import SAM, bn_buffers

from helpers import step, tiny_run


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def reference_step(model, x, y, rho, lr, adaptive):
    """SAM by the paper: g at w; e = rho g/||g|| (ASAM: rho w^2 g/|| |w| g ||); g' at w + e; w <- w - lr g'."""
    m = copy.deepcopy(model)
    params = list(m.parameters())
    g = torch.autograd.grad(F.cross_entropy(m(x), y), params)
    bn_after_pass1 = [b.clone() for b in bn_buffers(m)]
    w = [p.detach().clone() for p in params]
    if adaptive:
        norm = torch.sqrt(sum(((wi.abs() * gi) ** 2).sum() for wi, gi in zip(w, g, strict=True)))
        e = [rho * wi * wi * gi / norm for wi, gi in zip(w, g, strict=True)]
    else:
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        e = [rho * gi / norm for gi in g]
    with torch.no_grad():
        for p, ei in zip(params, e, strict=True):
            p.add_(ei)
    g2 = torch.autograd.grad(F.cross_entropy(m(x), y), params)
    return [wi - lr * gi for wi, gi in zip(w, g2, strict=True)], bn_after_pass1


def sam_step(r, x, y):
    step(r, (x, y))
    return r.sums


@pytest.mark.parametrize("adaptive, rho", [(False, 0.05), (True, 0.5)])
def test_one_step_equals_the_reference(adaptive, rho):
    model, (x, y) = tiny_model(), batch()
    expected, bn_expected = reference_step(model, x, y, rho, lr=0.1, adaptive=adaptive)
    r = tiny_run(model, OptimConfig(name="sam", base="sgd", lr=0.1, momentum=0.0, rho=rho, adaptive=adaptive))
    sam_step(r, x, y)
    for p, e in zip(r.net.parameters(), expected, strict=True):
        assert torch.allclose(p, e, atol=1e-6, rtol=0)
    for b, e in zip(bn_buffers(r.net), bn_expected, strict=True):  # running stats from pass 1 only
        assert torch.equal(b, e)


def test_grad_scaler_with_a_large_scale_gives_the_unscaled_step():
    (x, y) = batch()
    plain = tiny_run(tiny_model(), OptimConfig(name="sam", base="sgd", lr=0.1, momentum=0.9, rho=0.05))
    sam_step(plain, x, y)
    scaled = tiny_run(
        tiny_model(), OptimConfig(name="sam", base="sgd", lr=0.1, momentum=0.9, rho=0.05), scaler_scale=2.0**20
    )
    sam_step(scaled, x, y)
    assert scaled.scaler.get_scale() == 2.0**20  # no overflow, step taken
    for a, b in zip(plain.net.parameters(), scaled.net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scaler_scale", [None, 2.0**16])
def test_planted_inf_in_pass_one_leaves_weights_and_batchnorm_untouched(scaler_scale):
    x, y = batch()
    x[3, 1] = float("inf")
    r = tiny_run(tiny_model(), OptimConfig(name="sam", base="sgd", lr=0.1, momentum=0.9), scaler_scale=scaler_scale)
    before = [p.detach().clone() for p in r.net.parameters()]
    bn_before = [b.clone() for b in bn_buffers(r.net)]
    sums = sam_step(r, x, y)
    assert all(torch.equal(p, b) for p, b in zip(r.net.parameters(), before, strict=True))
    assert all(torch.equal(b, e) and b.isfinite().all() for b, e in zip(bn_buffers(r.net), bn_before, strict=True))
    assert sums.skipped.item() == 1 and r.bad_steps.in_row.item() == 1
    if scaler_scale:
        assert r.scaler.get_scale() < scaler_scale  # GradScaler backed off


def test_then_a_clean_batch_trains_normally():
    r = tiny_run(tiny_model(), OptimConfig(name="sam", base="sgd", lr=0.1, momentum=0.9))
    bad_x, y = batch()
    bad_x[0, 0] = float("nan")
    sam_step(r, bad_x, y)
    before = [p.detach().clone() for p in r.net.parameters()]
    sam_step(r, *batch())
    assert r.bad_steps.in_row.item() == 0 and r.bad_steps.longest.item() == 1
    assert any(not torch.equal(p, b) for p, b in zip(r.net.parameters(), before, strict=True))
    assert all(p.isfinite().all() for p in r.net.parameters())


def test_weights_are_restored_bit_for_bit_around_pass_two():
    model, (x, y) = tiny_model(), batch()
    sam = SAM(OptimConfig(name="sam", rho=0.05))
    sam.save_batchnorm(model)
    F.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with sam.perturbed(model) as keep:
        assert keep.item() == 1.0
        assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
