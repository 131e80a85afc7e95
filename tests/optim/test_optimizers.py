"""hw3.optim: each optimizer and schedule trains the quickstart through the CLI; Muon's routing; weight decay."""

import pytest
import torch

from hw3.config import ModelConfig, OptimConfig
from hw3.models.build import build_model
from hw3.optim import build_optimizer, routing_table

from helpers import RECIPES, read_metrics, read_summary

CPU = torch.device("cpu")

QUICK = RECIPES / "quickstart.yaml"

# Test accuracy (of 359 digits) after 8 epochs, measured on a 2-core AMD EPYC with torch 2.14.1; each bar is about
# 4 images below it. A mis-wired optimizer falls well under: SGD without its momentum reached 96.4%, below the
# 97.5% bar of SGD with momentum.
OPTIMIZER_RUNS = {
    "sgd": (["optim.name=sgd", "optim.lr=0.01", "optim.momentum=0.9"], 0.975),  # reached 98.6%
    "sgd-plain": (["optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.0"], 0.955),  # 96.4%
    "adam": (["optim.name=adam", "optim.lr=2e-3"], 0.978),  # 98.9%
    "adamw": (["optim.name=adamw"], 0.978),  # 98.9%
    "sam": (["optim.name=sam", "optim.base=sgd", "optim.lr=0.01", "optim.rho=0.05"], 0.975),  # 98.6%
    "asam": (["optim.name=sam", "optim.base=sgd", "optim.lr=0.02", "optim.adaptive=true", "optim.rho=0.5"], 0.975),
    "sam-bf16": (["optim.name=sam", "optim.base=adamw", "train.mixed_precision=bf16"], 0.978),  # 98.9%
    "muon": (["optim.name=muon", "optim.lr=3e-3"], 0.98),  # 99.2%
    "sam-muon": (["optim.name=sam", "optim.base=muon", "optim.lr=3e-3"], 0.983),  # 99.4%
}
STEPS, EPOCHS = 21, 8  # 1,294 training digits at batch 64


def sequential_cosine(o):
    warmup = STEPS + STEPS // 2  # 1.5 epochs
    return torch.optim.lr_scheduler.SequentialLR(
        o,
        [
            torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS * EPOCHS - warmup),
        ],
        milestones=[warmup],
    )


# name: (overrides, accuracy bar, torch's own scheduler for the same settings, stepped per epoch or per step).
# Plateau depends on validation results: its lr is checked with scripted ones in test_decisions.py.
SCHEDULE_RUNS = {
    "none": (["sched.name=none", "optim.lr=1e-3"], 0.98, lambda o: torch.optim.lr_scheduler.ConstantLR(o, 1.0), 1),
    "step": (
        ["sched.name=step", "sched.step_size=5", "sched.gamma=0.3"],
        0.98,
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.3),
        STEPS,
    ),
    "multistep": (
        ["sched.name=multistep", "sched.milestones=[6, 10]"],
        0.98,
        lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[6, 10]),
        STEPS,
    ),
    "plateau": (["sched.name=plateau", "sched.patience=1", "sched.gamma=0.5"], 0.98, None, None),
    "cosine": (["sched.name=cosine", "sched.warmup_epochs=1.5"], 0.978, sequential_cosine, 1),
    "onecycle": (
        ["sched.name=onecycle"],
        0.98,
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=3e-3, total_steps=STEPS * EPOCHS, cycle_momentum=False),
        1,
    ),
}


def torch_lr_at_epoch_ends(make, every: int, lr: float) -> list[float]:
    """The lr torch's scheduler gives the last optimizer step of each epoch (what metrics.jsonl logs)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    lrs = []
    for step in range(STEPS * EPOCHS):
        if (step + 1) % STEPS == 0:
            lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if (step + 1) % every == 0:
            sched.step()
    return lrs


@pytest.mark.parametrize("name", list(OPTIMIZER_RUNS) + [f"sched-{s}" for s in SCHEDULE_RUNS])
def test_trains_the_quickstart_to_its_bar(train, tmp_path, name):
    if name.startswith("sched-"):
        overrides, bar, make, every = SCHEDULE_RUNS[name.removeprefix("sched-")]
    else:
        (overrides, bar), make = OPTIMIZER_RUNS[name], None
    result = train(
        "--recipe", QUICK, f"train.epochs={EPOCHS}", "log.trackers=[]", *overrides, f"output_dir={tmp_path / 'run'}"
    )
    assert result.code == 0, result.err
    assert read_summary(tmp_path / "run")["test_acc"] >= bar
    if make is not None:
        lr = 1e-3 if name == "sched-none" else 3e-3
        logged = [r["lr"] for r in read_metrics(tmp_path / "run")]
        assert logged == pytest.approx(torch_lr_at_epoch_ends(make, every, lr), rel=1e-9, abs=1e-12)


def test_muon_routes_stem_head_and_1d_tensors_to_adamw_on_resnet18():
    model = build_model(ModelConfig(name="resnet18"), 10, 3, 32)
    opt = build_optimizer(OptimConfig(name="muon", lr=0.02, fallback_lr=3e-4, weight_decay=0.05), model, CPU)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    table = {row.split("|")[1].strip(): row.split("|")[3].strip() for row in routing_table(model, opt).splitlines()[2:]}
    assert table["conv1.weight"] == table["fc.weight"] == table["fc.bias"] == table["bn1.weight"] == "adamw (fallback)"
    assert table["layer1.0.conv1.weight"] == table["layer4.1.conv2.weight"] == "muon"
    lrs = {row.split("|")[1].strip(): float(row.split("|")[4]) for row in routing_table(model, opt).splitlines()[2:]}
    assert lrs["fc.weight"] == pytest.approx(3e-4) and lrs["layer1.0.conv1.weight"] == pytest.approx(0.02)


def test_muon_run_writes_its_routing_table(train, tmp_path):
    result = train("--recipe", QUICK, "optim.name=muon", "train.epochs=1", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    table = (tmp_path / "run" / "optimizer_routing.md").read_text()
    assert "| body.0.weight | 64x32x3x3 | muon |" in table and "| head.weight | 10x1024 | adamw (fallback) |" in table


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "muon"])
def test_no_weight_decay_on_norms_and_biases_unless_asked(name):
    model = build_model(ModelConfig(name="test_resnet"), 10, 3, 32)
    one_d = {id(p) for p in model.parameters() if p.ndim <= 1}
    opt = build_optimizer(OptimConfig(name=name, weight_decay=0.1), model, CPU)
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        assert group["weight_decay"] == (0.0 if ids <= one_d else 0.1) and (ids <= one_d or not ids & one_d)
    opt = build_optimizer(OptimConfig(name=name, weight_decay=0.1, decay_norm_and_bias=True), model, CPU)
    assert all(g["weight_decay"] == 0.1 for g in opt.param_groups)


def test_sgd_nesterov_switch():
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(OptimConfig(name="sgd", nesterov=True), model, CPU).param_groups[0]["nesterov"]
    assert not build_optimizer(OptimConfig(name="sgd", nesterov=False), model, CPU).param_groups[0]["nesterov"]
