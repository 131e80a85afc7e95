"""Non-finite steps, skipped on the device.

A step whose gradient holds an inf or NaN must leave the weights, the optimizer state and the EMA untouched, and be
counted. Deciding that on the host (`if torch.isfinite(norm):`) costs a device synchronization per step, and a
GPU that waits for the host to queue the next step: about 30% of a small CIFAR network's throughput. Here the
decision stays a device tensor, `found_inf` (1.0 or 0.0), all the way into the update:

- torch's fused SGD/Adam/AdamW take it as the `found_inf` attribute GradScaler feeds them and skip the update in
  their kernel (Adam also undoes its step count);
- any other optimizer (timm's Muon) is stepped, then its parameters and state tensors are put back with
  `torch.where(found_inf, saved, new)`;
- the EMA moves by `(1 - decay) * (1 - found_inf)` (hw3.optim.ema);
- the counts (skipped steps, non-finite steps in a row) are device tensors, read every `log.log_every` steps.
"""

from __future__ import annotations

from typing import Optional

import torch

ONES: dict[torch.device, torch.Tensor] = {}


def found_inf(grads: list[torch.Tensor], norm: Optional[torch.Tensor]) -> torch.Tensor:
    """1.0 when any gradient holds an inf or NaN, else 0.0, as a float tensor on their device. From the norm when
    one was computed (it is inf or NaN exactly then), else from the check GradScaler itself uses: one fused pass."""
    if norm is not None:
        return (~torch.isfinite(norm)).float()
    device = grads[0].device
    if device not in ONES:
        ONES[device] = torch.ones((), device=device)  # the unscaling factor: gradients stay as they are
    flag = torch.zeros((), device=device)
    torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, ONES[device])
    return flag


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all the tensors together, in one fused kernel per dtype/device (as clip_grad_norm_ computes
    it)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return all(group.get("fused") for group in optimizer.param_groups)


def prime_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give fused SGD its momentum buffers (zeros) before the first step. Its first step otherwise allocates them
    with `empty_like` and fills them in the kernel, which a skipped step never runs: the next step would read
    uninitialized memory. With dampening 0 a zero buffer gives exactly the update of a fresh one (0 * m + g = g)."""
    if not isinstance(optimizer, torch.optim.SGD) or not is_fused(optimizer):
        return
    for group in optimizer.param_groups:
        if group["momentum"] > 0:
            for p in group["params"]:
                optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))


@torch.no_grad()
def step_unless(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """optimizer.step(), undone on the device when `bad` (found_inf) is 1."""
    if is_fused(optimizer):
        optimizer.grad_scale, optimizer.found_inf = None, bad  # what GradScaler hands a fused optimizer
        optimizer.step()
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    state = [t for p in params for t in optimizer.state.get(p, {}).values() if torch.is_tensor(t)]
    before = {id(t) for t in state}
    tensors = params + state
    saved = [t.clone() for t in tensors]
    optimizer.step()
    skip = bad > 0
    for t, old in zip(tensors, saved, strict=True):
        t.copy_(torch.where(skip, old, t))
    for p in params:  # state the step just created: back to zeros, which every optimizer here starts from
        for t in optimizer.state[p].values():
            if torch.is_tensor(t) and id(t) not in before:
                t.masked_fill_(skip, 0)


class BadSteps:
    """Non-finite steps in a row and the longest such run so far, as device tensors (read with the others every
    log.log_every steps, where train.max_bad_steps is enforced)."""

    def __init__(self, device: torch.device):
        self.in_row = torch.zeros((), device=device)
        self.longest = torch.zeros((), device=device)

    def add(self, bad: torch.Tensor) -> None:
        self.in_row.mul_(bad).add_(bad)  # +1 on a bad step, back to 0 on a good one
        torch.maximum(self.longest, self.in_row, out=self.longest)

    def state_dict(self) -> dict:
        return dict(in_row=int(self.in_row.item()), longest=int(self.longest.item()))

    def load_state_dict(self, state: dict) -> None:
        self.in_row.fill_(state["in_row"])
        self.longest.fill_(state["longest"])

    @staticmethod
    def merge(states: list[dict]) -> dict:
        return {k: max(s[k] for s in states) for k in states[0]}
