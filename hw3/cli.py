"""`python train.py --recipe PATH [key=value ...]`: parse, load the recipe, run; user mistakes exit 2."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from hw3.errors import UserError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit; we want one line, exit 2
        raise UserError(message)


def parse_train_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(
        prog="train.py",
        description="Train an image classifier from a YAML recipe.",
        epilog="Overrides use dotted keys: optim.lr=0.05 train.epochs=3 'log.trackers=[tensorboard]'",
    )
    p.add_argument("--recipe", required=True, help="YAML recipe (see recipes/)")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a recipe value")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parse_train_args(argv)
        from hw3.config import load_config, to_yaml

        cfg = load_config(args.recipe, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        from hw3.session import train_recipe

        return train_recipe(cfg, args.recipe)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2


def one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker arrives wrapped in the worker's traceback: keep its last line."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in message:
        return lines[-1].split("UserError: ", 1)[-1]
    return " ".join(lines)
