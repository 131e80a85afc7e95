"""SAM every k steps, LookSAM, momentum SAM and m-sharpness as hw3's training step runs them, each against a
reference written here from its paper (plain autograd and torch.optim.SGD, no hw3 code), for three steps; scale
invariance under GradScaler; a planted inf; the keys' validation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hw3.config import OptimConfig, load_config
from hw3.engine.recipe import load_recipe
from hw3.errors import UserError
from hw3.optim import check_optim
from hw3.optim.sam import bn_buffers

from helpers import step, tiny_run

RHO, LR, MU, ALPHA = 0.05, 0.1, 0.9, 0.7


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def batches(n=3):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(n)]


def cfg(**kwargs) -> OptimConfig:
    return OptimConfig(name="sam", base="sgd", lr=LR, momentum=MU, nesterov=False, rho=RHO, **kwargs)


def grads(m, x, y):
    return torch.autograd.grad(F.cross_entropy(m(x), y), list(m.parameters()))


def norm(ts):
    return torch.sqrt(sum((t**2).sum() for t in ts))


def at(m, deltas):
    """Move m's weights by `deltas` (in place); returns the weights before."""
    saved = [p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p, d in zip(m.parameters(), deltas, strict=True):
            p.add_(d)
    return saved


def put_back(m, saved):
    with torch.no_grad():
        for p, w in zip(m.parameters(), saved, strict=True):
            p.copy_(w)


def sgd_step(m, opt, g):
    for p, gi in zip(m.parameters(), g, strict=True):
        p.grad = gi.clone()
    opt.step()


def sam_gradient(m, x, y, rho=RHO):
    """(plain g at w, SAM's g_s at w + rho g/||g||); BatchNorm keeps the statistics of the first pass."""
    g = grads(m, x, y)
    bn = [b.clone() for b in bn_buffers(m)]
    saved = at(m, [rho * gi / norm(g) for gi in g])
    g_s = grads(m, x, y)
    put_back(m, saved)
    for b, kept in zip(bn_buffers(m), bn, strict=True):
        b.copy_(kept)
    return g, g_s


def run_hw3(optim_cfg, data):
    r = tiny_run(tiny_model(), optim_cfg)
    for x, y in data:
        step(r, (x, y))
    return r


def assert_same(r, reference):
    for p, e in zip(r.net.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, e, atol=1e-6, rtol=0)
    for b, e in zip(bn_buffers(r.net), bn_buffers(reference), strict=True):
        assert torch.allclose(b.float(), e.float(), atol=1e-6, rtol=0)


def test_sam_every_k_alternates_full_and_plain_steps():
    data = batches(3)
    m = copy.deepcopy(tiny_model())
    opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MU)
    for i, (x, y) in enumerate(data):
        g = sam_gradient(m, x, y)[1] if i % 2 == 0 else grads(m, x, y)  # steps 0, 2: SAM; step 1: one pass
        sgd_step(m, opt, g)
    r = run_hw3(cfg(sam_every=2), data)
    assert_same(r, m)
    assert r.state.image_passes == 16 * (2 + 1 + 2)  # counted: passes times images


def test_looksam_reuses_the_orthogonal_part_between_full_steps():
    """Liu et al. 2022: g_v = g_s - (g.g_s/||g||^2) g at a full step; in between g + alpha ||g|| g_v/||g_v||."""
    data = batches(3)
    m = copy.deepcopy(tiny_model())
    opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MU)
    unit = None
    for i, (x, y) in enumerate(data):
        if i % 2 == 0:
            g, g_s = sam_gradient(m, x, y)
            dot = sum((a * b).sum() for a, b in zip(g, g_s, strict=True))
            g_v = [b - dot / norm(g) ** 2 * a for a, b in zip(g, g_s, strict=True)]
            unit = [v / norm(g_v) for v in g_v]
            update = g_s
        else:
            g = grads(m, x, y)
            update = [gi + ALPHA * norm(g) * u for gi, u in zip(g, unit, strict=True)]
        sgd_step(m, opt, update)
    r = run_hw3(cfg(sam_variant="looksam", sam_every=2, looksam_alpha=ALPHA), data)
    assert_same(r, m)
    assert r.state.image_passes == 16 * (2 + 1 + 2)


