"""A run's weights on a split: eval/<split>-<checkpoint>/ in the run dir holds metrics.json (acc (top-1),
top5_acc, loss, count), per_class.csv, confusion.csv (rows: true class, columns: predicted) and confusion.png.
Works on the CPU for a run trained on GPUs; overrides apply to the run's config.yaml (data.root=/elsewhere)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from hw3.errors import UserError
from hw3.reports.plots import plot_confusion
from hw3.runs.checkpoints import list_checkpoints
from hw3.runs.layout import BEST, CONFIG, SUMMARY
from hw3.storage.manifest import check_weights


def find_weights(run_dir: Path, checkpoint: str) -> tuple[Path, dict]:
    """(weights file, model card) for best | last | a path, verified against the folder's manifest when it has
    one (hw3 writes one into best/ and every checkpoint)."""
    if checkpoint == "best":
        path = run_dir / BEST / "model.safetensors"
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
    cards = [path.with_name("model.json"), run_dir / BEST / "model.json"]
    card_file = next((c for c in cards if c.is_file()), None)
    if card_file is None:
        raise UserError(f"--checkpoint {checkpoint}: no model.json beside {path.name} or in {run_dir / BEST}")
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


PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def run_precision(run_dir: Path, recipe: Optional[str], device: torch.device) -> str:
    """The mixed precision the run validated and tested in (its summary says; else its recipe), as the run did
    it: fp16 only on CUDA."""
    summary = run_dir / SUMMARY
    used = json.loads(summary.read_text()).get("mixed_precision") if summary.is_file() else recipe
    if used not in PRECISIONS or (used == "fp16" and device.type != "cuda"):
        return "no"
    return used


def run_data(run_dir: Path, card: dict, overrides: Sequence[str], device: str):
    """(config, data): the run's recipe (with `overrides`) and its data, prepared as the model `card` describes was
    fed, for one process."""
    from hw3.data import Data, InputSpec, open_source
    from hw3.engine.recipe import load_recipe

    cfg = load_recipe(str(run_dir / CONFIG), list(overrides))
    src = open_source(cfg.data, cfg.smoke)
    return cfg, Data(cfg.data, src, InputSpec.of_card(card), torch.device(device), 1, 0, cfg.seed)


def evaluate_run(
    run_dir: Path, split: str, checkpoint: str, device: str, batch_size: int, overrides: Sequence[str] = ()
) -> tuple[Path, dict]:
    """Evaluate and write eval/<split>-<weights>/; returns that folder and the metrics."""
    from safetensors.torch import load_file

    from hw3.engine.evaluation import evaluate
    from hw3.models.card import model_from_card

    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir}: not an hw3 run dir (no {CONFIG})")
    path, card = find_weights(run_dir, checkpoint)
    cfg, data = run_data(run_dir, card, overrides, device)
    if getattr(data.src, split) is None:
        raise UserError(f"--split {split}: {cfg.data.name} has no {split} split")
    model = model_from_card(card, load_file(str(path))).to(device)
    batches = data.eval_batches(split, batch_size)
    precision = run_precision(run_dir, cfg.train.mixed_precision, torch.device(device))
    with torch.autocast(torch.device(device).type, dtype=PRECISIONS.get(precision), enabled=precision != "no"):
        result = evaluate(model, batches, confusion_classes=len(card["classes"]), tta=cfg.eval.tta)
    weights_name = checkpoint if checkpoint in ("best", "last") else path.parent.name
    out = run_dir / "eval" / f"{split}-{weights_name}"
    described = dict(split=split, checkpoint=str(path), tta=cfg.eval.tta, mixed_precision=precision, **result)
    write_outputs(out, described, card["classes"], weights_name)
    return out, result
