"""Evaluate a finished (or running) run's weights on a split:

    python -m hw3.evaluate RUN_DIR [--split test|val] [--checkpoint best|last|PATH] [--device cpu]
        [--batch-size 256] [key=value ...]

Writes `eval/<split>-<checkpoint>/` into the run dir (hw3.inference.evaluate): metrics.json, per_class.csv,
confusion.csv and confusion.png. `key=value` overrides apply to the run's config.yaml (e.g. data.root=/elsewhere).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from hw3.cli import Parser, at_least_one, program, run_command


def parse_evaluate_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    import torch

    p = Parser(prog="python -m hw3.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a run directory (runs/<recipe>)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--checkpoint", default="best", help="best, last, or a model.safetensors / checkpoint folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    at_least_one(batch_size=args.batch_size)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        from hw3.inference.evaluate import evaluate_run

        args = parse_evaluate_args(argv)
        run_dir = Path(args.run_dir)
        out, result = evaluate_run(run_dir, args.split, args.checkpoint, args.device, args.batch_size, args.overrides)
        print(
            f"{args.split} ({args.checkpoint}): top-1 {result['acc']:.2%}, top-5 {result['top5_acc']:.2%}, "
            f"loss {result['loss']:.4f} on {result['count']} images -> {out}"
        )
        return 0

    return run_command(body)


if __name__ == "__main__":
    program(main)
