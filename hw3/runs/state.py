"""Where a run stands: the counters and the history a resumed run continues from, saved in every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from hw3.config import TrainConfig


@dataclass
class TrainState:
    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already trained (> 0 only for a mid-epoch checkpoint)
    step: int = 0  # optimizer steps taken (skipped ones included)
    skipped_steps: int = 0  # non-finite steps skipped in finished epochs
    unreadable_samples: int = 0  # samples of a streamed set skipped as unreadable, finished epochs
    wall_time_s: float = 0.0  # time spent in earlier sessions
    history: list = field(default_factory=list)  # one metrics row per finished epoch
    stopped: Optional[str] = None  # why training ended before train.epochs: early_stop, pruned, non_finite
    world_size: int = 1
    wandb_id: Optional[str] = None
    launches: list = field(default_factory=list)  # who ran each launch of this run, on what (summary.json)
    epochs: Optional[int] = None  # train.epochs the lr schedule is laid out over (train.extend_epochs changes it)
    image_passes: int = 0  # forward/backward passes of one image each, over all processes (what training cost)
    train_time_s: float = 0.0  # seconds spent in training steps, finished epochs (validation and saves aside)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def at_max_steps(cfg: TrainConfig, step: int) -> bool:
    """Has this launch reached train.max_steps? The one place that reads it: a limit of one launch, after the run's
    `step`-th optimizer step (counted over every launch), never the run's length (the schedule ignores it)."""
    return cfg.max_steps is not None and step >= cfg.max_steps
