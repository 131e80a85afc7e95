"""Runs compared the way the known report did: a markdown table (strategy, model, pretrained, image size, epochs
and how the run stands, best val accuracy, test accuracy, passes, train time, wall time, hardware), one row per
run, and learning curves (loss and accuracy per epoch, one colour per run) saved beside the report as
<name>_loss.png and <name>_accuracy.png. A run in progress, or stopped, is read from metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from hw3.config import dotted
from hw3.reports.plots import plot_curves
from hw3.runs.layout import BEST, COMMAND, RunRecord, read_run
from hw3.runs.lock import lock_is_free
from hw3.runs.metrics import RUN_METRICS, clock

COMPARED = ("best_val_acc", "test_acc", "passes", "train_time_s")  # summary.json's metrics in the table
COLUMNS = (
    "run",
    "strategy",
    "model",
    "pretrained",
    "image size",
    "epochs",
    *(RUN_METRICS[k].label for k in COMPARED),
    "wall time",
    "hardware",
)
# Keys the table shows in their own columns or in strategy()'s words; any other key that differs between the
# compared runs is added to their strategy as key=value, so two rows never look alike when their recipes differ.
SHOWN = (
    "optim.name", "optim.lr", "optim.base", "optim.rho", "optim.adaptive", "sched.name", "train.label_smoothing",
    "train.mixup", "train.cutmix", "train.ema_decay", "model.name", "model.pretrained", "model.pretrained_file",
    "data.image_size", "train.epochs", "output_dir", "smoke",
)  # fmt: skip


def strategy(cfg: dict) -> str:
    optim, sched, train = cfg["optim"], cfg["sched"], cfg["train"]
    name = (
        f"SAM{' (adaptive)' if optim['adaptive'] else ''} rho {optim['rho']:g} + {optim['base']}"
        if optim["name"] == "sam"
        else optim["name"]
    )
    parts = [f"{name}, lr {optim['lr']:g}", sched["name"]]
    parts += [f"label smoothing {train['label_smoothing']:g}"] if train["label_smoothing"] else []
    parts += ["mixup/cutmix"] if train["mixup"] or train["cutmix"] else []
    parts += [f"EMA {train['ema_decay']:g}"] if train["ema_decay"] else []
    return ", ".join(parts)


def hardware(run: RunRecord) -> str:
    summary = run.summary
    if summary:
        return f"{summary['processes']} x {summary['device']}" if summary["processes"] > 1 else summary["device"]
    command = run.dir / COMMAND  # a run in progress: its latest session's header
    text = command.read_text() if command.is_file() else ""
    lines = [line for line in text.splitlines() if line.startswith("processes:")]
    return lines[-1].split("device: ", 1)[-1].split(", mixed precision")[0] if lines else "?"


def standing(run: RunRecord) -> str:
    """How a run without a summary stands: running (a launch holds its lock), or stopped and how."""
    if not lock_is_free(run.dir):
        return "running"
    ending = run.last_ending()
    if ending is None:
        return "stopped with no word on how (killed?), resumable"
    what = ending.split(";")[0].split(" during ")[0]
    if what.startswith("stopped by "):  # a signal: "stopped (SIGTERM), resumable"
        return f"stopped ({what[len('stopped by ') :]}), resumable"
    return f"{what}, resumable" if what.startswith("stopped") else f"stopped ({what}), resumable"


def image_size(run: RunRecord) -> str:
    """The input size the run trained at, in px: its summary's, else its best weights' model card's."""
    if run.summary:
        return str(run.summary["image_size"])
    card = run.dir / BEST / "model.json"
    if card.is_file():
        return str(json.loads(card.read_text())["image_size"])
    return str(run.cfg["data"]["image_size"] or "?")


def differing(runs: list[RunRecord]) -> list[str]:
    """Recipe keys whose values differ between `runs` and are not already in a column."""
    flats = [dotted(run.cfg) for run in runs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if k not in SHOWN and len({repr(f.get(k)) for f in flats}) > 1]


def row(run: RunRecord, extra_keys: Sequence[str] = ()) -> dict:
    cfg, rows, summary = run.cfg, run.rows, run.summary
    model, smoke = cfg["model"], cfg.get("smoke", False)
    pretrained = "yes" if (model["pretrained"] or model["pretrained_file"]) and not smoke else "no"
    planned = (summary or {}).get("epochs") or cfg["train"]["epochs"]  # train.extend_epochs may have changed it
    epochs = f"{len(rows)}/{planned}" + ("" if summary else f" ({standing(run)})")
    wall = summary["wall_time_s"] if summary else sum(r["epoch_time_s"] for r in rows)
    values = summary or (rows[-1] if rows else {})  # a run in progress: what its last finished epoch had
    if not summary:
        values = {**values, "best_val_acc": max((r["val_acc"] for r in rows), default=None), "test_acc": None}
    extra = [f"{k}={dotted(cfg).get(k)}" for k in extra_keys]
    shown = {
        RUN_METRICS[k].label: RUN_METRICS[k].show(values[k]) if values.get(k) is not None else "-" for k in COMPARED
    }
    return {
        "run": run.dir.name + (" (smoke: synthetic data, random weights)" if smoke else ""),
        "strategy": ", ".join([strategy(cfg), *extra]),
        "model": model["name"],
        "pretrained": pretrained,
        "image size": image_size(run),
        "epochs": epochs,
        **shown,
        "wall time": clock(wall),
        "hardware": hardware(run),
    }


def markdown(runs: list[RunRecord]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    extra = differing(runs)
    lines += ["| " + " | ".join(str(row(run, extra)[c]) for c in COLUMNS) + " |" for run in runs]
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[Path], out: Path) -> tuple[str, list[Path]]:
    """The table (returned) into `out` with the curves beside it; returns (table, files written)."""
    runs = [read_run(d) for d in run_dirs]
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = [out.with_name(f"{out.stem}_loss.png"), out.with_name(f"{out.stem}_accuracy.png")]
    plot_curves(runs, plots[0], "loss", "cross-entropy loss")
    plot_curves(runs, plots[1], "acc", "top-1 accuracy")
    table = markdown(runs)
    out.write_text(f"# Runs\n\n{table}\n![loss]({plots[0].name})\n\n![accuracy]({plots[1].name})\n")
    return table, [out, *plots]
