"""One SAM step of hw3.loop.train_step on 2 gloo processes, each with its own batch, against a per-process reference.

Launched by test_multiproc.py under `accelerate launch --config_file accelerate_configs/cpu_ddp.yaml`. SAM's
pass 1 must use this process's own gradient (no all-reduce: each process perturbs by its own batch, the
m-sharpness of the SAM paper), pass 2 must be all-reduced (DDP averages the gradients at w + e_r over the
processes). Prints one line per process when its weights match that reference and not the reference in which
pass 1 was synchronized too; exits 1 otherwise.
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

from hw3.config import OptimConfig

from helpers import step, tiny_run

RHO, LR, WORLD = 0.5, 0.5, 2


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))


def batch(rank: int):
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(16, 6, generator=gen), torch.randint(0, 4, (16,), generator=gen)


def grads_at(weights, x, y):
    m = model()
    with torch.no_grad():
        for p, w in zip(m.parameters(), weights, strict=True):
            p.copy_(w)
    return torch.autograd.grad(F.cross_entropy(m(x), y), list(m.parameters()))


def sam_reference(synced_pass_one: bool) -> list[torch.Tensor]:
    w = [p.detach().clone() for p in model().parameters()]
    g1 = [grads_at(w, *batch(r)) for r in range(WORLD)]
    if synced_pass_one:
        mean = [sum(gs) / WORLD for gs in zip(*g1, strict=True)]
        g1 = [mean] * WORLD
    g2 = []
    for r in range(WORLD):
        norm = torch.sqrt(sum((g**2).sum() for g in g1[r]))
        g2.append(grads_at([wi + RHO * gi / norm for wi, gi in zip(w, g1[r], strict=True)], *batch(r)))
    return [wi - LR * sum(gs) / WORLD for wi, gs in zip(w, zip(*g2, strict=True), strict=True)]


def main() -> int:
    run = tiny_run(model(), OptimConfig(name="sam", base="sgd", lr=LR, momentum=0.0, rho=RHO))
    rank = run.accelerator.process_index
    assert run.accelerator.num_processes == WORLD, "launch with accelerate_configs/cpu_ddp.yaml"
    step(run, batch(rank))
    mine = [p.detach() for p in run.net.parameters()]
    per_process, synced = sam_reference(False), sam_reference(True)
    matches = all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(mine, per_process, strict=True))
    distinct = max((a - b).abs().max().item() for a, b in zip(per_process, synced, strict=True)) > 1e-3
    if not (matches and distinct):
        print(f"rank {rank}: matches per-process reference {matches}, references distinct {distinct}")
        return 1
    sys.stdout.write(f"rank {rank}: SAM step matches the per-process reference\n")  # one write: no interleaving
    return 0


if __name__ == "__main__":
    sys.exit(main())
