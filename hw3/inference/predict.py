"""Classify your own images with a trained model (the command is hw3.cli.predict).

Images of any size and mode (PNG, JPEG, WebP, ..., grayscale, RGBA, 16-bit) are prepared exactly as the model's
evaluation prepared its test split, from `model.json`: photos resized to size / crop_pct and center-cropped,
small images (a split held in memory) resized whole; the channels, mean and std of training; the test-time
augmentation of the run unless --tta says otherwise. A table (file, top-k classes with probabilities) is
printed, and written to --out as CSV or JSON. An image that cannot be read is one line of the table, the others
are still classified, and the exit status is 1 (0: all classified; 2: a mistake in the command).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from hw3.data.sources import IMAGE_SUFFIXES, in_mode


def image_files(images: list[Path], folder: Optional[Path]) -> list[Path]:
    found = list(images)
    if folder is not None:
        found += sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    return found


class Prepare:
    """File -> uint8 tensor (C, H, W) at the model's input size, as its evaluation made them."""

    def __init__(self, card: dict):
        from torchvision.transforms import v2

        from hw3.data.transforms import photo_transform

        self.channels, self.size = card["in_chans"], card["image_size"]
        cropped = card.get("eval_resize", "resize") == "center_crop"
        crop = photo_transform("none", self.size, 0, card["crop_pct"], None, train=False)
        self.transform = crop if cropped else v2.PILToTensor()

    def __call__(self, path: Path) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as img:
            img.load()  # decode fully here: a damaged file fails now, naming itself
            return self.transform(in_mode(img, "L" if self.channels == 1 else "RGB"))


def predict(model, card: dict, files: list[Path], batch_size: int, device: str, tta: str, top_k: int) -> list[dict]:
    """One row per file: its top-k (class, probability), or the reason it could not be read."""
    from hw3.data.transforms import InputStage
    from hw3.engine.evaluation import logits_with_tta

    prepare = Prepare(card)
    stage = InputStage(card["image_size"], card["in_chans"], card["mean"], card["std"], torch.device(device))
    rows, batch = [], []
    bar = progress(len(files))

    def flush() -> None:
        if not batch:
            return
        x = torch.cat([stage(t[None].to(device)) for _, t in batch])
        with torch.no_grad():
            probs = logits_with_tta(model, x, tta).float().softmax(dim=1)
        top = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for (path, _), p, i in zip(batch, top.values.tolist(), top.indices.tolist(), strict=True):
            rows.append(dict(file=str(path), top=[(card["classes"][c], v) for c, v in zip(i, p, strict=True)]))
        batch.clear()

    for path in files:
        try:
            batch.append((path, prepare(path)))
        except (OSError, ValueError, SyntaxError) as e:
            flush()  # keep the table in file order
            rows.append(dict(file=str(path), error=" ".join(str(e).split()) or type(e).__name__))
        if len(batch) == batch_size:
            flush()
        if bar is not None:
            bar.update(1)
    flush()
    if bar is not None:
        bar.close()
    return rows


def progress(total: int):
    if total < 1000 or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="predicting", unit="img")


def table(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        said = row.get("error") or ", ".join(f"{name} {p:.3f}" for name, p in row["top"])
        lines.append(f"{row['file']}: {'cannot read: ' if 'error' in row else ''}{said}")
    return "\n".join(lines) + "\n"


def write(rows: list[dict], out: Path, top_k: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps(rows, indent=1))
        return
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", *(f"{what}_{k}" for k in range(1, top_k + 1) for what in ("class", "prob")), "error"])
        for row in rows:
            ranked = [v for name, p in row.get("top", []) for v in (name, f"{p:.6f}")]
            w.writerow([row["file"], *ranked, *[""] * (2 * top_k - len(ranked)), row.get("error", "")])
