"""One SAM step of hw3.engine.step.train_step on 2 gloo processes, each with its own batch, against a reference.

Launched by test_multiproc.py under `accelerate launch --config_file accelerate_configs/cpu_ddp.yaml`. SAM's
pass 1 must use this process's own gradient (no all-reduce: each process perturbs by its own batch, the
m-sharpness of the SAM paper), pass 2 must be all-reduced (DDP averages the gradients at w + e_r over the
processes). Prints one line per process when its weights match that reference and not the reference in which
pass 1 was synchronized too, and when DDP's all-reduces (counted with a comm hook) happen only in pass 2; the
same count checks that gradient accumulation all-reduces on the last micro-batch only. Exits 1 otherwise.
"""

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from hw3.config import OptimConfig, TrainConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for helpers
from helpers import step, tiny_run  # noqa: E402

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


def count_all_reduces(run) -> list[int]:
    """Count DDP's gradient all-reduces, and note the count each time the loss is computed (once per forward)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    counts, seen = [0], []

    def hook(state, bucket):
        counts[0] += 1
        return allreduce_hook(state, bucket)

    run.model.register_comm_hook(None, hook)
    loss_fn = run.loss_fn
    run.loss_fn = lambda logits, y: (seen.append(counts[0]), loss_fn(logits, y))[1]
    return counts, seen


def check_sam(rank: int) -> list[str]:
    run = tiny_run(model(), OptimConfig(name="sam", base="sgd", lr=LR, momentum=0.0, rho=RHO))
    assert run.accelerator.num_processes == WORLD, "launch with accelerate_configs/cpu_ddp.yaml"
    counts, seen = count_all_reduces(run)
    step(run, batch(rank))
    problems = [] if seen == [0, 0] and counts[0] > 0 else [f"all-reduces before each pass {seen}, total {counts}"]
    mine = [p.detach() for p in run.net.parameters()]
    per_process, synced = sam_reference(False), sam_reference(True)
    if not all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(mine, per_process, strict=True)):
        problems.append("weights differ from the per-process reference")
    if max((a - b).abs().max().item() for a, b in zip(per_process, synced, strict=True)) <= 1e-3:
        problems.append("the references do not differ: the check could not tell")
    return problems


def check_accumulation(rank: int) -> list[str]:
    """Two micro-batches: gradients all-reduced once, after the second (the first inside no_sync)."""
    run = tiny_run(model(), OptimConfig(name="sgd", lr=LR, momentum=0.0), TrainConfig(grad_accum_steps=2))
    counts, seen = count_all_reduces(run)
    step(run, batch(rank), batch(rank + 10))
    return [] if seen == [0, 0] and counts[0] > 0 else [f"accumulation all-reduces {seen}, total {counts}"]


def main() -> int:
    rank = int(os.environ["RANK"])
    problems = check_sam(rank) + check_accumulation(rank)
    if problems:
        print(f"rank {rank}: {'; '.join(problems)}")
        return 1
    sys.stdout.write(f"rank {rank}: SAM step matches the per-process reference\n")  # one write: no interleaving
    return 0


if __name__ == "__main__":
    sys.exit(main())