def test_momentum_sam_takes_one_pass_at_the_negative_momentum_direction():
    """Becker et al. 2024: the gradient at w - rho v/||v|| (v: SGD's momentum buffer; none yet at step 0)."""
    data = batches(3)
    m = copy.deepcopy(tiny_model())
    opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MU)
    for x, y in data:
        v = [opt.state[p]["momentum_buffer"] for p in m.parameters()] if opt.state else None
        saved = at(m, [-RHO * vi / norm(v) for vi in v]) if v else None
        g = grads(m, x, y)
        if saved is not None:
            put_back(m, saved)
        sgd_step(m, opt, g)
    r = run_hw3(cfg(sam_variant="momentum"), data)
    assert_same(r, m)
    assert r.state.image_passes == 16 * 3


def test_m_sharpness_perturbs_each_slice_by_its_own_gradient():
    """Foret et al. Sec. 4: each slice's pass-2 gradient at its own w + rho g_i/||g_i||, averaged by size."""
    data = batches(2)
    m = copy.deepcopy(tiny_model())
    opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MU)
    for x, y in data:
        total = [torch.zeros_like(p) for p in m.parameters()]
        for xs, ys in zip(x.tensor_split(3), y.tensor_split(3), strict=True):  # 6, 5, 5 images
            _, g_s = sam_gradient(m, xs, ys)
            total = [t + len(ys) / len(y) * g for t, g in zip(total, g_s, strict=True)]
        sgd_step(m, opt, total)
    r = run_hw3(cfg(sam_batch_splits=3), data)
    assert_same(r, m)
    assert r.state.image_passes == 2 * 16 * 2


@pytest.mark.parametrize(
    "variant", [dict(sam_variant="looksam", sam_every=2), dict(sam_variant="momentum"), dict(sam_batch_splits=2)]
)
def test_a_large_loss_scale_gives_the_unscaled_steps(variant):
    data = batches(3)
    plain = run_hw3(cfg(**variant), data)
    scaled = tiny_run(tiny_model(), cfg(**variant), scaler_scale=2.0**20)
    for x, y in data:
        step(scaled, (x, y))
    assert scaled.scaler.get_scale() == 2.0**20
    for a, b in zip(plain.net.parameters(), scaled.net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_looksam_keeps_its_vector_and_the_weights_when_a_full_step_is_not_finite():
    (x, y), (x2, y2), (x3, y3) = batches(3)
    r = tiny_run(tiny_model(), cfg(sam_variant="looksam", sam_every=2))
    step(r, (x, y))
    direction = [d.clone() for d in r.sam.direction]
    step(r, (x2, y2))
    before = [p.detach().clone() for p in r.net.parameters()]
    x3[0, 0] = float("inf")
    step(r, (x3, y3))  # step 2: a full step, not finite
    assert all(torch.equal(p, b) for p, b in zip(r.net.parameters(), before, strict=True))
    assert all(torch.equal(d, e) for d, e in zip(r.sam.direction, direction, strict=True))
    assert r.bad_steps.in_row.item() == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.sam_every=2", "optim.sam_every: only with optim.name=sam"),
        ("optim.sam_variant=msam", "optim.sam_variant: 'msam' is not one of sam, looksam, momentum"),
        ("optim.sam_every=0", "optim.sam_every: must be >= 1"),
    ],
)
def test_variant_keys_are_validated(override, message):
    with pytest.raises(UserError, match=message):
        check_optim(
            load_config(None, ["optim.name=sgd" if "every=2" in override else "optim.name=sam", override]).optim
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.sam_variant=momentum", "optim.sam_every=3"], "optim.sam_every: momentum SAM takes one pass"),
        (["optim.sam_variant=momentum", "optim.adaptive=true"], "optim.adaptive: momentum SAM perturbs along"),
        (["optim.sam_variant=looksam", "optim.sam_batch_splits=2"], "optim.sam_batch_splits: m-sharpness works"),
        (["optim.looksam_alpha=0.7"], "optim.looksam_alpha: only with optim.sam_variant=looksam"),
        (["train.grad_accum_steps=2", "optim.sam_variant=looksam"], "train.grad_accum_steps: SAM needs"),
    ],
)
def test_combinations_that_do_not_exist_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        load_recipe(None, ["optim.name=sam", *overrides])  # the optimizer's own checks, and the engine's
