"""Which way is better. One Monitor decides it for early stopping, the best weights and the plateau schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Monitor:
    name: str  # "val_acc" (higher is better) or "val_loss" (lower is better)

    @property
    def maximize(self) -> bool:
        return self.name == "val_acc"

    def value(self, metrics: dict) -> float:
        """The monitored number of evaluation results {"acc": ..., "loss": ...}."""
        return metrics["acc"] if self.maximize else metrics["loss"]

    def better(self, value: float, than: Optional[float], margin: float = 0.0) -> bool:
        """Is `value` better than `than` by more than `margin` (in the metric's units)? Anything beats None."""
        if than is None:
            return True
        return value > than + margin if self.maximize else value < than - margin

    def rank(self, metrics: dict) -> tuple[float, float]:
        """Sort key of evaluation results, higher is better: the monitored metric, ties going to the other one."""
        return (metrics["acc"], -metrics["loss"]) if self.maximize else (-metrics["loss"], metrics["acc"])
