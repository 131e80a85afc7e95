"""The training step never waits for the device: whole epochs through hw3's real train_one_epoch, counting every
read of a tensor's value by the host (`aten._local_scalar_dense`, which .item(), bool(), float() and `if tensor`
become, plus .tolist() and .numpy(), which bypass the dispatcher on the CPU). On a GPU each such read stalls the
queue of kernels; the loop may read once every log.log_every steps (and at the end of the epoch), no more.

Every tensor is a CPU tensor here, so the count is strict: it includes reads a GPU would not even pay for."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hw3.engine.build import build_run, make_accelerator
from hw3.engine.loop import train_one_epoch
from hw3.engine.recipe import load_recipe

STEPS, LOG_EVERY, BATCH = 40, 10, 8


class HostReads(TorchDispatchMode):
    def __init__(self, monkeypatch):
        super().__init__()
        self.count = 0
        for name in ("tolist", "numpy"):
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self.counting(real))

    def counting(self, real):
        def read(tensor, *args, **kwargs):
            self.count += 1
            return real(tensor, *args, **kwargs)

        return read

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def run_for(tmp_path, overrides):
    cfg = load_recipe(
        None,
        [
            "data.name=synthetic",
            "data.image_size=8",
            f"data.max_train_samples={STEPS * BATCH}",
            "model.name=simple_cnn",
            "model.kwargs={width: 8}",
            f"train.batch_size={BATCH}",
            "train.epochs=3",
            f"log.log_every={LOG_EVERY}",
            "log.trackers=[]",
            "log.progress=false",
            f"output_dir={tmp_path / 'run'}",
            *overrides,
        ],
    )
    return build_run(cfg, make_accelerator(cfg, tmp_path / "run"), tmp_path / "run")


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim.name=sgd"],
        ["optim.name=sgd", "train.max_grad_norm=0.5"],
        ["optim.name=sam", "optim.base=sgd"],
        ["optim.name=adamw", "train.ema_decay=0.9", "train.mixup=0.2"],
    ],
    ids=["sgd", "sgd + clipping", "sam", "adamw + ema + mixup"],
)
def test_at_most_one_host_read_per_log_every_steps(tmp_path, monkeypatch, overrides):
    run = run_for(tmp_path, overrides)
    train_one_epoch(run, 0, BATCH)  # warm-up: first-step allocations, lazy imports
    run.state.batch = 0
    run.sums.reset()
    with HostReads(monkeypatch) as reads:
        train_one_epoch(run, 1, BATCH)
    assert run.state.step == 2 * STEPS
    # one look every LOG_EVERY steps (the last coinciding with the end of the epoch), one read of the epoch's sums
    assert reads.count <= STEPS // LOG_EVERY + 1, f"{reads.count} host reads in {STEPS} steps"
