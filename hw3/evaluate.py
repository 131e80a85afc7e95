"""Evaluate a finished (or running) run's weights on a split:

    python -m hw3.evaluate RUN_DIR [--split test|val] [--checkpoint best|last|PATH] [--device cpu] [key=value ...]

Writes `eval/<split>-<checkpoint>/` into the run dir: metrics.json (acc (top-1), top5_acc, loss, count), per_class.csv,
confusion.csv (rows: true class, columns: predicted) and confusion.png. Works on the CPU for a run trained on
GPUs; `key=value` overrides apply to the run's config.yaml (e.g. data.root=/elsewhere).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from hw3.checkpoint import list_checkpoints
from hw3.cli import Parser, one_line
from hw3.config import load_config
from hw3.errors import UserError
from hw3.models import model_from_card
from hw3.storage import check_weights


def parse_evaluate_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(prog="python -m hw3.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory (runs/<recipe>)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--checkpoint", default="best", help="best, last, or a model.safetensors / checkpoint folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_args(argv)


def find_weights(run_dir: Path, checkpoint: str) -> tuple[Path, dict]:
    """(weights file, model card) for best | last | a path, verified against the folder's manifest when it has
    one (hw3 writes one into best/ and every checkpoint)."""
    if checkpoint == "best":
        path = run_dir / "best" / "model.safetensors"
    elif checkpoint == "last":
        found = list_checkpoints(run_dir)
        if not found:
            raise UserError(f"--checkpoint last: {run_dir} has no checkpoint")
        path = found[-1] / "model.safetensors"
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise UserError(
                f"--checkpoint {checkpoint}: no such file or folder (give best, last, a checkpoint folder "
                f"or a model.safetensors)"
            )
        path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"--checkpoint {checkpoint}: {path} does not exist")
    cards = [path.with_name("model.json"), run_dir / "best" / "model.json"]
    card_file = next((c for c in cards if c.is_file()), None)
    if card_file is None:
        raise UserError(f"--checkpoint {checkpoint}: no model.json beside {path.name} or in {run_dir / 'best'}")
    check_weights(path, card_file)
    return path, json.loads(card_file.read_text())


def write_outputs(out: Path, result: dict, classes: list[str], weights_name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    confusion = result.pop("confusion")
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    with open(out / "per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "images", "correct", "accuracy"])
        for i, name in enumerate(classes):
            total = int(confusion[i].sum())
            w.writerow([name, total, int(confusion[i, i]), f"{confusion[i, i] / total:.4f}" if total else ""])
    with open(out / "confusion.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        w.writerows([name, *map(int, row)] for name, row in zip(classes, confusion, strict=True))
    plot_confusion(
        confusion,
        classes,
        out / "confusion.png",
        f"{result['split']} split, {weights_name} weights: top-1 {result['acc']:.2%}",
    )


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_run(
    run_dir: Path, split: str, checkpoint: str, device: str, batch_size: int, overrides=()
) -> tuple[Path, dict]:
    """Evaluate and write eval/<split>-<weights>/; returns that folder and the metrics."""
    from safetensors.torch import load_file

    from hw3.data import Data, InputSpec
    from hw3.data.sources import load_source, smoke_source
    from hw3.evaluation import evaluate

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not an hw3 run dir (no config.yaml)")
    cfg = load_config(str(run_dir / "config.yaml"), list(overrides))
    path, card = find_weights(run_dir, checkpoint)
    model = model_from_card(card, load_file(str(path))).to(device)
    src = smoke_source(cfg.data) if cfg.smoke else load_source(cfg.data)
    if getattr(src, split) is None:
        raise UserError(f"--split {split}: {cfg.data.name} has no {split} split")
    spec = InputSpec(card["image_size"], card["in_chans"], card["mean"], card["std"], card.get("crop_pct", 0.875))
    data = Data(cfg.data, src, spec, torch.device(device), 1, 0, cfg.seed)
    batches = data.eval_batches(split, batch_size)
    result = evaluate(model, batches, confusion_classes=len(card["classes"]), tta=cfg.eval.tta)
    weights_name = checkpoint if checkpoint in ("best", "last") else path.parent.name
    out = run_dir / "eval" / f"{split}-{weights_name}"
    write_outputs(
        out, dict(split=split, checkpoint=str(path), tta=cfg.eval.tta, **result), card["classes"], weights_name
    )
    return out, result


def evaluate_main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parse_evaluate_args(argv)
        out, result = evaluate_run(
            Path(args.run_dir), args.split, args.checkpoint, args.device, args.batch_size, args.overrides
        )
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(
        f"{args.split} ({args.checkpoint}): top-1 {result['acc']:.2%}, top-5 {result['top5_acc']:.2%}, "
        f"loss {result['loss']:.4f} on {result['count']} images -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(evaluate_main())
