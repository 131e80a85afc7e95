"""Where things are in a run directory, and reading one back (hw3.report, hw3.export's model card).

runs/<recipe stem>/            (runs/smoke/<stem>/ in smoke mode; output_dir= elsewhere)
  config.yaml                  the resolved recipe the run started with; never rewritten
  command.txt                  one entry per launch: argv, versions, processes... and how the launch ended
  metrics.jsonl                one row per finished epoch (hw3.runs.metrics)
  summary.json                 written when the run ends
  best/                        the best weights (hw3.runs.best)
  checkpoints/epochNNNN-batchNNNNNN/   full training states (hw3.runs.checkpoints)
  .lock                        the launch holding the run dir (hw3.runs.lock)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CONFIG = "config.yaml"
COMMAND = "command.txt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
BEST = "best"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
ENDED = "ended: "  # command.txt: how a launch ended (the last line of its entry)


def default_run_dir(recipe: Optional[str], smoke: bool) -> Path:
    """runs/<the recipe file's stem>, or runs/smoke/<stem> for a smoke run (the run dir when output_dir is null)."""
    stem = Path(recipe).stem if recipe else "default"
    return Path("runs") / "smoke" / stem if smoke else Path("runs") / stem


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / COMMAND).is_file()


@dataclass
class RunRecord:
    """A run dir as its files say it: the recipe (a plain dict), the metrics rows, the summary when it ended."""

    dir: Path
    cfg: dict
    rows: list[dict]
    summary: Optional[dict]

    def last_ending(self) -> Optional[str]:
        """How the newest launch ended (command.txt's last `ended:` line of it), or None: still running, or
        killed before it could say."""
        command = self.dir / COMMAND
        entries = command.read_text(errors="replace").split("\n# ") if command.is_file() else []
        endings = [line[len(ENDED) :] for line in entries[-1].splitlines() if line.startswith(ENDED)] if entries else []
        return endings[-1] if endings else None


def read_run(run_dir: Path) -> RunRecord:
    import yaml

    from hw3.errors import UserError

    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir}: not an hw3 run dir (no {CONFIG})")
    cfg = yaml.safe_load((run_dir / CONFIG).read_text())
    metrics = run_dir / METRICS
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    summary = json.loads((run_dir / SUMMARY).read_text()) if (run_dir / SUMMARY).is_file() else None
    return RunRecord(run_dir, cfg, rows, summary)
