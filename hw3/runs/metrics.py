"""What a run measures, defined once: every per-epoch value of metrics.jsonl (the console line shows some of them)
and every value of summary.json the reports compare (hw3.report's columns, hw3.sweep's statistics). A new metric
is one line here plus where it is computed (hw3.engine.loop.epoch_metrics, hw3.engine.summary). And which way is
better (Monitor), for early stopping, the best weights, the plateau schedule and the sweep's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


def images_per_s(value: float) -> str:
    """1,234 or 0.42: whole numbers when there are some, two significant digits for a slow smoke run."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def clock(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def percent(value: Optional[float]) -> str:
    return f"{value:.2%}" if value is not None else "-"


@dataclass(frozen=True)
class Metric:
    key: str  # its name in metrics.jsonl / summary.json
    meaning: str  # what it is, with its unit
    label: str = ""  # how reports call it, or the console line shows it ("" = not shown)
    show: Callable[[float], str] = str  # its value as people read it ("" = nothing to show)
    group: bool = False  # on the console line: starts a new `|` group

    def said(self, row: dict) -> str:
        value = row.get(self.key)
        shown = self.show(value) if value is not None and (self.label or self.group) else ""
        return f"{self.label} {shown}".strip() if shown else ""


# One row of metrics.jsonl per finished epoch, in this order; the console line shows those it can.
EPOCH = (
    Metric("epoch", "epoch number, from 0"),
    Metric("train_loss", "mean training loss of the epoch", "train loss", "{:.4f}".format, group=True),
    Metric("train_acc", "training accuracy of the epoch, a fraction in [0, 1]", "acc", "{:.2%}".format),
    Metric("val_loss", "validation loss", "val loss", "{:.4f}".format, group=True),
    Metric("val_acc", "validation accuracy, a fraction", "acc", "{:.2%}".format),
    Metric("ema_val_loss", "validation loss of the weight EMA (train.ema_decay)"),
    Metric("ema_val_acc", "validation accuracy of the weight EMA", "(ema", lambda v: f"{v:.2%})"),
    Metric("lr", "learning rate the optimizer applied at the epoch's last step", "lr", "{:.2e}".format, group=True),
    Metric("batch_size", "global batch size, images", "bs", group=True),
    Metric("epoch_time_s", "seconds of training in the epoch (validation and saves aside)", "", "{:.1f}s".format, True),
    Metric("images_per_s", "training images per second in the epoch", "", lambda v: f"{images_per_s(v)} img/s", True),
    Metric("grad_norm", "mean gradient L2 norm of the steps measured (every log.log_every steps, and the last)"),
    Metric("skipped_steps", "non-finite steps skipped in the epoch", "", lambda v: f"{v} skipped" if v else "", True),
    Metric(
        "unreadable_samples",
        "samples of a streamed set skipped as unreadable in the epoch",
        "",
        lambda v: f"{v} unreadable" if v else "",
        True,
    ),  # fmt: skip
    Metric("loss_scale", "fp16 loss scale at the epoch's end (null without fp16)"),
    Metric("passes", "forward/backward passes over the training split so far (SAM's two count as two)"),
    Metric("train_time_s", "seconds spent in training steps so far, every launch"),
)
# What the reports compare between runs (summary.json), with how they show it.
RUN = (
    Metric("best_val_acc", "best validation accuracy, model or EMA, a fraction", "best val acc", percent),
    Metric("best_val_loss", "validation loss of the best epoch", "best val loss", "{:.4f}".format),
    Metric("test_acc", "test accuracy of the best weights, a fraction", "test acc", percent),
    Metric("passes", "forward/backward passes over the training split", "passes", "{:.2f}".format),
    Metric("train_time_s", "seconds in training steps", "train time", clock),
)
RUN_METRICS = {m.key: m for m in RUN}


def console_line(row: dict, best: bool) -> str:
    """`epoch   3 | train loss 0.1234 acc 96.10% | val loss ... | lr 2.95e-03 | bs 64 | 1.2s | 1,234 img/s *`."""
    groups = [[f"epoch {row['epoch']:>3}"]]
    for metric in EPOCH[1:]:
        said = metric.said(row)
        if said:
            groups.append([said]) if metric.group else groups[-1].append(said)
    return " | ".join(" ".join(group) for group in groups) + (" *" if best else "")


MONITORS = ("val_acc", "val_loss")  # what early stopping, a plateau schedule and a search may follow


@dataclass(frozen=True)
class Monitor:
    """Which way is better: "val_acc" (higher) or "val_loss" (lower)."""

    name: str

    @property
    def maximize(self) -> bool:
        return self.name == MONITORS[0]

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
