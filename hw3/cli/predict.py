"""Classify your own images with a trained model:

    python -m hw3.predict RUN_DIR|WEIGHTS [IMAGE ...] [--folder DIR] [--top-k 5] [--out predictions.csv|.json]
        [--batch-size 256] [--device cpu] [--tta none|flip|flip_shift]

Each image is prepared as the model's evaluation prepared its test split (hw3.inference.predict). A table (file,
top-k classes with probabilities) is printed, and written to --out as CSV or JSON. An image that cannot be read
is one line of the table, the others are still classified, and the exit status is 1 (0: all classified; 2: a
mistake in the command).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from hw3.cli import Parser, at_least_one, program, run_command
from hw3.errors import UserError


def parse_predict_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    import torch

    from hw3.engine.recipe import TTA

    p = Parser(prog="python -m hw3.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a run dir, its best/ folder, or a model.safetensors beside its model.json")
    p.add_argument("images", nargs="*", type=Path, help="image files")
    p.add_argument("--folder", type=Path, help="every image under this folder (recursively)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", type=Path, help="write the predictions here (.csv or .json)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tta", choices=TTA, help="default: what the run evaluated with")
    args = p.parse_args(argv)
    if not args.images and args.folder is None:
        raise UserError("give image files, or --folder DIR")
    if args.folder is not None and not args.folder.is_dir():
        raise UserError(f"--folder: {args.folder} is not a folder")
    if args.out is not None and args.out.suffix not in (".csv", ".json"):
        raise UserError(f"--out: {args.out} must end in .csv or .json")
    at_least_one(top_k=args.top_k, batch_size=args.batch_size)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        from hw3.data.sources import IMAGE_SUFFIXES
        from hw3.inference.predict import image_files, predict, table, write
        from hw3.models.card import load_model

        args = parse_predict_args(argv)
        files = image_files(args.images, args.folder)
        if not files:
            raise UserError(f"--folder: no image in {args.folder} ({', '.join(sorted(IMAGE_SUFFIXES))})")
        model = load_model(args.model, args.device)
        card = model.hw3_card
        tta = args.tta or card.get("tta", "none")
        rows = predict(model, card, files, args.batch_size, args.device, tta, args.top_k)
        if args.out is not None:
            write(rows, args.out, args.top_k)
        print(table(rows), end="")
        failed = sum("error" in row for row in rows)
        if args.out is not None:
            print(f"wrote {args.out}", file=sys.stderr)
        if failed:
            print(f"{failed} of {len(rows)} image(s) could not be read", file=sys.stderr)
        return 1 if failed else 0

    return run_command(body)


if __name__ == "__main__":
    program(main)
