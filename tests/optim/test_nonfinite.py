"""A non-finite step leaves no trace, decided on the device: for torch's fused SGD/AdamW (their own found_inf), for
timm's Muon (stepped, then put back with torch.where), on the first step too, and for the EMA."""

import pytest
import torch
from torch import nn

from hw3.config import OptimConfig
from hw3.optim.ema import DeviceSkippingEma
from hw3.optim.nonfinite import found_inf

from helpers import step, tiny_run

OPTIMIZERS = {
    "sgd (fused, momentum)": OptimConfig(name="sgd", lr=0.1, momentum=0.9),
    "adamw (fused)": OptimConfig(name="adamw", lr=0.01, weight_decay=0.01),
    "muon (timm, not fused)": OptimConfig(name="muon", lr=0.02, weight_decay=0.01),
}


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def batch(seed, poison=False):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(12, 6, generator=gen), torch.randint(0, 4, (12,), generator=gen)
    if poison:
        x[0, 0] = float("nan")
    return x, y


def trained(cfg, batches):
    run = tiny_run(model(), cfg)
    for x, y in batches:
        step(run, (x, y))
    return run


def snapshot(run):
    """Every parameter and every optimizer state tensor, cloned."""
    state = [t.clone() for s in run.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return [p.detach().clone() for p in run.net.parameters()] + state


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("where", ["after two steps", "on the first step"])
def test_a_non_finite_step_leaves_no_trace(name, where):
    good = [batch(1), batch(2), batch(3)]
    bad_at = 2 if where == "after two steps" else 0
    with_bad = good[:bad_at] + [batch(9, poison=True)] + good[bad_at:]
    clean, poisoned = trained(OPTIMIZERS[name], good), trained(OPTIMIZERS[name], with_bad)
    assert poisoned.sums.skipped.item() == 1 and clean.sums.skipped.item() == 0
    for a, b in zip(snapshot(clean), snapshot(poisoned), strict=True):
        assert torch.equal(a, b)  # bit for bit: as if the bad batch had never come


def test_the_ema_does_not_move_on_a_skipped_step():
    run = tiny_run(model(), OPTIMIZERS["sgd (fused, momentum)"])
    run.ema = DeviceSkippingEma(run.net, decay=0.5)
    step(run, batch(1))  # timm's EMA copies the model at its first update ...
    step(run, batch(2))  # ... and averages from the second on: it now differs from the model
    before = [t.clone() for t in run.ema.module.state_dict().values()]
    assert not all(torch.equal(a, b) for a, b in zip(run.ema.module.parameters(), run.net.parameters(), strict=True))
    step(run, batch(9, poison=True))
    assert all(torch.equal(a, b) for a, b in zip(before, run.ema.module.state_dict().values(), strict=True))
    step(run, batch(3))
    assert not all(torch.equal(a, b) for a, b in zip(before, run.ema.module.state_dict().values(), strict=True))


def test_found_inf_from_the_norm_or_from_the_gradients():
    grads = [torch.ones(3), torch.tensor([1.0, float("inf")])]
    assert found_inf(grads, None).item() == 1.0
    assert found_inf([torch.ones(3)], None).item() == 0.0
    assert found_inf(grads, torch.tensor(float("nan"))).item() == 1.0
    assert found_inf(grads, torch.tensor(2.0)).item() == 0.0
