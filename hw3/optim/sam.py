"""Sharpness-Aware Minimization (Foret et al. 2021) and ASAM (Kwon et al. 2021), as two explicit passes.

No library ships a SAM that survives accelerate, AMP and DDP, so this is the one piece written by hand. The
reference (davda54/sam) wraps the base optimizer and needs a closure; an accelerate-prepared optimizer and
GradScaler both call `step()` without one. Here the base optimizer stays an ordinary prepared optimizer and the
training step does:

    pass 1   loss(w), backward                    inside no_sync: each process perturbs by its own gradient
    ascent   e(w) = rho * g / ||g||               (ASAM: rho * w^2 g / || |w| g ||), w <- w + e(w)
    pass 2   loss(w + e(w)), backward             synchronized across processes
    restore  w <- the saved copy of w             always, before the step (GradScaler may skip it)
    step     base optimizer with pass 2's gradient, clipped there and only there

Details that matter:
- e(w) does not depend on the loss scale (g / ||g||), so pass 1's still-scaled fp16 gradients are used as they
  are; only pass 2's gradients get unscaled, once, inside the usual clip/step.
- A non-finite ||g|| in pass 1 means no perturbation, and pass 2's loss is multiplied by NaN so that the step is
  skipped by the same check (or GradScaler) that skips any non-finite step -- on every process at once, since
  pass 2's gradients are averaged -- without a host sync here.
- BatchNorm sees two forwards: its running statistics are those after pass 1 (or, when pass 1 was not finite,
  those from before it); pass 2 never changes them.
- The base optimizer's momentum is saved by accelerate like any optimizer's (the reference SAM's state_dict
  saves a weight copy instead, and resuming resets momentum).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


class SAM:
    def __init__(self, rho: float, adaptive: bool = False, eps: float = 1e-12):
        self.rho, self.adaptive, self.eps = rho, adaptive, eps
        self.bn: list[torch.Tensor] = []  # the model's BatchNorm buffers (found once)
        self.bn_before: list[torch.Tensor] = []  # their values before pass 1

    def save_batchnorm(self, model: nn.Module) -> None:
        """Before pass 1: keep BatchNorm's running statistics, the fallback when pass 1 turns out non-finite."""
        if not self.bn:
            self.bn = bn_buffers(model)
        self.bn_before = [b.clone() for b in self.bn]

    @torch.no_grad()
    def ascent_step(self, params: list[torch.Tensor]) -> torch.Tensor:
        """w <- w + e(w) in place; returns 1.0, or NaN when the gradient norm was not finite (no perturbation)."""
        grads = [p.grad for p in params]
        scaled = torch._foreach_mul(grads, torch._foreach_abs(params)) if self.adaptive else grads
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))  # ||g||, or || |w| g || for ASAM
        finite = torch.isfinite(norm)
        factor = torch.where(finite, self.rho / (norm + self.eps), torch.zeros_like(norm))
        step = torch._foreach_mul(scaled, torch._foreach_abs(params)) if self.adaptive else grads
        torch._foreach_add_(params, torch._foreach_mul(step, factor))
        return torch.where(finite, torch.ones_like(norm), torch.full_like(norm, float("nan")))

    @contextmanager
    def perturbed(self, model: nn.Module) -> Iterator[torch.Tensor]:
        """Around pass 2: weights at w + e(w) inside, back at w (bit for bit) after, pass-1 gradients cleared,
        BatchNorm statistics those after pass 1 (or before it, when pass 1 was not finite).

        Yields the factor pass 2's loss must be multiplied by (1.0, or NaN to skip the step)."""
        params = [p for p in model.parameters() if p.grad is not None]
        bn_after_pass1 = [b.clone() for b in self.bn]
        saved = [p.detach().clone() for p in params]
        keep = self.ascent_step(params)
        model.zero_grad(set_to_none=True)
        try:
            yield keep
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
                pass1_ok = torch.isfinite(keep)
                for buf, before, after in zip(self.bn, self.bn_before, bn_after_pass1, strict=True):
                    buf.copy_(torch.where(pass1_ok, after, before))
