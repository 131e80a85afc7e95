"""Early stopping on a validation metric (Lightning's semantics), with state that survives a resume."""

from __future__ import annotations

from typing import Optional

from hw3.config import EarlyStopConfig


def better(monitor: str, value: float, than: Optional[float], margin: float = 0.0) -> bool:
    """Is `value` an improvement on `than` by more than `margin`? val_loss goes down, val_acc up."""
    if than is None:
        return True
    return value < than - margin if monitor == "val_loss" else value > than + margin


class EarlyStopping:
    def __init__(self, cfg: EarlyStopConfig):
        self.cfg = cfg
        self.best: Optional[float] = None
        self.bad_epochs = 0  # epochs since the last improvement by more than min_delta

    def should_stop(self, epoch: int, value: float) -> bool:
        """Record epoch `epoch`'s metric (the same on every process); True when patience has run out."""
        if better(self.cfg.monitor, value, self.best, self.cfg.min_delta):
            self.best, self.bad_epochs = value, 0
        elif epoch >= self.cfg.warmup_epochs:
            self.bad_epochs += 1
        return self.cfg.patience is not None and self.bad_epochs >= self.cfg.patience

    def state_dict(self) -> dict:
        return dict(best=self.best, bad_epochs=self.bad_epochs)

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state.get("best"), state.get("bad_epochs", 0)
