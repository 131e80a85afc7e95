"""Hand a trained model to a runtime that is not hw3:

    python -m hw3.export RUN_DIR --format onnx|torchscript|hub [--out DIR] [--opset 18] [key=value ...]

Writes into RUN_DIR/export/<format>/ unless --out is given, and checks what it wrote against PyTorch on images of
the run's own test split (hw3.inference.export); the exit status is 2 for a mistake in the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from hw3.cli import Parser, program, run_command


def parse_export_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(prog="python -m hw3.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run directory (its best weights are exported)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "hub"])
    p.add_argument("--out", type=Path, help="default: RUN_DIR/export/<format>")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to the run's config (data.root=...)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        from hw3.inference.export import export

        args = parse_export_args(argv)
        out = args.out or args.run_dir / "export" / args.format
        difference, images = export(args.run_dir, args.format, out, args.opset, args.overrides)
        opset = f", opset {args.opset}" if args.format == "onnx" else ""
        print(f"{args.format}{opset}: {out} (largest logit difference to PyTorch on {images} test images: "
              f"{difference:.2e})")  # fmt: skip
        return 0

    return run_command(body)


if __name__ == "__main__":
    program(main)
