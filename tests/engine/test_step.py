"""The training step and its surroundings: gradient accumulation, clipping, the launch guard, SAM momentum across
a resume."""

import pytest
import torch
from safetensors.torch import load_file

import hw3.engine.build
from hw3.config import Config, OptimConfig, TrainConfig
from hw3.engine.step import micro_batch_weights
from hw3.errors import UserError
from hw3.runs.checkpoints import list_checkpoints

from helpers import RECIPES, step, tiny_run

QUICK = RECIPES / "quickstart.yaml"


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def test_two_accumulated_halves_equal_one_full_batch():
    x, y = torch.randn(64, 6, generator=torch.Generator().manual_seed(1)), torch.arange(64) % 4
    full = tiny_run(mlp(), OptimConfig(name="sgd", lr=0.5, momentum=0.0))
    step(full, (x, y))
    acc = tiny_run(mlp(), OptimConfig(name="sgd", lr=0.5, momentum=0.0), TrainConfig(grad_accum_steps=2))
    step(acc, (x[:24], y[:24]), (x[24:], y[24:]))  # uneven halves, weighted by size
    for a, b in zip(full.net.parameters(), acc.net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_micro_batch_weights_follow_uneven_groups():
    assert micro_batch_weights([32, 32, 32, 4], 3) == [pytest.approx(1 / 3)] * 3 + [1.0]
    assert micro_batch_weights([24, 24, 22], 3) == [24 / 70, 24 / 70, 22 / 70]
    assert micro_batch_weights([8, 8, 3], 1) == [1.0, 1.0, 1.0]


def test_clipping_bounds_the_step_and_logs_the_norm_before_clipping():
    x, y = torch.randn(16, 6), torch.arange(16) % 4
    r = tiny_run(mlp(), OptimConfig(name="sgd", lr=1.0, momentum=0.0), TrainConfig(max_grad_norm=1e-3))
    before = torch.cat([p.detach().flatten().clone() for p in r.net.parameters()])
    step(r, (x, y), measure_norm=False)  # clipping measures the norm anyway
    after = torch.cat([p.detach().flatten() for p in r.net.parameters()])
    assert (after - before).norm() == pytest.approx(1e-3, rel=1e-3)  # lr 1 x clipped norm
    assert r.sums.norm_samples.item() == 1 and r.sums.grad_norm.item() > 1e-2  # the norm before clipping


def test_launched_as_several_processes_that_accelerate_sees_as_one(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")

    class Lonely(hw3.engine.build.Accelerator):
        def __init__(self, **kwargs):
            monkeypatch.delenv("WORLD_SIZE")
            super().__init__(**kwargs)
            monkeypatch.setenv("WORLD_SIZE", "2")

    monkeypatch.setattr(hw3.engine.build, "Accelerator", Lonely)
    with pytest.raises(UserError, match="launched as 2 processes but accelerate sees one"):
        hw3.engine.build.make_accelerator(Config(), tmp_path)


def test_an_incomplete_distributed_environment_is_a_user_error(monkeypatch, tmp_path):
    import os

    before = set(os.environ)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="accelerate could not start"):
        hw3.engine.build.make_accelerator(Config(), tmp_path)
    for leaked in set(os.environ) - before - {"WORLD_SIZE"}:  # accelerate exports RANK etc. while failing
        del os.environ[leaked]


def test_sam_momentum_survives_a_resume(train, tmp_path):
    """Resuming from epoch 1 must give the uninterrupted run's weights: the base optimizer's momentum is saved."""
    args = [
        "--recipe",
        QUICK,
        "optim.name=sam",
        "optim.base=sgd",
        "optim.lr=0.05",
        "optim.momentum=0.9",
        "sched.name=step",
        "train.epochs=3",
        "train.keep_last=5",
    ]
    assert train(*args, f"output_dir={tmp_path / 'whole'}").code == 0
    first = list_checkpoints(tmp_path / "whole")[0]
    state = torch.load(first / "optimizer.bin", weights_only=True)
    assert any("momentum_buffer" in s for s in state["state"].values())
    assert train(*args, f"train.resume={first}", f"output_dir={tmp_path / 'resumed'}").code == 0
    a = load_file(str(list_checkpoints(tmp_path / "whole")[-1] / "model.safetensors"))
    b = load_file(str(list_checkpoints(tmp_path / "resumed")[-1] / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_skipped_steps_are_counted_once_however_many_processes_count_them():
    """Every process counts the same skipped steps; the epoch's and the run's totals are the count, not W times it."""
    from types import SimpleNamespace

    from hw3.engine.loop import epoch_metrics

    r = tiny_run(mlp())
    x, y = torch.randn(8, 6), torch.arange(8) % 4
    x[0, 0] = float("nan")
    step(r, (x, y))
    step(r, (x, y))
    r.accelerator = SimpleNamespace(num_processes=2, reduce=lambda t, op: 2 * t)  # two identical processes
    metrics = epoch_metrics(r, 8)
    assert metrics["skipped_steps"] == r.state.skipped_steps == 2
