"""A sweep dir -> sweep.json, sweep.md, sweep_val_acc.png and sweep_cost.png: per combination of grid values, the
number of finished runs and the mean, sample standard deviation, min and max over seeds of the best validation
accuracy (and loss) and the test accuracy, sorted by the recipe's monitored metric. Runs not finished yet are left
out (n says how many went in), so it can be written while a sweep runs on a cluster."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

from hw3.errors import UserError
from hw3.reports.plots import pyplot, save
from hw3.runs.layout import METRICS as METRICS_FILE
from hw3.runs.layout import SUMMARY
from hw3.runs.metrics import RUN, Monitor

PLAN = "sweep_plan.json"  # the sweep a dir holds (hw3.sweep writes it, hw3.report reads it)
METRICS = tuple(m.key for m in RUN)  # what the sweep's statistics are taken of (hw3.runs.metrics)


def statistics_of(values: list[float], name: str) -> dict:
    """{name_mean, name_std, name_min, name_max}; std is the sample standard deviation (n - 1), null below 2."""
    if not values:
        return {f"{name}_{k}": None for k in ("mean", "std", "min", "max")}
    return {
        f"{name}_mean": statistics.fmean(values),
        f"{name}_std": statistics.stdev(values) if len(values) > 1 else None,
        f"{name}_min": min(values),
        f"{name}_max": max(values),
    }


def finished_runs(out: Path, names: list[str]) -> list[tuple[str, dict, list[dict]]]:
    """(name, summary, metrics rows) of each run with a summary.json, in plan order."""
    found = []
    for name in names:
        summary_file = out / name / SUMMARY
        if summary_file.is_file():
            rows = [json.loads(line) for line in (out / name / METRICS_FILE).read_text().splitlines() if line]
            found.append((name, json.loads(summary_file.read_text()), rows))
    return found


def summarize(out: Path) -> dict:
    plan_file = out / PLAN
    if not plan_file.is_file():
        raise UserError(f"{out}: not a sweep dir (no {PLAN})")
    plan = json.loads(plan_file.read_text())
    from hw3.config import load_config

    monitor = load_config(plan["recipe"], plan["runs"][0]["overrides"]).early_stop.monitor
    groups: dict[str, dict] = {}
    for run in plan["runs"]:
        groups.setdefault(run["combination"], dict(params=run["params"], names=[]))["names"].append(run["name"])
    entries = []
    for combination, group in groups.items():
        runs = finished_runs(out, group["names"])
        entry = dict(combination=combination, params=group["params"], n=len(runs), runs=[name for name, _, _ in runs])
        for metric in METRICS:
            entry.update(statistics_of([s[metric] for _, s, _ in runs if s.get(metric) is not None], metric))
        entry["wall_time_s_mean"] = statistics.fmean([s["wall_time_s"] for _, s, _ in runs]) if runs else None
        entry["val_acc_per_epoch"] = [[row["val_acc"] for row in rows] for _, _, rows in runs]
        entries.append(entry)
    order = Monitor(monitor)  # best first: the monitored metric's mean over seeds, finished combinations before
    key, missing = f"best_{monitor}_mean", float("-inf") if order.maximize else float("inf")
    entries.sort(key=lambda e: e[key] if e[key] is not None else missing, reverse=order.maximize)
    return dict(recipe=plan["recipe"], grid=plan["grid"], seeds=plan["seeds"], monitor=monitor, combinations=entries)


def plus_minus(entry: dict, metric: str) -> str:
    mean, std = entry[f"{metric}_mean"], entry[f"{metric}_std"]
    if mean is None:
        return "-"
    return f"{mean:.2%} ± {std * 100:.2f}" if std is not None else f"{mean:.2%}"


def spent(entry: dict, metric: str, unit: str = "") -> str:
    """A cost as mean ± std (`unit` after the number), or just the mean when the seeds agree or there is one."""
    mean, std = entry[f"{metric}_mean"], entry[f"{metric}_std"]
    if mean is None:
        return "-"
    return f"{mean:.2f}{unit}" + (f" ± {std:.2f}" if std else "")


def sweep_table(sweep: dict) -> str:
    """The table: accuracy next to what it cost (passes over the training split, training time)."""
    keys = list(sweep["grid"])
    head = ["combination", *keys, "n", "best val acc", "test acc", "test acc min-max", "passes", "train time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in sweep["combinations"]:
        spread = f"{e['test_acc_min']:.2%}-{e['test_acc_max']:.2%}" if e["test_acc_min"] is not None else "-"
        cells = [e["combination"], *(e["params"][k] for k in keys), e["n"]]
        cells += [plus_minus(e, "best_val_acc"), plus_minus(e, "test_acc"), spread]
        cells += [spent(e, "passes"), spent(e, "train_time_s", " s")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def plot_cost(sweep: dict, path: Path) -> None:
    """Accuracy against cost: one point per combination (mean over seeds) with its standard deviation as error
    bars, test accuracy where there is a test split, best validation accuracy otherwise."""
    plt = pyplot()
    metric = "test_acc" if any(e["test_acc_mean"] is not None for e in sweep["combinations"]) else "best_val_acc"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    counted = [c for c in sweep["combinations"] if c[f"{metric}_mean"] is not None and c["passes_mean"] is not None]
    for i, e in enumerate(counted):  # (runs of an hw3 that did not count passes have no point)
        x, y = e["passes_mean"], 100 * e[f"{metric}_mean"]
        xerr, yerr = e["passes_std"] or 0.0, 100 * (e[f"{metric}_std"] or 0.0)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", capsize=4, color=f"C{i % 10}", label=e["combination"])
    ax.set_xlabel("forward/backward passes over the training split (mean over seeds)")
    ax.set_ylabel(f"{metric.replace('_', ' ')}, % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def plot_val_acc(sweep: dict, path: Path) -> None:
    """Validation accuracy per epoch: per combination, the mean over seeds (line) and their min-max (band)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for i, entry in enumerate(e for e in sweep["combinations"] if e["n"]):
        epochs = max(len(curve) for curve in entry["val_acc_per_epoch"])
        at = [[curve[k] for curve in entry["val_acc_per_epoch"] if k < len(curve)] for k in range(epochs)]
        color = f"C{i % 10}"
        ax.plot(
            range(epochs),
            [100 * statistics.fmean(v) for v in at],
            color=color,
            label=f"{entry['combination']} (n={entry['n']})",
        )
        low, high = [100 * min(v) for v in at], [100 * max(v) for v in at]
        ax.fill_between(range(epochs), low, high, color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy, % (mean, min-max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def write_sweep_report(out: Path, report: Optional[Path] = None) -> tuple[str, list[Path]]:
    """Write sweep.json into the sweep dir, and the markdown table with its plot to `report` (default: sweep.md
    in the sweep dir, the plot beside it); returns the table and the files written."""
    sweep = summarize(out)
    table = sweep_table(sweep)
    report = report or out / "sweep.md"
    plot = report.with_name(f"{report.stem}_val_acc.png")
    report.parent.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(sweep, indent=1))
    cost = report.with_name(f"{report.stem}_cost.png")
    images = f"![validation accuracy]({plot.name})\n\n![accuracy against cost]({cost.name})\n"
    report.write_text(f"# Sweep of {sweep['recipe']}\n\n{table}\n{images}")
    plot_val_acc(sweep, plot)
    plot_cost(sweep, cost)
    return table, [out / "sweep.json", report, plot, cost]
