"""`python train.py --recipe PATH [key=value ...]`: parse, load the recipe, run; user mistakes exit 2.

Every failure hw3 knows is one line `error: ...` and an exit code (hw3.errors has the table); SIGINT and SIGTERM
end a launch with one line and exit 128 + the signal number at any moment (hw3.signals, hw3.session). Under a
multi-process launch the main process says it, once; the others exit with the same code silently (an error only
one of them hit is said by that one, prefixed with its process number).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from hw3.errors import LaunchError, UserError
from hw3.signals import SIGNALS, Stopped, name


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
    SIGNALS.install()
    rank = int(os.environ.get("RANK", "0"))
    try:
        args = parse_train_args(argv)
        from hw3.config import load_config

        try:
            cfg = load_config(args.recipe, args.overrides)
        except UserError as e:
            e.quiet = rank != 0  # every process read the same recipe: the main one says what is wrong
            raise
        if args.print_config:
            from hw3.config.resolved import annotated_yaml

            print(annotated_yaml(cfg, args.recipe), end="")
            return 0
        from hw3.session import train_recipe

        command = ["train.py", *(sys.argv[1:] if argv is None else argv)]  # as typed, for the run's records
        return train_recipe(cfg, args.recipe, command)
    except LaunchError as e:
        if not e.quiet or not wait_for_the_main_process():
            who = f"process {rank}: " if rank else ""
            print(f"error: {who}{one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except Stopped as e:
        if rank == 0:
            print(f"stopped by {name(e.args[0])} during start-up, before the run was set up", file=sys.stderr)
        return 128 + e.args[0]
    finally:
        SIGNALS.restore()


def wait_for_the_main_process(seconds: float = 10.0) -> bool:
    """A process that leaves an error to the main one must not exit first: torchrun ends every other process the
    moment one exits, and would take the main one down before it said anything. So wait for the launcher to end
    this one (True); if nobody has after `seconds` (another launcher, or the main process did not fail), False:
    say it here."""
    try:
        time.sleep(seconds)
    except Stopped:
        return True
    return False


def one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker arrives wrapped in the worker's traceback: keep its last line."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in message:
        return lines[-1].split("UserError: ", 1)[-1]
    return " ".join(lines)


if __name__ == "__main__":  # `python -m hw3.cli` is train.py wherever hw3 is installed (hw3.sweep uses it)
    sys.exit(main())
