"""Sharpness-Aware Minimization (Foret et al. 2021), ASAM (Kwon et al. 2021) and three cheaper variants, as explicit
passes around an ordinary accelerate-prepared base optimizer.

No library ships a SAM that survives accelerate, AMP and DDP, so this is the one piece written by hand. The
reference (davda54/sam) wraps the base optimizer and needs a closure; an accelerate-prepared optimizer and
GradScaler both call `step()` without one. Here the base optimizer stays an ordinary prepared optimizer and the
training step (hw3.engine.step) runs, on a full SAM step:

    pass 1   loss(w), backward                    inside no_sync: each process perturbs by its own gradient
    ascent   e(w) = rho * g / ||g||               (ASAM: rho * w^2 g / || |w| g ||), w <- w + e(w)
    pass 2   loss(w + e(w)), backward             synchronized across processes
    restore  w <- the saved copy of w             always, before the step (GradScaler may skip it)
    step     base optimizer with pass 2's gradient, clipped there and only there

The variants (`optim.sam_variant`, `optim.sam_every`, `optim.sam_batch_splits`) change which steps are full:

- sam_every k: a full step every k optimizer steps, a plain one-pass step of the base optimizer in between
  (MosaicML Composer's `interval`). The phase is the step counter itself, so a resume continues it exactly.
- looksam (Liu et al. 2022): a full step every k; it keeps the unit vector of the part of the SAM gradient
  orthogonal to the plain one, g_v = g_s - (g.g_s / ||g||^2) g. In between, one pass and g <- g + alpha ||g|| g_v.
- momentum (MSAM, Becker et al. 2024): every step one pass at w - rho v / ||v||, v the base optimizer's momentum
  (SGD's momentum buffer, Adam's first moment); no ascent pass at all.
- sam_batch_splits m (m-sharpness, Foret et al. Sec. 4): the batch in m slices, each perturbed by its own
  gradient; the pass-2 gradients of the slices are averaged (as DDP averages those of the processes).

Details that matter:
- e(w) does not depend on the loss scale (g / ||g||), so pass 1's still-scaled fp16 gradients are used as they
  are; only pass 2's gradients get unscaled, once, inside the usual clip/step. LookSAM's stored vector is a
  unit vector, scale-free too.
- A non-finite ||g|| in pass 1 means no perturbation, and pass 2's loss is multiplied by NaN so that the step is
  skipped by the same check (or GradScaler) that skips any non-finite step -- on every process at once, since
  pass 2's gradients are averaged -- without a host sync here. LookSAM then keeps its previous vector.
- BatchNorm sees two forwards: its running statistics are those after pass 1 (or, when pass 1 was not finite,
  those from before it); pass 2 never changes them.
- The base optimizer's momentum is saved by accelerate like any optimizer's (the reference SAM's state_dict
  saves a weight copy instead, and resuming resets momentum); LookSAM's vector is saved with the checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from hw3.config import OptimConfig
from hw3.optim.nonfinite import global_norm

FULL, PLAIN, REUSE, MOMENTUM = "full", "plain", "reuse", "momentum"  # what a step does (SAM.kind)


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


class SAM:
    def __init__(self, cfg: OptimConfig, eps: float = 1e-12):
        self.rho, self.adaptive, self.eps = cfg.rho, cfg.adaptive, eps
        self.variant, self.every, self.splits, self.alpha = (
            cfg.sam_variant,
            cfg.sam_every,
            cfg.sam_batch_splits,
            cfg.looksam_alpha,
        )
        self.bn: list[torch.Tensor] = []  # the model's BatchNorm buffers (found once)
        self.bn_before: list[torch.Tensor] = []  # their values before pass 1
        self.direction: Optional[list[torch.Tensor]] = None  # LookSAM: the unit orthogonal component, per parameter

    def kind(self, step: int) -> str:
        """What optimizer step `step` (counted from 0) does: full (two passes), plain or reuse (one pass;
        reuse adds LookSAM's stored component), momentum (one pass at MSAM's perturbed point)."""
        if self.variant == "momentum":
            return MOMENTUM
        if step % self.every == 0:
            return FULL
        return REUSE if self.variant == "looksam" and self.direction is not None else PLAIN

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
        norm = global_norm(scaled)  # ||g||, or || |w| g || for ASAM
        finite = torch.isfinite(norm)
        factor = torch.where(finite, self.rho / (norm + self.eps), torch.zeros_like(norm))
        step = torch._foreach_mul(scaled, torch._foreach_abs(params)) if self.adaptive else grads
        torch._foreach_add_(params, torch._foreach_mul(step, factor))
        return torch.where(finite, torch.ones_like(norm), torch.full_like(norm, float("nan")))

    @contextmanager
    def perturbed(self, model: nn.Module, keep_plain: bool = False) -> Iterator[torch.Tensor]:
        """Around pass 2: weights at w + e(w) inside, back at w (bit for bit) after, pass-1 gradients cleared
        (kept in self.plain with `keep_plain`, for LookSAM), BatchNorm statistics those after pass 1 (or before
        it, when pass 1 was not finite).

        Yields the factor pass 2's loss must be multiplied by (1.0, or NaN to skip the step)."""
        params = [p for p in model.parameters() if p.grad is not None]
        bn_after_pass1 = [b.clone() for b in self.bn]
        saved = [p.detach().clone() for p in params]
        keep = self.ascent_step(params)
        self.plain = [p.grad for p in params] if keep_plain else None
        model.zero_grad(set_to_none=True)
        try:
            yield keep
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)
                pass1_ok = torch.isfinite(keep)
                for buf, before, after in zip(self.bn, self.bn_before, bn_after_pass1, strict=True):
                    buf.copy_(torch.where(pass1_ok, after, before))

    # ------------------------------------------------------------------------------------------------------
    # LookSAM

    @torch.no_grad()
    def store_component(self, params: list[torch.Tensor], accelerator) -> None:
        """After a full step's pass 2: g_v = g_s - (g.g_s / ||g||^2) g from this process's plain gradient g and
        the synchronized g_s, averaged over the processes (so all reuse the same), kept as a unit vector. A
        non-finite step keeps the previous vector."""
        plain, sam = self.plain, [p.grad for p in params]
        dot = torch.stack([torch.vdot(a.flatten(), b.flatten()) for a, b in zip(plain, sam, strict=True)]).sum()
        coef = dot / (global_norm(plain) ** 2 + self.eps)
        component = torch._foreach_sub(sam, torch._foreach_mul(plain, coef))
        if accelerator.num_processes > 1:
            component = [accelerator.reduce(c, "mean") for c in component]
        norm = global_norm(component)
        unit = torch._foreach_div(component, norm + self.eps)
        ok = torch.isfinite(norm)
        old = self.direction or [torch.zeros_like(c) for c in unit]
        self.direction = [torch.where(ok, u, o) for u, o in zip(unit, old, strict=True)]
        self.plain = None

    @torch.no_grad()
    def add_component(self, params: list[torch.Tensor]) -> None:
        """A LookSAM step between full ones: g <- g + alpha ||g|| g_v."""
        grads = [p.grad for p in params]
        torch._foreach_add_(grads, torch._foreach_mul(self.direction, self.alpha * global_norm(grads)))

    def state_dict(self) -> dict:
        """LookSAM's vector (tensors: saved with the checkpoint's safetensors, not in its JSON)."""
        return {f"direction.{i}": t for i, t in enumerate(self.direction or [])}

    def load_state_dict(self, state: dict) -> None:
        self.direction = [state[f"direction.{i}"] for i in range(len(state))] or None

    # ------------------------------------------------------------------------------------------------------
    # Momentum SAM

    @contextmanager
    def along_momentum(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """Weights at w - rho v / ||v|| inside (v: the base optimizer's momentum, where it has one), back at w
        bit for bit after. Before the first step v is zero: no perturbation."""
        params = [p for p in model.parameters() if p.requires_grad]
        moments = [momentum_of(optimizer, p) for p in params]
        pairs = [(p, v) for p, v in zip(params, moments, strict=True) if v is not None]
        if not pairs:
            yield
            return
        params, moments = [p for p, _ in pairs], [v for _, v in pairs]
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            norm = global_norm(moments)
            torch._foreach_add_(params, torch._foreach_mul(moments, -self.rho / (norm + self.eps)))
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)


def momentum_of(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> Optional[torch.Tensor]:
    """The base optimizer's momentum of `p`: SGD's momentum buffer, Adam's first moment (None before it has one)."""
    state = optimizer.state.get(p, {})
    return state.get("momentum_buffer", state.get("exp_avg"))
