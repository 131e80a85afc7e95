"""Fine-tuning controls through the real CLI: layer-wise lr decay and a head lr multiplier (the lr of every
parameter at every step, against values worked out by hand), a frozen backbone (not one bit of it or of its
BatchNorm statistics moves, then all of it trains; a kill on either side of the switch resumes exactly), and
test-time augmentation (the logits of the views averaged)."""

import math

import pytest
import torch
from safetensors.torch import load_file

import hw3.engine.loop

from helpers import RECIPES, Killed, deterministic, kill_at, read_metrics, read_summary

QUICK = RECIPES / "quickstart.yaml"
BASE = ["--recipe", QUICK, "log.trackers=[]", "train.checkpoint_every_minutes=null"]
LR, STEPS = 0.003, 21  # the quickstart's lr; 1,294 digits at 64: 21 steps per epoch


def recording(monkeypatch, record):
    """Wrap hw3.engine.step.train_step: `record(run)` just before every optimizer step of the run."""
    real = hw3.engine.step.train_step

    def step(run, micro, measure_norm):
        record(run)
        return real(run, micro, measure_norm)

    monkeypatch.setattr(hw3.engine.loop, "train_step", step)


def layer_scale(name: str) -> float:
    """timm's test_resnet (one block per stage) under optim.layer_decay=0.5: its group_matcher puts the stem in
    layer 0, layer1.0 ... layer4.0 in layers 1-4, the classifier (fc) in layer 5; scale 0.5 ** (5 - layer), and
    the head x optim.head_lr_scale=10."""
    if name.startswith("fc."):
        return 10.0
    if name.startswith("layer"):
        return 0.5 ** (5 - int(name[len("layer")]))
    return 0.5**5  # the stem: conv1, bn1


def test_every_parameter_gets_its_layer_and_head_lr_at_every_step(train, tmp_path, monkeypatch):
    seen = []
    recording(monkeypatch, lambda run: seen.append(lrs_by_name(run)))
    args = ["model.name=test_resnet", "optim.layer_decay=0.5", "optim.head_lr_scale=10", "train.epochs=2"]
    assert train(*BASE, *args, f"output_dir={tmp_path}").code == 0
    assert len(seen) == 2 * STEPS
    total = 2 * STEPS
    for step, lrs in enumerate(seen):
        cosine = (1 + math.cos(math.pi * step / total)) / 2  # sched.name=cosine, no warm-up, min_lr 0
        for name, lr in lrs.items():
            assert lr == pytest.approx(LR * cosine * layer_scale(name), rel=1e-12), (step, name)


def lrs_by_name(run) -> dict:
    names = {p: n for n, p in run.net.named_parameters()}
    return {names[p]: group["lr"] for group in run.optimizer.param_groups for p in group["params"]}


FREEZE = [*BASE, "train.freeze_backbone_epochs=1", "train.epochs=3", "optim.layer_decay=0.5", "optim.head_lr_scale=10"]


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    from hw3.cli.train import main

    run_dir = tmp_path_factory.mktemp("freeze") / "whole"
    assert main([str(a) for a in [*FREEZE, "train.keep_last=10", f"output_dir={run_dir}"]]) == 0
    return run_dir


def test_a_frozen_backbone_does_not_move_by_one_bit_then_trains(train, tmp_path, monkeypatch):
    start = {}
    recording(monkeypatch, lambda run: start or start.update({k: v.clone() for k, v in run.net.state_dict().items()}))
    assert train(*FREEZE, "train.keep_last=10", f"output_dir={tmp_path}").code == 0
    after = [load_file(str(tmp_path / f"checkpoints/epoch{e:04d}-batch000021/model.safetensors")) for e in (0, 1)]
    head = {k for k in start if k.startswith("head.")}
    backbone = [k for k in start if k not in head]  # weights and BatchNorm statistics alike
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(after[0][k], start[k]) for k in backbone)  # epoch 0: frozen, bit for bit
    assert all(not torch.equal(after[0][k], start[k]) for k in head)  # ... while the head trained
    assert all(not torch.equal(after[1][k], after[0][k]) for k in backbone if k.endswith("weight"))  # epoch 1: all


@pytest.mark.parametrize("kill", [10, 30], ids=["before the switch", "after the switch"])
def test_a_kill_on_either_side_of_the_switch_resumes_exactly(train, frozen_run, tmp_path, monkeypatch, kill):
    args = [*FREEZE, "train.keep_last=10", "train.checkpoint_every_steps=7", f"output_dir={tmp_path}"]
    kill_at(monkeypatch, "train_step", kill)
    with pytest.raises(Killed):
        train(*args)
    assert train(*args).code == 0
    assert deterministic(read_metrics(tmp_path)) == deterministic(read_metrics(frozen_run))
    last = "checkpoints/epoch0002-batch000021/model.safetensors"
    mine, theirs = load_file(str(tmp_path / last)), load_file(str(frozen_run / last))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_test_time_augmentation_averages_the_views(train, tmp_path):
    from hw3.engine.evaluation import logits_with_tta, shifted

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(logits_with_tta(net, x, "none"), net(x))
        assert torch.allclose(logits_with_tta(net, x, "flip"), (net(x) + net(x.flip(-1))) / 2)
        moved = torch.cat([x[..., :1, :].expand(-1, -1, 1, -1), x[..., :-1, :]], dim=2)  # down by 1 (8 // 16 -> 1)
        moved = torch.cat([moved[..., :1].expand(-1, -1, -1, 1), moved[..., :-1]], dim=3)  # and right by 1
        assert torch.equal(shifted(x, 1), moved)
        views = [x, x.flip(-1), moved, moved.flip(-1)]
        assert torch.allclose(logits_with_tta(net, x, "flip_shift"), sum(net(v) for v in views) / 4)
    assert train(*BASE, "eval.tta=flip", "train.epochs=1", f"output_dir={tmp_path}").code == 0
    assert read_summary(tmp_path)["tta"] == "flip"
