"""The best weights: the best validation result so far (model or EMA, ranked by the early-stopping monitor), kept
in best/ outside the rolling checkpoints as safetensors beside a `model.json` that rebuilds the network
(hw3.load_model), `meta.json` and `manifest.json`.

best/ is written whole into best.new/ (manifest last), then swapped in (hw3.storage.manifest.publish); a swap a
crash interrupted is finished at the next launch (recover_best).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from torch import nn

from hw3.dist.processes import agree
from hw3.errors import WriteFailed
from hw3.runs.layout import BEST
from hw3.runs.metrics import Monitor
from hw3.storage.files import remove, write_atomic, writing
from hw3.storage.manifest import publish, recover, write_manifest

BEST_NEW = f"{BEST}.new"


class BestWeights:
    """The best validation result so far and its weights (written by the main process)."""

    def __init__(self, run_dir: Path, card: dict, monitor: Monitor, accelerator):
        self.run_dir, self.card, self.monitor, self.accelerator = run_dir, card, monitor, accelerator
        self.epoch: Optional[int] = None
        self.source: Optional[str] = None  # "model" or "ema"
        self.metrics: Optional[dict] = None  # {"acc", "loss"} of the best validation

    def offer(self, epoch: int, results: list[tuple[str, dict, nn.Module]]) -> bool:
        """Keep this epoch's best of (source, metrics, module) if it ranks above the best so far."""
        source, metrics, module = max(results, key=lambda result: self.monitor.rank(result[1]))
        if self.metrics is not None and self.monitor.rank(metrics) <= self.monitor.rank(self.metrics):
            return False
        self.epoch, self.source, self.metrics = epoch, source, dict(acc=metrics["acc"], loss=metrics["loss"])
        error = None
        if self.accelerator.is_main_process:
            try:
                save_best(self.run_dir, module.state_dict(), self.card, self.state_dict())
            except WriteFailed as e:
                error = f"best weights: {e}; the previous best/ is kept"
        error = agree(self.accelerator, error)  # every process stops here, not at the next collective
        if error is not None:
            failed = WriteFailed(error)
            failed.quiet = not self.accelerator.is_main_process
            raise failed
        return True

    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, source=self.source, metrics=self.metrics)

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.source, self.metrics = state["epoch"], state["source"], state["metrics"]


def save_best(run_dir: Path, weights: dict[str, torch.Tensor], card: dict, meta: dict) -> None:
    """best/model.safetensors + model.json (rebuild recipe) + meta.json (epoch, metric) + manifest.json. Main
    process only. On failure best/ is untouched and best.new/ removed."""
    new = run_dir / BEST_NEW
    remove(new)
    with writing(new / "model.safetensors", cleanup=[new]):
        new.mkdir()
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in weights.items()},
            str(new / "model.safetensors"),
            metadata={"format": "pt", "epoch": str(meta["epoch"])},
        )
    with writing(new, cleanup=[new]):
        write_atomic(new / "model.json", json.dumps(card, indent=1).encode())
        write_atomic(new / "meta.json", json.dumps(meta, indent=1).encode())
        write_manifest(new)
        publish(new, run_dir / BEST)


def recover_best(run_dir: Path) -> None:
    """Finish a swap of best/ that a crash interrupted; drop leftovers. Main process, lock held."""
    recover(run_dir / BEST_NEW, run_dir / BEST)
