"""Plots, drawn off-screen: matplotlib set up once (its Agg backend: no display needed), and the plots more than one
report draws."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: list, path: Path, metric: str, ylabel: str) -> None:
    """Train (dashed) and validation (solid) `metric` per epoch, one colour per run (hw3.runs.layout.RunRecord)."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for i, run in enumerate(runs):
        epochs = [r["epoch"] for r in run.rows]
        color = f"C{i % 10}"
        ax.plot(epochs, [r[f"train_{metric}"] for r in run.rows], "--", color=color, label=f"{run.dir.name} train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in run.rows], "-", color=color, label=f"{run.dir.name} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    """Each true class's share predicted as each class (rows sum to 1)."""
    plt = pyplot()
    recall = confusion.float() / confusion.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    image = ax.imshow(recall.numpy(), cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    if len(classes) <= 40:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save(fig, path)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
