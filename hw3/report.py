"""Compare runs the way the known report did:

    python -m hw3.report RUN_DIR [RUN_DIR ...] [--out report.md]
    python -m hw3.report SWEEP_DIR        (see hw3.sweep: mean ± std per combination, into the sweep dir)

A markdown table (strategy, model, pretrained, image size, epochs, best val accuracy, test accuracy, wall time,
hardware), one row per run, and learning curves (loss and accuracy per epoch, one colour per run) saved next to
the report as <name>_loss.png and <name>_accuracy.png. Runs still in progress are read from metrics.jsonl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

from hw3.cli import Parser, one_line
from hw3.config import dotted
from hw3.errors import UserError

COLUMNS = (
    "run",
    "strategy",
    "model",
    "pretrained",
    "image size",
    "epochs",
    "best val acc",
    "test acc",
    "passes",
    "train time",
    "wall time",
    "hardware",
)


def read_run(run_dir: Path) -> dict:
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not an hw3 run dir (no config.yaml)")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else None
    return dict(dir=run_dir, cfg=cfg, rows=rows, summary=summary)


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


def hardware(run: dict) -> str:
    summary = run["summary"]
    if summary:
        return f"{summary['processes']} x {summary['device']}" if summary["processes"] > 1 else summary["device"]
    command = run["dir"] / "command.txt"  # a run in progress: its latest session's header
    text = command.read_text() if command.is_file() else ""
    lines = [line for line in text.splitlines() if line.startswith("processes:")]
    return lines[-1].split("device: ", 1)[-1].split(", mixed precision")[0] if lines else "?"


def clock(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# Keys the table shows in their own columns or in strategy()'s words; any other key that differs between the
# compared runs is added to their strategy as key=value, so two rows never look alike when their recipes differ.
SHOWN = (
    "optim.name", "optim.lr", "optim.base", "optim.rho", "optim.adaptive", "sched.name", "train.label_smoothing",
    "train.mixup", "train.cutmix", "train.ema_decay", "model.name", "model.pretrained", "model.pretrained_file",
    "data.image_size", "train.epochs", "output_dir", "smoke",
)  # fmt: skip


def differing(runs: list[dict]) -> list[str]:
    """Recipe keys whose values differ between `runs` and are not already in a column."""
    flats = [dotted(run["cfg"]) for run in runs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if k not in SHOWN and len({repr(f.get(k)) for f in flats}) > 1]


def row(run: dict, extra_keys: Sequence[str] = ()) -> dict:
    cfg, rows, summary = run["cfg"], run["rows"], run["summary"]
    model, smoke = cfg["model"], cfg.get("smoke", False)
    pretrained = "yes" if (model["pretrained"] or model["pretrained_file"]) and not smoke else "no"
    best_val = summary["best_val_acc"] if summary else max((r["val_acc"] for r in rows), default=None)
    test = summary.get("test_acc") if summary else None
    planned = (summary or {}).get("epochs") or cfg["train"]["epochs"]  # train.extend_epochs may have changed it
    epochs = f"{len(rows)}/{planned}" + ("" if summary else " (running)")
    wall = summary["wall_time_s"] if summary else sum(r["epoch_time_s"] for r in rows)
    spent = summary or (rows[-1] if rows else {})  # a run in progress: what its last finished epoch had spent
    size = summary["image_size"] if summary else cfg["data"]["image_size"] or "native"
    pct = lambda v: f"{v:.2%}" if v is not None else "-"  # noqa: E731
    values = dotted(cfg)
    extra = [f"{k}={values.get(k)}" for k in extra_keys]
    return {
        "run": run["dir"].name + (" (smoke: synthetic data, random weights)" if smoke else ""),
        "strategy": ", ".join([strategy(cfg), *extra]),
        "model": model["name"],
        "pretrained": pretrained,
        "image size": size,
        "epochs": epochs,
        "best val acc": pct(best_val),
        "test acc": pct(test),
        # what it cost: forward/backward passes over the training split, seconds spent in training steps
        "passes": f"{spent['passes']:.2f}" if spent.get("passes") is not None else "-",
        "train time": clock(spent.get("train_time_s")),
        "wall time": clock(wall),
        "hardware": hardware(run),
    }


def markdown(runs: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    extra = differing(runs)
    lines += ["| " + " | ".join(str(row(run, extra)[c]) for c in COLUMNS) + " |" for run in runs]
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict], path: Path, metric: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for i, run in enumerate(runs):
        epochs = [r["epoch"] for r in run["rows"]]
        color = f"C{i % 10}"
        ax.plot(
            epochs, [r[f"train_{metric}"] for r in run["rows"]], "--", color=color, label=f"{run['dir'].name} train"
        )
        ax.plot(epochs, [r[f"val_{metric}"] for r in run["rows"]], "-", color=color, label=f"{run['dir'].name} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(run_dirs: list[Path], out: Path) -> list[Path]:
    runs = [read_run(d) for d in run_dirs]
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = [out.with_name(f"{out.stem}_loss.png"), out.with_name(f"{out.stem}_accuracy.png")]
    plot_curves(runs, plots[0], "loss", "cross-entropy loss")
    plot_curves(runs, plots[1], "acc", "top-1 accuracy")
    out.write_text(f"# Runs\n\n{markdown(runs)}\n![loss]({plots[0].name})\n\n![accuracy]({plots[1].name})\n")
    return [out, *plots]


def report_main(argv: Optional[Sequence[str]] = None) -> int:
    from hw3.search_report import is_search_dir, report_search_dir
    from hw3.sweep_report import is_sweep_dir, write_sweep_report

    p = Parser(prog="python -m hw3.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="run dirs, or one sweep dir (hw3.sweep --out)")
    p.add_argument("--out", type=Path, default=None, help="the report (default runs/report.md; a sweep: its dir)")
    try:
        args = p.parse_args(argv)
        searches = [d for d in args.run_dirs if is_search_dir(d)]
        if searches:
            if len(args.run_dirs) > 1:
                raise UserError(f"{searches[0]} is a search dir: report it alone")
            print(report_search_dir(searches[0]), end="")
            print(f"wrote {searches[0] / 'search.json'}, {searches[0] / 'search.md'}")
            return 0
        sweeps = [d for d in args.run_dirs if is_sweep_dir(d)]
        if sweeps:
            if len(args.run_dirs) > 1:
                raise UserError(f"{sweeps[0]} is a sweep dir: report it alone")
            table, written = write_sweep_report(sweeps[0], args.out)
            print(table, end="")
            print("wrote " + ", ".join(map(str, written)))
            return 0
        written = write_report(args.run_dirs, args.out or Path("runs") / "report.md")
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(markdown([read_run(d) for d in args.run_dirs]), end="")
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(report_main())
