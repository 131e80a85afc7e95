"""Running sums of the epoch in progress, kept on the device: adding a batch or a step never reads a value back.
They are reduced across processes and read once, when the epoch ends (or saved, in a mid-epoch checkpoint)."""

from __future__ import annotations

from typing import Optional

import torch

DEVICE_SUMS = ("loss", "correct", "grad_norm", "norm_samples", "skipped")


class EpochSums:
    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        for name in DEVICE_SUMS:  # float64: exact counts, and loss sums that do not drift over long epochs
            setattr(self, name, torch.zeros((), dtype=torch.float64, device=self.device))
        self.count = 0  # training images (on this process)
        self.unreadable = 0  # samples of a streamed set skipped as unreadable (on this process)
        self.seconds = 0.0  # training time of this epoch, earlier sessions included

    def add_batch(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        self.loss.add_(loss.nan_to_num(0.0, 0.0, 0.0), alpha=n)  # a non-finite loss adds nothing
        self.correct.add_((logits.argmax(dim=1) == y).sum())
        self.count += n

    def add_step(self, norm: Optional[torch.Tensor], bad: torch.Tensor) -> None:
        """A finished optimizer step: skipped or not (`bad`), and its gradient norm when it was measured."""
        self.skipped.add_(bad)
        if norm is not None:
            self.grad_norm.add_(torch.where(bad > 0, 0.0, norm))
            self.norm_samples.add_(1.0 - bad)

    def totals(self, accelerator) -> dict:
        """Every sum over all processes, read in one go."""
        host = torch.tensor([float(self.count), float(self.unreadable)]).to(self.loss)
        values = accelerator.reduce(torch.cat([torch.stack([getattr(self, k) for k in DEVICE_SUMS]), host]), "sum")
        return dict(zip([*DEVICE_SUMS, "count", "unreadable"], values.tolist(), strict=True))

    def state_dict(self) -> dict:
        device_values = torch.stack([getattr(self, k) for k in DEVICE_SUMS]).tolist()  # one read of the device
        return dict(
            **dict(zip(DEVICE_SUMS, device_values, strict=True)),
            count=self.count,
            unreadable=self.unreadable,
            seconds=self.seconds,
        )

    def load_state_dict(self, state: dict) -> None:
        for k in DEVICE_SUMS:
            getattr(self, k).fill_(state[k])
        self.count, self.seconds, self.unreadable = state["count"], state["seconds"], state.get("unreadable", 0)

    @staticmethod
    def merge(states: list[dict]) -> dict:
        """One process's state holding all of `states`' (a streamed run resumed on fewer or more processes)."""
        return {k: sum(s.get(k, 0) for s in states) if k != "seconds" else max(s[k] for s in states) for k in states[0]}
