"""Early stopping on a validation metric (Lightning's semantics), with state that survives a resume."""

from __future__ import annotations

from typing import Optional

from hw3.config import EarlyStopConfig
from hw3.runs.metrics import Monitor


class EarlyStopping:
    def __init__(self, cfg: EarlyStopConfig):
        self.monitor = Monitor(cfg.monitor)
        self.patience, self.min_delta, self.warmup_epochs = cfg.patience, cfg.min_delta, cfg.warmup_epochs
        self.best: Optional[float] = None
        self.bad_epochs = 0  # epochs since the last improvement by more than min_delta

    def should_stop(self, epoch: int, metrics: dict) -> bool:
        """Record epoch `epoch`'s results (the same on every process); True when patience has run out."""
        value = self.monitor.value(metrics)
        if self.monitor.better(value, self.best, self.min_delta):
            self.best, self.bad_epochs = value, 0
        elif epoch >= self.warmup_epochs:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return dict(best=self.best, bad_epochs=self.bad_epochs)

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
