"""Classify your own images with a trained model:

    python -m hw3.predict RUN_DIR|WEIGHTS [IMAGE ...] [--folder DIR] [--top-k 5] [--out predictions.csv|.json]
        [--batch-size 256] [--device cpu] [--tta none|flip|flip_shift]

Images of any size and mode (PNG, JPEG, WebP, ..., grayscale, RGBA, 16-bit) are prepared exactly as the model's
evaluation prepared its test split, from `model.json`: photos resized to size / crop_pct and center-cropped,
small images (a split held in memory) resized whole; the channels, mean and std of training; the test-time
augmentation of the run unless --tta says otherwise. A table (file, top-k classes with probabilities) is
printed, and written to --out as CSV or JSON. An image that cannot be read is one line of the table, the others
are still classified, and the exit status is 1 (0: all classified; 2: a mistake in the command).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from hw3.cli import Parser, one_line
from hw3.config.validation import CHOICES
from hw3.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def parse_predict_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(prog="python -m hw3.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a run dir, its best/ folder, or a model.safetensors beside its model.json")
    p.add_argument("images", nargs="*", type=Path, help="image files")
    p.add_argument("--folder", type=Path, help="every image under this folder (recursively)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", type=Path, help="write the predictions here (.csv or .json)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tta", choices=CHOICES["eval.tta"], help="default: what the run evaluated with")
    args = p.parse_args(argv)
    if not args.images and args.folder is None:
        raise UserError("give image files, or --folder DIR")
    if args.folder is not None and not args.folder.is_dir():
        raise UserError(f"--folder: {args.folder} is not a folder")
    if args.out is not None and args.out.suffix not in (".csv", ".json"):
        raise UserError(f"--out: {args.out} must end in .csv or .json")
    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top-k and --batch-size: at least 1")
    return args


def image_files(args: argparse.Namespace) -> list[Path]:
    found = list(args.images)
    if args.folder is not None:
        found += sorted(p for p in args.folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return found


def to_mode(img, channels: int):
    """The PIL image in the model's colour mode; 16-bit and 32-bit grayscale scaled to 8 bits first."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(array.max()), 1.0)
        img = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    return img.convert("L" if channels == 1 else "RGB")


class Prepare:
    """File -> uint8 tensor (C, H, W) at the model's input size, as its evaluation made them."""

    def __init__(self, card: dict):
        from torchvision.transforms import v2

        from hw3.data.transforms import photo_transform

        self.channels, self.size = card["in_chans"], card["image_size"]
        cropped = card.get("eval_resize", "resize") == "center_crop"
        crop = photo_transform("none", self.size, 0, card.get("crop_pct", 0.875), None, train=False)
        self.transform = crop if cropped else v2.PILToTensor()

    def __call__(self, path: Path) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as img:
            img.load()  # decode fully here: a damaged file fails now, naming itself
            return self.transform(to_mode(img, self.channels))


def predict(model, card: dict, files: list[Path], batch_size: int, device: str, tta: str, top_k: int) -> list[dict]:
    """One row per file: its top-k (class, probability), or the reason it could not be read."""
    from hw3.data.transforms import InputStage
    from hw3.evaluation import logits_with_tta

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


def predict_main(argv: Optional[Sequence[str]] = None) -> int:
    from hw3.models import load_model

    try:
        args = parse_predict_args(argv)
        files = image_files(args)
        if not files:
            raise UserError(f"--folder: no image in {args.folder} ({', '.join(sorted(IMAGE_SUFFIXES))})")
        model = load_model(args.model, args.device)
        card = model.hw3_card
        rows = predict(
            model, card, files, args.batch_size, args.device, args.tta or card.get("tta", "none"), args.top_k
        )
        if args.out is not None:
            write(rows, args.out, args.top_k)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(table(rows), end="")
    failed = sum("error" in row for row in rows)
    if args.out is not None:
        print(f"wrote {args.out}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(rows)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(predict_main())
