"""The commands, one thin module each: train (what train.py runs), evaluate, predict, export, sweep, search,
report, shards. Each parses its arguments and calls the package that does the work; this module is the door they share:
the argument parser whose mistakes are one line, and `run_command`, which turns every failure hw3 knows into one
line `error: ...` and its exit code (the table is hw3.errors).

It may import everything below it; it is imported by nothing but `train.py` and the `python -m hw3.<command>`
aliases. This module itself stays light (the standard library and hw3.errors), so a command starts at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn

from hw3.errors import LaunchError, UserError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit; we want one line, exit 2
        raise UserError(message)


def one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker arrives wrapped in the worker's traceback: keep its last line."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in message:
        return lines[-1].split("UserError: ", 1)[-1]
    return " ".join(lines)


def run_command(body: Callable[[], int]) -> int:
    """A command's body, its known failures said in one line: `error: <message>`, and their exit code."""
    try:
        return body()
    except LaunchError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code


def program(main: Callable[[], int]) -> NoReturn:
    """`python -m hw3.<command>`: the command's exit code; Ctrl-C is one line and 130, not a traceback (as a
    library, main() lets KeyboardInterrupt through to the caller)."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("stopped by SIGINT", file=sys.stderr)
        code = 130
    sys.exit(code)


def add_run_set_arguments(p: Parser, out_help: str) -> None:
    """What hw3.sweep and hw3.search share: where the runs go, how many at a time, overrides for every run."""
    p.add_argument("--recipe", required=True, help="YAML recipe (see recipes/)")
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--parallel", type=int, default=1, help="runs at a time on this machine")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")


def at_least_one(**values: int) -> None:
    """The options named (as keywords: top_k for --top-k) must each be 1 or more."""
    low = [f"--{k.replace('_', '-')}" for k, v in values.items() if v < 1]
    if low:
        raise UserError(f"{' and '.join(low)}: at least 1")
