"""`python train.py --recipe PATH [key=value ...]`: parse, load the recipe, run; user mistakes exit 2.

SIGINT and SIGTERM end a launch with one line and exit 128 + the signal number at any moment: during training the
loop saves a checkpoint at the next step boundary (hw3.session); before and after it (imports, data loading,
the final test) the launch simply stops, and the same command continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

from hw3.errors import UserError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit; we want one line, exit 2
        raise UserError(message)


class Stopped(BaseException):
    """SIGINT/SIGTERM outside the training loop (a BaseException, so no `except Exception` swallows it)."""


def stop(signum, frame):
    raise Stopped(signum)


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
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:  # a job started with SIGINT ignored keeps it ignored
            signal.signal(s, stop)
    try:
        args = parse_train_args(argv)
        from hw3.config import load_config, to_yaml

        cfg = load_config(args.recipe, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        from hw3.session import train_recipe

        command = ["train.py", *(sys.argv[1:] if argv is None else argv)]  # as typed, for the run's records
        return train_recipe(cfg, args.recipe, command)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except Stopped as e:
        if int(os.environ.get("RANK", "0")) == 0:
            name = signal.Signals(e.args[0]).name
            print(f"stopped by {name}; rerun the same command to continue from the last checkpoint", file=sys.stderr)
        return 128 + e.args[0]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker arrives wrapped in the worker's traceback: keep its last line."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in message:
        return lines[-1].split("UserError: ", 1)[-1]
    return " ".join(lines)


if __name__ == "__main__":  # `python -m hw3.cli` is train.py wherever hw3 is installed (hw3.sweep uses it)
    sys.exit(main())
